"""Tests of effx_lab.nm.bench: ``python -m effx_lab.bench nm`` (or ``ch04``).

The quick run (small sizes, what CI runs) must return every section with its keys and
ratios that follow from its own times and byte counts; the decode paths must agree with
the torch face; every public function refuses bad arguments with a named error. Times
are not asserted (a busy 2-core machine), only their shape.
"""

from __future__ import annotations

import pytest
import torch

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.bench import __main__ as cli
from effx_lab.nm import bench as B


@pytest.fixture(scope="module")
def quick():
    return B.run(quick=True)


def test_registered_under_both_names(capsys):
    assert cli.REGISTRY["ch04"] == cli.REGISTRY["nm"] == "effx_lab.nm.bench"
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "ch04" in out and "nm" in out and "effx_lab.nm.bench" in out


def test_quick_run_returns_every_section(quick):
    res = quick
    assert res["chapter"] == "ch04" and res["quick"] is True
    assert set(res) >= {
        "device", "threads", "load_start", "load_end", "goals", "sparse_ffn_decode",
        "nm_matmul_vs_dense", "permutation_search", "decode_speedup",
    }  # fmt: skip
    g = res["goals"]["sparse_ffn_decode_n8"]
    assert g["goal"] == ">= 4" and g["ideal"] == 8.0 and g["value"] > 0
    assert g["met"] is (g["value"] >= 4.0)
    assert "quick mode" in res["goals"]["note"]


def test_quick_sparse_ffn_section(quick):
    ffn = quick["sparse_ffn_decode"]
    cfg = B.RUN_CONFIG[True]["ffn"]
    names = ["dense", *(f"N={b}" for b in cfg["blocks"])]
    assert list(ffn["times_s"]) == names and list(ffn["bytes_per_token"]) == names
    d, d_ff = cfg["d_model"], cfg["d_ff"]
    assert ffn["bytes_per_token"]["dense"] == 4 * (2 * d * d_ff + d_ff + d)
    for b in cfg["blocks"]:
        k, r = d_ff // b, d // b
        want = 4 * (r * (d + d_ff) + 2 * k * d + k + d)
        assert ffn["bytes_per_token"][f"N={b}"] == want
        t = ffn["times_s"]
        assert ffn["speedup_vs_dense"][f"N={b}"] == pytest.approx(
            t["dense"] / t[f"N={b}"]
        )
        assert ffn["max_abs_diff"][f"N={b}"] < 1e-4  # float32, the face's path


def test_quick_nm_matmul_section(quick):
    nm = quick["nm_matmul_vs_dense"]
    size = B.RUN_CONFIG[True]["nm"]["size"]
    assert nm["bytes"]["dense"] == 4 * size * size
    # float32 values of half the entries + 2 bits per kept entry
    assert nm["bytes"]["compressed"] == 4 * size * size // 2 + size * size // 2 // 4
    assert [r["tokens"] for r in nm["rows"]] == list(B.RUN_CONFIG[True]["nm"]["tokens"])
    assert nm["rows"][0]["phase"] == "decode"
    for row in nm["rows"]:
        assert row["max_abs_diff"] < 1e-4 and row["times_s"]["nm_matmul_ours"] > 0
    assert "no speed-up from 2:4" in nm["note"]


def test_quick_permutation_section(quick):
    perm = quick["permutation_search"]
    assert 0.5 < perm["identity_retained"] < 1.0
    for row in perm["rows"]:
        assert row["retained"] >= perm["identity_retained"] - 1e-12
        assert row["time_s"] > 0 and row["steps"] >= 0


def test_quick_decode_section(quick):
    dec = quick["decode_speedup"]
    assert list(dec["times_s"]) == ["dense", "sparse_ffn", "sparse_ffn_qkv"]
    b = dec["bytes_per_token"]
    assert b["dense"] > b["sparse_ffn"] > b["sparse_ffn_qkv"]
    assert dec["config"]["batch"] == 1


def test_cli_quick_writes_json(tmp_path, capsys):
    assert cli.main(["nm", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sparse FFN decode" in out and "saved" in out
    assert list(tmp_path.glob("nm-*.json"))


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="blocks must divide d_ff = 64"):
        B.sparse_ffn_decode(16, 64, blocks=(3,))
    with pytest.raises(TypeError, match="blocks must be a non-empty sequence"):
        B.sparse_ffn_decode(16, 64, blocks=4)
    with pytest.raises(ValueError, match="size must be a multiple of 4"):
        B.nm_matmul_vs_dense(30)
    with pytest.raises(ValueError, match="min_run_time must be > 0"):
        B.nm_matmul_vs_dense(16, min_run_time=0)
    with pytest.raises(TypeError, match=r"settings\[0\] must be a pair"):
        B.permutation_search(8, 16, settings=(2,))
    with pytest.raises(TypeError, match="threads must be None or an int"):
        B.decode_speedup(32, 64, threads=1.5)
    with pytest.raises(TypeError, match="quick must be a bool"):
        B.run(quick="yes")
    assert torch.get_num_threads() >= 1
