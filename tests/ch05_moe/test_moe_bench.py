"""Tests of effx_lab.moe.bench: ``python -m effx_lab.bench moe`` (or ``ch05``).

The quick run (small sizes, what CI runs) must return every section with its keys,
ratios that follow from its own times, strategies that agree to float32 rounding and
message counts that follow the formulas; every public function refuses bad arguments
with a named error. Times are not asserted (a busy 2-core machine), only their shape.
"""

from __future__ import annotations

import math

import pytest
import torch

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.bench import __main__ as cli
from effx_lab.moe import bench as B


@pytest.fixture(scope="module")
def quick():
    return B.run(quick=True)


def test_registered_under_both_names():
    assert cli.REGISTRY["ch05"] == cli.REGISTRY["moe"] == "effx_lab.moe.bench"


def test_quick_run_returns_every_section(quick):
    res = quick
    assert res["chapter"] == "ch05" and res["quick"] is True
    assert set(res) >= {"device", "threads", "load_start", "load_end", "goals",
                        "strategies", "all_to_all"}  # fmt: skip
    g = res["goals"]
    assert g["grouped_vs_einsum"]["goal"] == ">= 5"
    assert g["grouped_vs_dense"]["goal"] == "<= 1.5"
    e_max = max(B.RUN_CONFIG[True]["moe"]["experts"])
    row = next(r for r in res["strategies"]["rows"]
               if r["n_experts"] == e_max and r["k"] == 1)  # fmt: skip
    assert g["grouped_vs_einsum"]["value"] == row["speedup_vs_einsum"]["grouped"]
    assert g["grouped_vs_dense"]["met"] is (row["vs_dense"]["grouped"] <= 1.5)
    assert "quick mode" in g["note"]


def test_quick_strategies_section(quick):
    s = quick["strategies"]
    cfg = B.RUN_CONFIG[True]["moe"]
    rows = s["rows"]
    assert [(r["n_experts"], r["k"]) for r in rows] == [
        (e, k) for e in cfg["experts"] for k, _ in cfg["settings"]
    ]
    for r in rows:
        t = r["times_s"]
        assert list(t)[:3] == ["dense", "einsum", "grouped"]
        assert r["speedup_vs_einsum"]["grouped"] == pytest.approx(
            t["einsum"] / t["grouped"])
        assert r["vs_dense"]["grouped"] == pytest.approx(t["grouped"] / t["dense"])
        # capacity = ceil(k T / E * C), as the chapter defines it
        n = cfg["n_tokens"]
        want = math.ceil(r["k"] * n / r["n_experts"] * r["capacity_factor"])
        assert r["capacity"] == want
        assert 0 <= r["dropped"] < 1 and 0 <= r["padding"] < 1
        for name, diff in r["max_abs_diff"].items():
            assert diff < 1e-4, name  # float32 rounding of the same sums
    assert len(s["loop"]) == len(cfg["settings"])
    for row in s["loop"]:
        assert row["n_experts"] == min(cfg["experts"])
        assert row["scaled_s"] == pytest.approx(row["per_token_s"] * cfg["n_tokens"])


def test_quick_all_to_all_section(quick):
    a = quick["all_to_all"]
    assert a["timing"] is None  # quick: no processes
    for c in a["counts"]:
        g, L = c["world_size"], c["ranks_per_node"]
        assert c["flat"]["messages"] == g - 1
        assert c["hierarchical"]["messages"] == L - 1 + g // L - 1
    big = [c for c in a["counts"] if c["world_size"] == 4096]
    assert {c["ranks_per_node"] for c in big} == {2, 8}


def test_dense_anchor_has_the_active_parameters():
    gen = torch.Generator().manual_seed(0)
    ffn = B._dense_ffn(8, 2 * 16, gen)
    assert ffn(torch.randn(3, 8)).shape == (3, 8)


def test_all_to_all_section_passes_the_timing_arguments(monkeypatch):
    from effx_lab.moe import distributed as D

    seen = {}
    monkeypatch.setattr(D, "time_all_to_all", lambda **kw: seen.update(kw) or "ran")
    args = {"world_size": 4, "ranks_per_node": 2, "rows_per_pair": 2, "d": 4,
            "repeats": 2}  # fmt: skip
    a = B.all_to_all((4, 8), (2,), 16, time=args)
    assert a["timing"] == "ran" and seen == args  # the real run: test_moe_distributed
    assert [c["world_size"] for c in a["counts"]] == [4, 8]


def test_cli_quick_writes_json(tmp_path, capsys):
    assert cli.main(["moe", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "grouped (ours)" in out and "all-to-all at 4096 ranks" in out
    assert list(tmp_path.glob("moe-*.json"))


def test_bad_arguments_named():
    with pytest.raises(TypeError, match="experts must be a non-empty sequence"):
        B.strategies(16, 8, 8, experts=4)
    with pytest.raises(ValueError, match="settings' k must be <= the fewest experts"):
        B.strategies(16, 8, 8, experts=(2,), settings=((4, 1.0),))
    with pytest.raises(TypeError, match=r"settings\[0\] must be a pair"):
        B.strategies(16, 8, 8, experts=(2,), settings=(1,))
    with pytest.raises(ValueError, match=r"settings\[0\]\[1\] must be"):
        B.strategies(16, 8, 8, experts=(2,), settings=((1, 0.0),))
    with pytest.raises(ValueError, match="loop_tokens must be an int in"):
        B.strategies(16, 8, 8, experts=(2,), loop_tokens=32)
    with pytest.raises(ValueError, match="min_run_time must be > 0"):
        B.strategies(16, 8, 8, experts=(2,), loop_tokens=4, min_run_time=0)
    with pytest.raises(TypeError, match="threads must be None or an int"):
        B.strategies(16, 8, 8, experts=(2,), loop_tokens=4, threads=1.5)
    with pytest.raises(TypeError, match="time must be None or a dict"):
        B.all_to_all((4,), (2,), 8, time=4)
    with pytest.raises(ValueError, match=r"world_sizes\[0\] must be an int >= 1"):
        B.all_to_all((0,), (2,))
    with pytest.raises(TypeError, match="quick must be a bool"):
        B.run(quick="yes")
