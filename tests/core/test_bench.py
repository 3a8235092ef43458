"""Tests of effx_lab.bench: timing, side-by-side comparison, memory peaks, roofline, ceilings, JSON, CLI."""
from __future__ import annotations

import json
import math
import runpy
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

import effx_lab.bench as bench
from effx_lab.bench import (
    BACKEND_CPU,
    Ceilings,
    Comparison,
    Roofline,
    Timing,
    compare,
    device_name,
    measure_ceilings,
    memory_by_source,
    peak_memory,
    save_results,
    time_fn,
    to_jsonable,
)
from effx_lab.bench import __main__ as cli

FAST = 0.02  # min_run_time for tests: enough blocks for a median, short enough for CI


# ---------------------------------------------------------------------------------------------- timing


def test_time_fn_positive_and_slower_is_slower():
    fast = time_fn(time.sleep, 0.001, min_run_time=FAST, device="cpu")
    slow = time_fn(time.sleep, 0.04, min_run_time=FAST, device="cpu")
    assert fast.median_s > 0 and slow.median_s > 0 and fast.iqr_s >= 0
    assert fast.runs >= 1 and fast.backend == BACKEND_CPU and fast.device == "cpu"
    assert fast.name == "sleep"
    # 40x the sleep: a huge built-in margin, so a busy machine cannot flip the comparison (a late wake-up of
    # up to 18 ms on every 1 ms sleep still leaves the ratio above 2)
    assert slow.median_s / fast.median_s > 2.0


def test_time_fn_more_work_measures_slower():
    # 40x more elements to sort: a wide margin, so a busy machine cannot flip the comparison
    x = np.random.default_rng(0).random(200_000)
    small = time_fn(lambda: np.sort(x[:5_000]), name="small", min_run_time=FAST)
    big = time_fn(lambda: np.sort(x), name="big", min_run_time=FAST)
    assert small.name == "small"
    assert big.median_s / small.median_s > 2.0


def test_time_fn_passes_args_and_kwargs_and_warms_up():
    calls = []

    def f(a, b=0):
        calls.append((a, b))

    t = time_fn(f, 3, b=4, min_run_time=0.005)
    assert calls and all(c == (3, 4) for c in calls)
    assert len(calls) >= t.runs + 1  # the warm-up call is not timed
    assert isinstance(t, Timing) and t.median_ms == pytest.approx(t.median_s * 1e3)
    assert "f:" in str(t) and t.to_dict()["name"] == "f"


def test_time_fn_bad_inputs():
    with pytest.raises(TypeError, match="fn must be callable"):
        time_fn(3)
    with pytest.raises(ValueError, match="min_run_time"):
        time_fn(lambda: None, min_run_time=0)
    with pytest.raises(TypeError, match="min_run_time"):
        time_fn(lambda: None, min_run_time="fast")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        time_fn(lambda: None, device="tpu")
    with pytest.raises(TypeError, match="device"):
        time_fn(lambda: None, device=0)
    with pytest.raises(TypeError, match="name"):
        time_fn(lambda: None, name=5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_time_fn_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        time_fn(lambda: None, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_fn_cuda_uses_do_bench():  # pragma: no cover - GPU only
    a = torch.randn(1024, 1024, device="cuda")
    t1 = time_fn(torch.matmul, a, a, min_run_time=0.05, device="cuda")
    t40 = time_fn(lambda: [torch.matmul(a, a) for _ in range(40)], min_run_time=0.05, device="cuda")
    assert t1.device == "cuda" and t1.median_s > 0
    assert t40.median_s / t1.median_s > 2.0  # 40x the work: a margin no load on a shared GPU can flip


def test_compare_speedups_consistent_with_timings():
    c = compare(
        {"slow": lambda: time.sleep(0.04), "fast": lambda: time.sleep(0.001)},  # 40x: a huge built-in margin
        baseline="slow",
        min_run_time=FAST,
        rounds=2,
    )
    assert isinstance(c, Comparison) and c.baseline == "slow" and c.rounds == 2
    assert c.speedup("slow") == 1.0
    for name, t in c.timings.items():
        assert c.speedup(name) == pytest.approx(c.timings["slow"].median_s / t.median_s)
        assert len(c.round_medians_s[name]) == 2
        assert t.median_s == pytest.approx(float(np.median(c.round_medians_s[name])))
    assert c.ratios() == {name: c.speedup(name) for name in ("slow", "fast")}
    assert c.speedup("fast") > 2.0
    table = c.table()
    assert "fast" in table and "1.00x" in table and "speed-up vs slow" in table
    assert len({len(line) for line in table.splitlines()[:4]}) == 1  # aligned columns
    assert "| fast |" in c._repr_markdown_()
    d = json.loads(json.dumps(c.to_dict()))
    assert d["speedups"]["slow"] == 1.0 and set(d["timings"]) == {"slow", "fast"}


def test_compare_interleaves_rounds():
    log = []
    fns = {name: (lambda name=name: log.append(name)) for name in "ABC"}
    compare(fns, baseline="A", min_run_time=0.002, rounds=3)
    collapsed = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert collapsed == list("ABC") * 3


def test_compare_bad_inputs():
    f = lambda: None  # noqa: E731
    with pytest.raises(TypeError, match="fns must be a non-empty dict"):
        compare({}, baseline="a")
    with pytest.raises(TypeError, match="fns must be a non-empty dict"):
        compare([f], baseline="a")
    with pytest.raises(ValueError, match="baseline must be one of"):
        compare({"a": f}, baseline="b")
    with pytest.raises(TypeError, match="baseline"):
        compare({"a": f}, baseline=0)
    with pytest.raises(TypeError, match=r"fns\['b'\] must be callable"):
        compare({"a": f, "b": 3}, baseline="a")
    with pytest.raises(ValueError, match="rounds"):
        compare({"a": f}, baseline="a", rounds=0)
    c = compare({"a": f}, baseline="a", min_run_time=0.002, rounds=1)
    with pytest.raises(ValueError, match="name must be one of"):
        c.speedup("zzz")


# ---------------------------------------------------------------------------------------------- memory


def test_peak_memory_numpy_array():
    n_bytes = 8 * 1_000_000
    peak = peak_memory(np.ones, 1_000_000)
    assert n_bytes <= peak < 2 * n_bytes


def test_peak_memory_torch_tensor_invisible_to_tracemalloc():
    n_bytes = 4 * 2_000_000
    parts = memory_by_source(torch.ones, 2_000_000)
    assert parts["tracemalloc"] < n_bytes / 10  # tracemalloc alone would miss the tensor
    peak = peak_memory(torch.ones, 2_000_000)
    assert n_bytes <= peak < 2 * n_bytes
    if not torch.cuda.is_available():
        assert parts["cuda"] is None


def test_peak_memory_sees_transient_peaks():
    def numpy_temp():
        tmp = np.ones(2_000_000)  # 16 MB, freed before returning
        return float(tmp.sum())

    def torch_temp():
        a = torch.ones(2_000_000)  # 8 MB
        b = a * 2  # 8 MB more while a is alive
        del a
        return float(b.sum())

    assert 16_000_000 <= peak_memory(numpy_temp) < 32_000_000
    assert 16_000_000 <= peak_memory(torch_temp) < 32_000_000
    assert peak_memory(lambda: None) < 1_000_000


def test_peak_memory_bad_inputs():
    with pytest.raises(TypeError, match="fn must be callable"):
        peak_memory("np.ones")
    with pytest.raises(TypeError, match="fn must be callable"):
        memory_by_source(None)


# -------------------------------------------------------------------------------------------- roofline


def _synthetic(peak_flops=100e9, peak_bandwidth=10e9) -> Ceilings:
    return Ceilings("test device", peak_flops, peak_bandwidth, "float32", "synthetic", "2026-01-01T00:00:00+00:00")


def test_roofline_math():
    r = Roofline(_synthetic())
    assert r.ridge_intensity == pytest.approx(10.0)
    assert r.attainable(0.0) == 0.0
    assert r.attainable(1.0) == pytest.approx(10e9)  # bandwidth * intensity
    assert r.attainable(10.0) == pytest.approx(100e9)  # the ridge: both roofs
    assert r.attainable(1000.0) == pytest.approx(100e9)  # compute roof
    i = np.array([0.5, 5.0, 50.0])
    np.testing.assert_allclose(r.attainable(i), np.minimum(100e9, 10e9 * i))
    assert r.bound(9.99) == "memory" and r.bound(10.0) == "compute"


def test_roofline_points():
    r = Roofline(_synthetic())
    # memory-bound: 1 GFLOP over 1 GB in 0.2 s -> 5 GB/s of 10 GB/s
    p = r.point("axpy-like", flops=1e9, bytes_moved=1e9, seconds=0.2)
    assert p.intensity == pytest.approx(1.0) and p.bound == "memory"
    assert p.achieved_flops == pytest.approx(5e9) and p.achieved_bandwidth == pytest.approx(5e9)
    assert p.attainable_flops == pytest.approx(10e9)
    assert p.fraction_of_attainable == pytest.approx(0.5)
    # compute-bound: 1 TFLOP over 1 GB in 20 s -> 50 GFLOP/s of 100
    q = r.point("gemm-like", flops=1e12, bytes_moved=1e9, seconds=20.0)
    assert q.intensity == pytest.approx(1000.0) and q.bound == "compute"
    assert q.fraction_of_attainable == pytest.approx(0.5)
    assert q.fraction_of_attainable == pytest.approx(q.achieved_flops / q.attainable_flops)
    # a pure copy (no FLOPs) is memory-bound and judged by bandwidth
    c = r.point("copy", flops=0, bytes_moved=2e9, seconds=1.0)
    assert c.bound == "memory" and c.fraction_of_attainable == pytest.approx(0.2)
    assert json.loads(json.dumps(to_jsonable({"p": p})))["p"]["bound"] == "memory"


def test_roofline_bad_inputs():
    with pytest.raises(TypeError, match="ceilings must be a Ceilings"):
        Roofline({"peak_flops": 1.0})
    with pytest.raises(ValueError, match="peak_flops"):
        Roofline(_synthetic(peak_flops=0.0))
    with pytest.raises(ValueError, match="peak_bandwidth"):
        Roofline(_synthetic(peak_bandwidth=-1.0))
    r = Roofline(_synthetic())
    with pytest.raises(ValueError, match="intensity"):
        r.attainable(-1.0)
    with pytest.raises(ValueError, match="intensity"):
        r.attainable(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="intensity"):
        r.attainable("high")
    with pytest.raises(ValueError, match="seconds"):
        r.point("k", 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="bytes_moved"):
        r.point("k", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="flops"):
        r.point("k", -1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="name"):
        r.point(3, 1.0, 1.0, 1.0)


def test_measure_ceilings_quick_measures_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFX_LAB_CACHE", str(tmp_path / "cache"))
    c = measure_ceilings(quick=True)
    assert c.device == device_name() and c.dtype == "float32" and "quick" in c.method
    for value in (c.peak_flops, c.peak_bandwidth):
        assert math.isfinite(value) and value > 0
    assert 1e6 < c.peak_flops < 1e17 and 1e6 < c.peak_bandwidth < 1e14  # plausible, not datasheet
    path = tmp_path / "cache" / "ceilings.json"
    data = json.loads(path.read_text())
    key = f"{device_name()} | float32"
    assert data[key]["ceilings"]["peak_flops"] == c.peak_flops
    # the second call reads the cache instead of measuring: prove it by editing the cached number
    data[key]["ceilings"]["peak_flops"] = 123.0
    path.write_text(json.dumps(data))
    assert measure_ceilings(quick=True).peak_flops == 123.0
    # cache=False measures afresh (timing stubbed out here: it is slow) and leaves the file alone
    monkeypatch.setattr(bench, "_best_seconds", lambda fn, device, budget_s, min_repeats: (1.0, min_repeats))
    fresh = measure_ceilings(quick=True, cache=False)
    assert fresh.peak_flops == pytest.approx(2 * (2048 if torch.cuda.is_available() else 1024) ** 3)
    assert json.loads(path.read_text())[key]["ceilings"]["peak_flops"] == 123.0


def test_measure_ceilings_full_request_ignores_quick_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFX_LAB_CACHE", str(tmp_path))
    timed = []

    def fake_best(fn, device, budget_s, min_repeats):  # skip the (seconds-long) full measurement
        timed.append(budget_s)
        return 0.5, min_repeats

    monkeypatch.setattr(bench, "_best_seconds", fake_best)
    (tmp_path / "ceilings.json").write_text("{not json")  # a corrupt cache is measured over, not fatal
    quick = measure_ceilings(quick=True)
    assert len(timed) == 2 and "quick mode" in quick.method  # matmul and copy
    assert measure_ceilings(quick=True) == quick and len(timed) == 2  # from the cache
    full = measure_ceilings(quick=False)  # a quick entry cannot answer a full request
    assert len(timed) == 4 and "quick" not in full.method
    n_full = 8192 if torch.cuda.is_available() else 2048
    assert full.peak_flops == pytest.approx(2 * n_full**3 / 0.5)
    assert measure_ceilings(quick=True) == full  # a full entry answers quick requests
    assert len(timed) == 4
    measure_ceilings(quick=True, cache=False)
    assert json.loads((tmp_path / "ceilings.json").read_text())  # still valid JSON, still the full entry
    assert measure_ceilings(quick=False) == full and len(timed) == 6


def test_full_measurements_keep_the_best_ceiling_seen(tmp_path, monkeypatch):
    """A measurement taken while the machine is busy must not lower a ceiling measured earlier."""
    monkeypatch.setenv("EFFX_LAB_CACHE", str(tmp_path))
    seconds = iter([0.5, 0.5, 1.0, 0.25])  # matmul, copy (fast), then matmul slower, copy faster

    monkeypatch.setattr(bench, "_best_seconds", lambda fn, device, budget_s, min_repeats: (next(seconds), 3))
    first = measure_ceilings(quick=False, cache=False)
    second = measure_ceilings(quick=False, cache=False)
    assert second.peak_flops == first.peak_flops  # the slower matmul did not lower the ceiling
    assert second.peak_bandwidth == pytest.approx(2 * first.peak_bandwidth)  # the faster copy raised it
    assert "maximum" in second.method
    assert measure_ceilings() == second  # and the cache holds the combination


def test_measure_ceilings_bad_inputs():
    with pytest.raises(ValueError, match="dtype must be one of"):
        measure_ceilings(dtype="int8")
    with pytest.raises(TypeError, match="quick"):
        measure_ceilings(quick="yes")
    with pytest.raises(TypeError, match="cache"):
        measure_ceilings(cache=1)


# --------------------------------------------------------------------------------------------- results


def test_device_name():
    name = device_name()
    assert isinstance(name, str) and name.strip()
    if not torch.cuda.is_available():
        assert "cores)" in name


def test_save_results_writes_json_with_device(tmp_path):
    timing = Timing("f", 1e-3, 1e-4, 10, "cpu", BACKEND_CPU)
    comp = Comparison({"f": timing, "g": Timing("g", 2e-3, 1e-4, 10, "cpu", BACKEND_CPU)}, "g", 1, {})
    results = {
        "timing": timing,
        "comparison": comp,
        "ceilings": _synthetic(),
        "array": np.arange(3),
        "scalar": np.float32(1.5),
        "tensor": torch.tensor([1.0, 2.0]),
        "nan": float("nan"),
        "nested": {1: (True, None, "x")},
    }
    path = save_results("demo", results, out_dir=tmp_path / "out")
    assert path.parent == tmp_path / "out" and path.name.startswith("demo-") and path.suffix == ".json"
    data = json.loads(path.read_text())
    assert data["device"] == device_name() and data["name"] == "demo"
    assert data["torch_version"] == torch.__version__ and data["numpy_version"] == np.__version__
    assert data["timestamp"].endswith("+00:00")
    r = data["results"]
    assert r["timing"]["median_s"] == 1e-3 and r["comparison"]["speedups"]["f"] == pytest.approx(2.0)
    assert r["ceilings"]["peak_flops"] == 100e9 and r["array"] == [0, 1, 2] and r["scalar"] == 1.5
    assert r["tensor"] == [1.0, 2.0] and r["nan"] is None and r["nested"] == {"1": [True, None, "x"]}


def test_save_results_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save_results("x", {"a": 1})
    assert path.parent == tmp_path / "bench_results" and path.exists()


def test_save_results_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="name must be"):
        save_results("../escape", {}, out_dir=tmp_path)
    with pytest.raises(TypeError, match="name must be a str"):
        save_results(None, {}, out_dir=tmp_path)
    with pytest.raises(TypeError, match="results must be a dict"):
        save_results("x", [1, 2], out_dir=tmp_path)
    with pytest.raises(TypeError, match=r"results\['bad'\] cannot be written as JSON"):
        save_results("x", {"bad": object()}, out_dir=tmp_path)
    with pytest.raises(TypeError, match="out_dir"):
        save_results("x", {}, out_dir=3)


# ------------------------------------------------------------------------------------------------- CLI


def test_format_results_readable():
    timing = Timing("f", 1e-3, 1e-4, 10, "cpu", BACKEND_CPU)
    comp = Comparison({"f": timing, "g": Timing("g", 2e-3, 1e-4, 10, "cpu", BACKEND_CPU)}, "g", 1, {})
    text = cli.format_results(
        {"cmp": comp, "cmp_as_dict": comp.to_dict(), "rows": [{"n": 1}, {"n": 2}], "x": 0.123456789, "v": [1.0, 2.5]}
    )
    assert text.count("speed-up vs g") == 2  # a Comparison and its to_dict() both print as tables
    assert "2.00x" in text and "- item 1:" in text and "n: 2" in text
    assert "x: 0.1235" in text and "v: [1, 2.5]" in text


def test_registry_has_chapter_one():
    assert cli.REGISTRY["ch01"] == cli.REGISTRY["costs"] == "effx_lab.costs.bench"


@pytest.fixture
def fake_chapter(tmp_path, monkeypatch):
    module = tmp_path / "effx_fake_chapter_bench.py"
    module.write_text(
        textwrap.dedent(
            """
            from effx_lab.bench import Timing

            def run(quick=False):
                return {
                    "quick": quick,
                    "answer": 42.0,
                    "timing": Timing("k", 0.001, 0.0001, 5, "cpu", "torch.utils.benchmark"),
                    "sizes": {"n": 3},
                }
            """
        )
    )
    (tmp_path / "effx_fake_no_run.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.REGISTRY, "fake", "effx_fake_chapter_bench")
    monkeypatch.setitem(cli.REGISTRY, "norun", "effx_fake_no_run")
    monkeypatch.setitem(cli.REGISTRY, "missing", "effx_fake_module_that_does_not_exist")
    return tmp_path


def test_cli_list(fake_chapter, capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "ch01" in out and "costs" in out and "effx_fake_chapter_bench" in out


def test_cli_runs_a_chapter_and_saves_json(fake_chapter, capsys):
    out_dir = fake_chapter / "results"
    assert cli.main(["fake", "--quick", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "answer: 42" in out and "k: 1.000 ms" in out and "n: 3" in out
    files = list(out_dir.glob("fake-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["results"]["quick"] is True and data["results"]["timing"]["runs"] == 5
    assert data["device"] == device_name()


def test_cli_unknown_or_missing_chapter(fake_chapter, capsys):
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown chapter 'nope'" in err and "ch01" in err and "fake" in err
    assert cli.main([]) == 2
    assert "valid chapters" in capsys.readouterr().err
    assert cli.main(["missing"]) == 1
    assert "failed to import" in capsys.readouterr().err
    assert cli.main(["norun"]) == 1
    assert "no run(quick)" in capsys.readouterr().err


def test_cli_module_entry_point(monkeypatch, capsys):
    # `python -m effx_lab.bench` reaches main() and turns its return value into the exit code
    # (run in-process with runpy: a fresh interpreter would spend seconds importing torch)
    monkeypatch.setattr(sys, "argv", ["python -m effx_lab.bench", "not-a-chapter"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already in sys.modules
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("effx_lab.bench", run_name="__main__")
    assert exc.value.code == 2
    assert "valid chapters: ch01, ch02, ch03, ch04, ch05, ch07, costs, flash, moe, nm, prune, quant" in capsys.readouterr().err



# ---------------------------------------------------------------- threads, goals, machine


def test_limit_threads_sets_and_restores_torch_and_blas_threads():
    before = torch.get_num_threads()
    with bench.limit_threads(1) as applied:
        assert torch.get_num_threads() == 1 and applied.torch == 1
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            assert applied.blas is None
        else:
            assert applied.blas == 1
            info = threadpool_info()
            blas = [p["num_threads"] for p in info if p["user_api"] == "blas"]
            assert blas and all(n == 1 for n in blas)
    assert torch.get_num_threads() == before
    with bench.limit_threads(1, blas=False) as applied:
        assert applied == bench.ThreadLimits(1, None)
    with bench.limit_threads(None) as applied:  # None: nothing changes
        assert applied == (before, None) and torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with bench.limit_threads(1):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored after an error too


def test_check_threads_and_limit_threads_validate():
    assert bench.check_threads(None) is None and bench.check_threads(np.int64(2)) == 2
    wrong_type = "threads must be None or an int >= 1"
    bad_threads = [
        (0, ValueError, "threads must be an int >= 1, got 0"),
        (1.5, TypeError, wrong_type),
        (True, TypeError, wrong_type),
        ("2", TypeError, wrong_type),
    ]
    for bad, error, text in bad_threads:
        with pytest.raises(error, match=text):
            bench.check_threads(bad)
        with pytest.raises(error, match=text):
            with bench.limit_threads(bad):
                pass
    with pytest.raises(TypeError, match="blas must be a bool"):
        with bench.limit_threads(1, blas="yes"):
            pass


def test_goal_is_a_reported_ratio_never_an_assertion():
    assert bench.goal(3.2, 3.0) == {"value": 3.2, "goal": ">= 3", "met": True}
    assert bench.goal(2.9, 3) == {"value": 2.9, "goal": ">= 3", "met": False}
    at_most = {"value": 9.0, "goal": "<= 10", "met": True}
    assert bench.goal(9.0, 10.0, op="<=") == at_most
    assert bench.goal(0.625 * 64, 0.625 * 64)["goal"] == ">= 40"
    assert bench.goal(1.0, 1.23456)["goal"] == ">= 1.235"
    # not measured: reported, not met
    assert bench.goal(None, 5.0) == {"value": None, "goal": ">= 5", "met": False}
    assert bench.goal(float("nan"), 5.0)["met"] is False
    per_path = {"int4_triton": 4.5}
    g = bench.goal(np.float64(4.5), 5.0, op="<=", path="int4_triton", per_path=per_path)
    assert list(g) == ["value", "goal", "met", "path", "per_path"] and g["met"] is True
    json.dumps(to_jsonable(g), allow_nan=False)
    with pytest.raises(TypeError, match="value must be a real number or None"):
        bench.goal("3", 3.0)
    with pytest.raises(TypeError, match="value must be a real number or None"):
        bench.goal(True, 3.0)
    with pytest.raises(ValueError, match="target must be finite"):
        bench.goal(1.0, float("inf"))
    with pytest.raises(ValueError, match="op must be one of"):
        bench.goal(1.0, 2.0, op=">")
    with pytest.raises(ValueError, match="extra keys must not be one of"):
        bench.goal(1.0, 2.0, met=True)


def test_cpu_cores_and_load_average():
    assert isinstance(bench.cpu_cores(), int) and bench.cpu_cores() >= 1
    load = bench.load_average()
    if load is not None:
        assert len(load) == 3 and all(isinstance(v, float) and v >= 0 for v in load)
    assert f"({bench.cpu_cores()} cores)" in device_name() or torch.cuda.is_available()


def test_the_experiments_scripts_helpers(tmp_path):
    # write_json / load_checked_results / experiments_main: what every chapter's
    # `python -m effx_lab.<chapter>.experiments` runs
    from effx_lab import bench as B

    calls = []

    def run(names, quick):
        calls.append((names, quick))
        return {"names": list(names), **B.run_record()}

    def check(results):
        if not results.get("names"):
            raise ValueError("results['names'] must not be empty")
        return results

    out = tmp_path / "sub" / "r.json"
    assert B.experiments_main("my.mod", ("a", "b"), run, check, ["--quick", "--only", "b", "--out", str(out)]) == 0
    assert calls == [(("b",), True)]
    got = B.load_checked_results(out, tmp_path / "none.json", "my.mod", check)
    assert got["names"] == ["b"] and got["command"] == f"python -m my.mod --quick --only b --out {out}"
    assert {"device", "cpu_cores", "torch", "date"} <= set(got)
    with pytest.raises(FileNotFoundError, match="python -m my.mod --out"):
        B.load_checked_results(None, tmp_path / "none.json", "my.mod", check)
    B.write_json({"names": []}, out)
    with pytest.raises(ValueError, match="must not be empty"):
        B.load_checked_results(out, out, "my.mod", check)
    with pytest.raises(TypeError, match="path must be a str"):
        B.load_checked_results(3, out, "my.mod", check)
    with pytest.raises(TypeError, match="results must be a dict"):
        B.write_json([1], out)


def test_seed_spread_and_the_experiments_rule():
    """The summary of one arm over seeds and the rule the chapters' experiments scripts
    apply to two arms (beats / matches / worse, by the larger spread)."""
    a = bench.seed_spread([1.0, 1.2, 1.1])
    assert a["mean"] == pytest.approx(1.1) and a["spread"] == pytest.approx(0.2)
    assert a["std"] == pytest.approx(0.1) and bench.seed_spread([2.0])["std"] == 0.0
    close, far = bench.seed_spread([1.15, 1.25]), bench.seed_spread([1.5, 1.6])
    assert bench.compare_arms(a, close) == "matches"  # |1.1 - 1.2| <= 0.2
    assert bench.compare_arms(a, far) == "beats"  # 1.1 < 1.55 - 0.2
    assert bench.compare_arms(far, a) == "worse"
    with pytest.raises(TypeError, match="values must be a non-empty list"):
        bench.seed_spread([])
    with pytest.raises(ValueError, match="values must be finite"):
        bench.seed_spread([1.0, float("nan")])
    with pytest.raises(TypeError, match="a must be a seed_spread"):
        bench.compare_arms({"mean": 1.0}, a)


def test_check_seed_spread_names_the_bad_entry():
    s = bench.seed_spread([1.0, 1.2, 1.1])
    bench.check_seed_spread("arm", s, 3)  # a true summary passes
    bench.check_seed_spread("flips", bench.seed_spread([0.0, 2.0]), 2, positive=False)
    cases = [
        (dict(s, values=[1.0, 1.2]), 3, "arm\\['values'\\] must hold one value per seed"),
        (dict(s, values=[1.0, -1.2, 1.1]), 3, "must be a finite positive float"),
        (dict(s, mean=2.0), 3, "is not the mean of its values"),
        (dict(s, std=float("nan")), 3, "arm\\['std'\\] must be a finite float"),
        ([1.0], 1, "must hold 'values'"),
    ]
    for bad, n, match in cases:
        with pytest.raises(ValueError, match=match):
            bench.check_seed_spread("arm", bad, n)
    with pytest.raises(ValueError, match="must be a finite float >= 0"):
        bench.check_seed_spread("flips", bench.seed_spread([-1.0, 2.0]), 2, positive=False)


def test_check_int_sequence_names_the_bad_entry():
    from effx_lab._validate import check_int_sequence

    assert check_int_sequence("sizes", [8, 64]) == (8, 64)
    assert check_int_sequence("sizes", (0,), min_value=0) == (0,)
    for bad in ([], "8", 8, None):
        with pytest.raises(TypeError, match="sizes must be a non-empty sequence of ints"):
            check_int_sequence("sizes", bad)
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        check_int_sequence("sizes", [8, 0])
