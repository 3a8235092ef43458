"""Tests of effx_lab.prune.bench: ``python -m effx_lab.bench prune`` (or ``ch03``).

The quick run (small sizes, what CI runs) must return every section with its keys; the
crossover it reports must follow from its own rows; the structured FFN must really be
the dense FFN with neurons removed; every public function refuses bad arguments with a
named error. Times are not asserted (a busy 2-core machine), only their shape.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.bench import __main__ as cli
from effx_lab.prune import bench as B
from effx_lab.prune import storage


@pytest.fixture(scope="module")
def quick():
    return B.run(quick=True)


def test_registered_under_both_names(capsys):
    assert cli.REGISTRY["ch03"] == cli.REGISTRY["prune"] == "effx_lab.prune.bench"
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "ch03" in out and "prune" in out and "effx_lab.prune.bench" in out


def test_quick_run_returns_every_section(quick):
    res = quick
    assert res["chapter"] == "ch03" and res["quick"] is True
    assert set(res) >= {
        "device", "threads", "load_start", "load_end", "ceilings", "goals",
        "unstructured", "numpy_reference", "structured_ffn", "structured_ffn_tinylm",
        "block_sparse", "gpu_sparse_vs_dense",
    }  # fmt: skip
    assert res["threads"] == B.RUN_CONFIG[True]["threads"]
    for key in ("ffn_half_neurons_decode", "ffn_half_neurons_prefill"):
        g = res["goals"][key]
        assert set(g) >= {"value", "goal", "met", "ideal"} and g["goal"] == ">= 1.8"
        assert g["value"] > 0 and g["met"] is (g["value"] >= 1.8) and g["ideal"] == 2.0
    assert "quick mode" in res["goals"]["note"]
    if not torch.cuda.is_available():
        assert res["gpu_sparse_vs_dense"] == {"skipped": "no CUDA GPU"}


def test_quick_unstructured_rows(quick):
    uns = quick["unstructured"]
    cfg, run_cfg = uns["config"], B.RUN_CONFIG[True]
    assert (cfg["n"], cfg["k"]) == (1024, 1024) and cfg["methods"] == list(B.METHODS)
    assert cfg["peak_bandwidth_gb_s"] > 0
    pairs = [(r["tokens"], r["sparsity"]) for r in uns["rows"]]
    assert pairs == [
        (t, s) for t in run_cfg["unstructured"]["tokens"] for s in run_cfg["sparsities"]
    ]
    for r in uns["rows"]:
        assert r["nnz"] == round((1 - r["sparsity"]) * cfg["n"] * cfg["k"])
        assert r["times_s"]["dense"] > 0 and r["speedup_vs_dense"]["dense"] == 1.0
        assert r["timed"]["dense"] == "compare"
        for m in B.METHODS:
            if m in r["times_s"]:
                want = r["times_s"]["dense"] / r["times_s"][m]
                assert math.isclose(r["speedup_vs_dense"][m], want, rel_tol=1e-12)
                assert r["roof"][m]["gb_s"] > 0
                assert r["roof"][m]["bound"] in ("memory", "compute")
                assert r["timed"][m] in ("compare", "one call")
            else:  # dropped at a higher sparsity: says why
                assert r["timed"][m].startswith("not timed")
        # bytes moved: the weight's storage plus x and y
        io = 4 * r["tokens"] * (cfg["n"] + cfg["k"])
        assert r["bytes"]["dense"] == 4 * cfg["n"] * cfg["k"] + io
        assert r["bytes"]["ours_csr"] == storage.csr_nbytes(
            (cfg["n"], cfg["k"]), r["nnz"], 4, 4) + io  # fmt: skip
        assert r["bytes"]["torch_coo"] == r["nnz"] * 20 + io


def test_crossover_follows_from_the_rows(quick):
    uns = quick["unstructured"]
    shape = (uns["config"]["n"], uns["config"]["k"])
    for phase, per in uns["crossover"].items():
        rows = [r for r in uns["rows"] if r["phase"] == phase]
        assert rows and set(per) == set(B.METHODS) - {"dense"}
        for m, c in per.items():
            wins = [r["sparsity"] for r in rows if r["speedup_vs_dense"].get(m, 0) > 1]
            assert c["measured"] == (min(wins) if wins else "none"), (phase, m, c)
            if m == "torch_coo":
                assert c["predicted"] == pytest.approx(16 / 20)
            else:
                assert c["predicted"] == storage.crossover_sparsity(
                    shape, 4, c["index_bytes"])  # fmt: skip
    # ours stores int32 indices (the bytes model's 1/2), torch.sparse int64 (2/3)
    decode = uns["crossover"]["decode"]
    assert decode["ours_csr"]["index_bytes"] == 4
    assert decode["torch_csr"]["index_bytes"] == 8
    assert decode["ours_csr"]["predicted"] == pytest.approx(0.5, abs=1e-3)
    assert decode["torch_csr"]["predicted"] == pytest.approx(2 / 3, abs=1e-3)
    assert B.format_unstructured(uns).count("crossover") == len(uns["crossover"])


def test_quick_structured_and_block_and_numpy(quick):
    for key in ("structured_ffn", "structured_ffn_tinylm"):
        ffn = quick[key]
        d_ff = ffn["config"]["d_ff"]
        assert ffn["kept_neurons"] == {
            "dense": d_ff, "removed_25": d_ff * 3 // 4, "removed_50": d_ff // 2,
            "removed_75": d_ff // 4,
        }  # fmt: skip
        assert ffn["ideal"]["removed_50"] == 2.0 and ffn["ideal"]["removed_75"] == 4.0
        # the shrunk FFN is the dense one with those neurons silenced
        assert all(v < 1e-5 for v in ffn["max_abs_diff"].values()), ffn["max_abs_diff"]
        assert [r["tokens"] for r in ffn["rows"]] == list(ffn["config"]["tokens"])
        for r in ffn["rows"]:
            assert set(r["speedup_vs_dense"]) == set(ffn["kept_neurons"])
    assert quick["structured_ffn_tinylm"]["config"]["d_model"] == 128
    blk = quick["block_sparse"]
    assert {(r["tokens"], r["density"]) for r in blk["rows"]} == {
        (t, d) for t in blk["config"]["tokens"] for d in (0.5, 0.25)
    }
    n_blocks = (blk["config"]["n"] // 32) * (blk["config"]["k"] // 32)
    for r in blk["rows"]:
        assert r["stored_blocks"] == round(r["density"] * n_blocks)
        assert r["ideal"] == 1 / r["density"] and r["times_s"]["dense"] > 0
    for r in quick["numpy_reference"]["rows"]:
        assert set(r["times_s"]) == {"numpy_dense", "numpy_csr"}
        assert r["max_abs_diff"] < 1e-4


def test_measured_crossover():
    assert B.measured_crossover({0.5: 0.3, 0.9: 1.2, 0.99: 4.0}) == 0.9
    assert B.measured_crossover({0.5: 0.3, 0.9: 0.8}) == "none"
    # the smallest winning sparsity, even when a higher one happened to lose
    assert B.measured_crossover({0.7: 1.1, 0.8: 0.95, 0.9: 1.5}) == 0.7
    assert B.measured_crossover({0.9: None, 0.99: 1.0}) == "none"  # equal is not faster
    with pytest.raises(TypeError, match="speedups must be a mapping"):
        B.measured_crossover([(0.5, 2.0)])
    with pytest.raises(TypeError, match=r"speedups\[0.5\] must be a number or None"):
        B.measured_crossover({0.5: "fast"})


def test_a_much_slower_candidate_is_timed_once_and_dropped():
    dropped: dict[str, str] = {}
    fns = {
        "dense": lambda: None,
        "slow": lambda: time.sleep(0.06),
        "fast": lambda: None,
    }
    times, how, comp = B._measure(
        fns, dropped=dropped, drop_factor=10.0, min_run_time=0.001, rounds=1
    )
    assert how == {"dense": "compare", "fast": "compare", "slow": "one call"}
    assert times["slow"] >= 0.06 and set(comp.timings) == {"dense", "fast"}
    assert set(dropped) == {"slow"}
    times, how, _ = B._measure(
        fns, dropped=dropped, drop_factor=10.0, min_run_time=0.001, rounds=1
    )
    assert "slow" not in times and how["slow"].startswith("not timed")
    # a predicted time (from a higher sparsity) far above dense: never called
    calls = []
    fns["late"] = lambda: calls.append(1)
    times, how, _ = B._measure(
        fns, dropped=dropped, drop_factor=10.0, min_run_time=0.001, rounds=1,
        predicted={"late": 5.0, "fast": 0.0},
    )  # fmt: skip
    assert calls == [] and "late" not in times and "predicted 5e+03 ms" in how["late"]
    assert how["fast"] == "compare" and "late" in dropped


U, N, FF = B.unstructured, B.numpy_reference, B.structured_ffn
BS, GPU = B.block_sparse, B.gpu_sparse_vs_dense
BAD = [
    (lambda: U(0, 8), ValueError, "n must be"),
    (lambda: U(8, 8, sparsities=(1.0,)), ValueError, r"lie in \(0, 1\), got 1.0"),
    (lambda: U(8, 8, sparsities=()), TypeError, "sparsities must be a non-empty"),
    (lambda: U(8, 8, sparsities=(0.5, 0.5)), ValueError, "must not repeat"),
    (lambda: U(8, 8, sparsities=("0.5",)), TypeError, "sparsities must hold real"),
    (lambda: U(8, 8, tokens=(0,)), ValueError, r"tokens\[i\] must be"),
    (lambda: U(8, 8, tokens=1), TypeError, "tokens must be a non-empty sequence"),
    (lambda: U(8, 8, methods=("dense", "scipy")), ValueError, "names from"),
    (lambda: U(8, 8, methods=("ours_csr",)), ValueError, "including 'dense'"),
    (lambda: U(8, 8, drop_factor=0.5), ValueError, "drop_factor"),
    (lambda: U(8, 8, threads=0), ValueError, "threads"),
    (lambda: U(8, 8, roofline="roof"), TypeError, "roofline must be a Roofline"),
    (lambda: U(8, 8, min_run_time=0), ValueError, "min_run_time"),
    (lambda: N(8, 8, rounds=0), ValueError, "rounds"),
    (lambda: FF(8, 16, fractions=(0.0,)), ValueError, r"fractions must lie in \(0, 1"),
    (lambda: FF(8, 4, fractions=(0.1,)), ValueError, "must remove at least one"),
    (lambda: FF(8, 16, seed=-1), ValueError, "seed"),
    (lambda: BS(64, 48, block=32), ValueError, "block must divide"),
    (lambda: BS(64, 64, densities=(0.0,)), ValueError, r"ies must lie in \(0, 1\]"),
    (lambda: GPU(64, 64, dtype=torch.float64), TypeError, "dtype must be torch.fl"),
    (lambda: GPU(64, 64, block=8, device="cpu"), ValueError, "block"),
    (lambda: B.run(quick="yes"), TypeError, "quick"),
    (lambda: B.format_unstructured({"rows": []}), TypeError, "res must be the dict"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD)
def test_bad_arguments_raise_named_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_gpu_path_without_a_gpu():
    if torch.cuda.is_available():  # pragma: no cover - the GPU check runs it for real
        pytest.skip("a GPU is present: the GPU check measures this")
    res = B.gpu_sparse_vs_dense(64, 64)
    assert set(res) == {"skipped"} and "no CUDA GPU" in res["skipped"]
