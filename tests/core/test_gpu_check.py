"""Tests of effx_lab.gpu_check: the one command for a GPU must not rot while nobody has one.

* the dry run (``python -m effx_lab.gpu_check --dry-run``) runs once in a subprocess, exactly as a user would,
  and its JSON must have every section with sensible fields;
* the parsers of pytest's output, the kernel-vs-library ratios and the table are tested on canned inputs,
  GPU-shaped ones included (a T4 whose int8 GEMM falls back to torch, an H100 report);
* the GPU-only branches that need no GPU (a real pytest run with JUnit XML and a time box, a notebook under
  nbval, the feature gates of an sm_75 card, failure isolation of the steps) run here on small fakes.
"""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab import gpu_check as G

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {"quantize_rows", "dequantize_rows", "quantize_groups", "int8_gemm", "w4a16_matmul", "w8a16_matmul",
           "mixed_chunk_attention_triton", "block_sparse_matmul_triton", "nm_matmul_triton",
           "moe_grouped_triton", "torch_ops.moe_grouped"}  # fmt: skip


def _triton_runs_here() -> bool:
    from effx_lab.quant import kernels

    return kernels.why_unavailable() is None


# ============================================================================ the dry run, end to end
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    t0 = time.monotonic()
    proc = subprocess.run(
        # twice the dry run's default budget: these tests check that every step ran,
        # and a busy 2-core machine (CI beside other jobs) runs each step slower
        [sys.executable, "-m", "effx_lab.gpu_check", "--dry-run", "--out", str(out),
         "--budget", str(2 * G.DEFAULT_BUDGET_S["dry"])],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    files = sorted(out.glob("gpu_check-*.json"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert len(files) == 1, (list(out.iterdir()), proc.stdout[-2000:])
    return json.loads(files[0].read_text()), proc.stdout, wall


@pytest.mark.slow  # the dry run: ~20 s on an idle 2-core CPU, shared by these tests
def test_dry_run_writes_every_section(dry_run):
    payload, stdout, _ = dry_run
    assert payload["name"] == "gpu_check" and payload["device"] and payload["torch_version"]
    res = payload["results"]
    assert res["mode"] == "dry-run"
    assert set(G.STEPS) | {"environment", "options", "summary"} <= set(res)
    for step in G.STEPS:
        assert res[step]["status"] in ("ok", "skipped"), (step, res[step])
        assert res[step]["seconds"] >= 0
    summ = res["summary"]
    assert summ["exit_code"] == 0 and summ["failed_steps"] == [] and summ["failed_items"] == []
    assert 0 < summ["total_s"] < 300
    # the table
    assert "kernel vs torch twin" in stdout or not _triton_runs_here()
    assert "exit code 0" in stdout and str(payload["device"]) not in ("", None)


@pytest.mark.slow  # the dry run: ~20 s on an idle 2-core CPU, shared by these tests
def test_dry_run_environment(dry_run):
    env = dry_run[0]["results"]["environment"]
    assert env["kind"] == "cpu" and env["capability"] is None and env["gpu"] is None
    assert env["torch_version"] and env["triton_mode"] in ("interpreter", "unavailable")
    assert set(env["features"]) >= {"bf16", "triton_int8_dot", "cuda"}
    for name, f in env["features"].items():
        assert f["supported"] is False and "no CUDA GPU" in f["reason"], name


@pytest.mark.slow  # the dry run: ~20 s on an idle 2-core CPU, shared by these tests
def test_dry_run_collects_the_gpu_tests(dry_run):
    tests = dry_run[0]["results"]["tests"]
    collect, kernel_files = tests["runs"]
    assert collect["status"] == "ok" and "--collect-only" in collect["cmd"] and "-m gpu" in collect["cmd"]
    assert collect["counts"]["collected"] >= 1 and collect["counts"]["total"] > collect["counts"]["collected"]
    assert len(collect["ids"]) == collect["counts"]["collected"]
    assert all(i.startswith("tests/") and "::" in i for i in collect["ids"])
    assert kernel_files["status"] == "skipped" and "dry run" in kernel_files["reason"]


@pytest.mark.slow  # the dry run: ~20 s on an idle 2-core CPU, shared by these tests
def test_dry_run_kernels_against_torch(dry_run):
    sec = dry_run[0]["results"]["kernels"]
    checks = sec["checks"]
    if not _triton_runs_here():  # every check is skipped with the module's reason
        assert all(c["status"] == "skipped" and c["reason"] for c in checks)
        return
    assert sec["triton_mode"] == "interpreter" and sec["int8_gemm_backend"] == "interpreter"
    assert {c["kernel"] for c in checks} == KERNELS
    for c in checks:
        if c["dtype"] == "bfloat16":  # gated: no GPU, so no native bfloat16
            assert c["status"] == "skipped" and "bf16" in c["reason"], c
            continue
        assert c["status"] == "ok", c
        assert math.isfinite(c["max_abs_err"]) and c["max_abs_err"] >= 0 and c["first_call_s"] > 0
        assert c["twin"] and c["tolerance"] is not None
        if c["tolerance"] != "exact":
            assert 0 <= c["rel_err_vs_fp64"] <= c["tolerance"]
    backends = {c.get("backend") for c in checks if c["kernel"] == "int8_gemm"}
    assert backends == {"interpreter", None}  # None: the gated bfloat16 row


@pytest.mark.slow  # the dry run: ~20 s on an idle 2-core CPU, shared by these tests
def test_dry_run_benchmarks(dry_run):
    sec = dry_run[0]["results"]["benchmarks"]
    for chapter in ("ch01", "ch02", "ch03", "ch07"):
        item = sec["chapters"][chapter]
        assert item["status"] == "ok" and item["seconds"] > 0, item
        assert item["function"].endswith("run(quick=True)") and item["result"]["quick"] is True
    assert sec["triton_half_dtype"] == "float16" and "bf16" in sec["triton_half_dtype_reason"]
    meas = sec["measurements"]
    assert set(meas) == {"decode_gemv", "int8_gemm", "flash_triton_vs_torch", "flash_split", "prune_sparse",
                         "nm_sparse", "moe"}  # fmt: skip
    ratios = sec["ratios"]
    assert len(ratios) >= 5
    for r in ratios:
        assert r["name"] and r["source"] and r["status"] in ("ok", "skipped")
        if r["status"] == "ok":
            assert r["speedup"] > 0 and r["kernel_ms"] > 0 and r["library_ms"] > 0
            assert math.isclose(r["speedup"], r["library_ms"] / r["kernel_ms"], rel_tol=1e-9)
            assert "interpreter" in (r["note"] or "")  # dry-run times are labelled as meaningless
        else:
            assert r["reason"]
    if _triton_runs_here():
        assert all(meas[k]["status"] == "ok" for k in meas), meas
        names = {r["name"] for r in ratios if r["status"] == "ok"}
        assert "mixed chunk attention: Triton vs torch" in names
        assert "int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue" in names
        assert meas["int8_gemm"]["result"]["backend"] == "interpreter"
        assert meas["flash_triton_vs_torch"]["result"]["max_abs_diff"] < 0.05
        # the Triton FLASH kernel split across chunks vs unsplit, at every (batch, n) of the dry sizes
        split = meas["flash_split"]["result"]
        cfg = G.SIZES["dry"]["flash_split"]
        assert [(r["batch"], r["n"]) for r in split["rows"]] == [(b, n) for b in cfg["batches"] for n in cfg["ns"]]
        for r in split["rows"]:
            assert r["unsplit_s"] > 0 and r["split_s"] > 0 and r["auto_splits"] is False  # no SMs here
            assert r["max_abs_diff"] <= 1e-2 * r["max_abs_out"]  # float16 outputs of the same sums
            assert f"split vs unsplit, batch {r['batch']} n={r['n']}" in " ".join(sorted(names))
        # chapter 3: the block-sparse Triton kernel and torch.sparse CSR against the dense matmul
        sparse = meas["prune_sparse"]["result"]
        cfg = G.SIZES["dry"]["prune_sparse"]
        assert sparse["config"]["dtype"] == "float32"  # on a CPU the code path runs in float32
        assert [(r["tokens"], r["density"]) for r in sparse["rows"]] == [
            (t, d) for d in cfg["densities"] for t in cfg["tokens"]]  # fmt: skip
        for r in sparse["rows"]:
            assert set(r["times_s"]) == {"dense", "triton_bsr", "torch_csr"}, r
            assert all(e < 1e-5 for e in r["rel_err_vs_fp64"].values()), r
            where = f"density {r['density']:g}, M={r['tokens']}"
            assert f"block-sparse Triton vs dense cuBLAS, {where}" in names
            assert f"torch.sparse CSR vs dense cuBLAS, {where}" in names
        # chapter 4: the 2:4 Triton kernel against the dense matmul; semi-structured needs an sm_80 GPU
        nm = meas["nm_sparse"]["result"]
        cfg = G.SIZES["dry"]["nm_bench"]
        assert nm["config"]["dtype"] == "float32" and "1.78x" in nm["published"]
        assert "no CUDA GPU" in nm["notes"]["semi_structured"] or "cpu" in nm["notes"]["semi_structured"]
        assert [(r["width"], r["tokens"]) for r in nm["rows"]] == [
            (w, t) for w in cfg["widths"] for t in cfg["tokens"]]  # fmt: skip
        for r in nm["rows"]:
            assert set(r["times_s"]) == {"dense", "triton_nm"}, r
            assert all(e < 1e-5 for e in r["rel_err_vs_fp64"].values()), r
            assert r["compressed_over_dense_bytes"] == pytest.approx(0.5 + 1 / 32)  # float32 values
            where = f"N=K={r['width']}, M={r['tokens']}"
            assert any(n.startswith(f"2:4 Triton (ours) vs dense cuBLAS, {where}") for n in names)
        skipped = {r["name"]: r for r in ratios if r["status"] == "skipped"}
        semi = [n for n in skipped if n.startswith("2:4 semi-structured vs dense cuBLAS")]
        assert len(semi) == len(nm["rows"]) and all(skipped[n]["reason"] for n in semi)
        # chapter 5: the MoE FFN five ways at every number of experts of the dry sizes
        moe = meas["moe"]["result"]
        cfg = G.SIZES["dry"]["moe_bench"]
        assert moe["config"]["dtype"] == "float32" and "5x" in moe["goals"]
        assert [r["experts"] for r in moe["rows"]] == list(cfg["experts"])
        for r in moe["rows"]:
            assert set(r["times_s"]) == {"cublas_loop", "einsum", "dense_active", "grouped_mm", "triton"}, r
            assert all(e < 1e-5 for e in r["rel_err_vs_fp64"].values()), r
            assert 0 <= r["dropped_fraction"] < 1 and 0 <= r["padding_fraction"] < 1
            where = f"MoE E={r['experts']}: "
            assert where + "Triton grouped GEMM (ours) vs one-hot einsums" in names
            assert where + "sort + loop of cuBLAS calls (ours) vs F.grouped_mm" in names


@pytest.mark.slow  # the dry run: ~20 s on an idle 2-core CPU, shared by these tests
def test_dry_run_notebooks_are_collected(dry_run):
    sec = dry_run[0]["results"]["notebooks"]
    if sec["status"] == "skipped":  # nbval missing, or no notebooks in this checkout
        assert sec["reason"]
        return
    assert sec["mode"] == "collect-only"
    (run,) = sec["runs"]
    assert run["status"] == "ok" and run["counts"]["collected"] > 0 and "--nbval-lax" in run["cmd"]


# ============================================================================ pytest output parsers
@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 failed, 2 passed, 3 skipped, 4 deselected, 1 warning in 1.23s",
         {"failed": 1, "passed": 2, "skipped": 3, "deselected": 4, "warnings": 1, "errors": 0, "seconds": 1.23}),
        ("===== 5 passed in 0.50s =====", {"passed": 5, "failed": 0, "seconds": 0.5}),
        ("......\n2 errors, 1 xfailed, 1 xpassed in 2.00s", {"errors": 2, "xfailed": 1, "xpassed": 1, "passed": 0}),
        ("no tests ran in 0.01s", {"passed": 0, "failed": 0, "seconds": 0.01}),
        ("5 deselected in 0.10s", {"deselected": 5, "passed": 0}),
        ("tests/a.py::t\n\n2/2234 tests collected (2232 deselected) in 7.45s",
         {"collected": 2, "total": 2234, "deselected": 2232, "seconds": 7.45}),
        ("135 tests collected in 3.93s", {"collected": 135, "total": 135, "deselected": 0}),
        ("1 test collected in 0.2s", {"collected": 1}),
    ],
)  # fmt: skip
def test_parse_pytest_summary(text, expected):
    got = G.parse_pytest_summary(text)
    assert got is not None
    for key, value in expected.items():
        assert got[key] == value, (key, got)


def test_parse_pytest_summary_without_summary():
    assert G.parse_pytest_summary("") is None
    assert G.parse_pytest_summary("Traceback (most recent call last):\n  boom") is None
    with pytest.raises(TypeError, match="text"):
        G.parse_pytest_summary(None)


def test_parse_pytest_progress():
    text = "tests/test_a.py ..F.s                                  [ 40%]\n.E.xX   [100%]\nsome other line 3.5\n"
    got = G.parse_pytest_progress(text)
    assert got == {"passed": 5, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 1, "xpassed": 1}


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6" time="3.5">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_ok2[fp16]" time="0.1"/>
<testcase classname="tests.test_a" name="test_bad" time="0.1"><failure message="assert 1 == 2">...</failure></testcase>
<testcase classname="tests.test_a" name="test_setup" time="0.1"><error message="fixture">...</error></testcase>
<testcase classname="tests.test_b" name="test_gpu" time="0"><skipped type="skip" message="needs CUDA"/></testcase>
<testcase classname="tests.test_b" name="test_gpu2" time="0"><skipped type="skip" message="needs CUDA"/></testcase>
</testsuite></testsuites>"""


def test_parse_junit_xml_text_and_file(tmp_path):
    got = G.parse_junit_xml(JUNIT)
    assert (got["tests"], got["passed"], got["failed"], got["errors"], got["skipped"]) == (6, 2, 1, 1, 2)
    assert got["failed_ids"] == ["tests.test_a::test_bad", "tests.test_a::test_setup"]
    assert got["skip_reasons"] == {"needs CUDA": 2} and got["seconds"] == 3.5
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    assert G.parse_junit_xml(path) == got and G.parse_junit_xml(str(path)) == got


# ============================================================================ GPU branches, on fakes
@pytest.fixture
def fake_repo(tmp_path):
    """A checkout with a GPU-marked test file and the two kernel test files (pass, fail, skip)."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    (tests / "test_marked.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    pass\n\ndef test_cpu():\n    pass\n"
    )
    (tests / "ch02_quant").mkdir()
    (tests / "ch07_flash").mkdir()
    (tests / "ch02_quant" / "test_quant_kernels.py").write_text(
        "import pytest\n\ndef test_a():\n    pass\n\ndef test_b():\n    assert 1 == 2\n\n"
        "def test_c():\n    pytest.skip('needs sm_80')\n"
    )
    (tests / "ch07_flash" / "test_flash_kernels.py").write_text("def test_d():\n    pass\n")
    return tmp_path


def _ctx(root: Path, dry_run: bool, seconds: float = 60.0) -> G.Context:
    import torch

    ctx = G.Context(dry_run=dry_run, device=torch.device("cpu"), sizes=G.SIZES["dry"], notebooks=False, root=root,
                    log=lambda _msg: None)  # fmt: skip
    ctx.deadline = time.monotonic() + seconds
    return ctx


def test_tests_step_gpu_branch_on_a_fake_repo(fake_repo):
    out: dict = {}
    G._tests_step(_ctx(fake_repo, dry_run=False), out)
    marked, kernel_files = out["runs"]
    assert marked["status"] == "ok" and marked["counts"]["passed"] == 1 and marked["counts"]["tests"] == 1
    assert kernel_files["status"] == "failed" and kernel_files["returncode"] == 1
    c = kernel_files["counts"]
    assert (c["passed"], c["failed"], c["skipped"]) == (2, 1, 1)
    assert kernel_files["failed_ids"] == ["tests.ch02_quant.test_quant_kernels::test_b"]
    assert "needs sm_80" in next(iter(kernel_files["skip_reasons"]))
    assert "test_b" in kernel_files["output_tail"] and "--junitxml=<tmp>" in kernel_files["cmd"]
    assert G._aggregate(out) == "failed"


def test_run_pytest_time_box_stops_the_run(tmp_path):
    (tmp_path / "test_slow.py").write_text(
        "import time\n\ndef test_fast():\n    pass\n\ndef test_slow():\n    time.sleep(60)\n"
    )
    t0 = time.monotonic()
    res = G.run_pytest(["-q", "test_slow.py"], name="slow", timeout=6.0, cwd=tmp_path)
    assert time.monotonic() - t0 < 30
    assert res["status"] == "timeout" and "time box" in res["error"]
    assert res["counts"]["passed"] == 1 and "partial" in res["counts_note"]


def test_tests_step_without_tests_folder(tmp_path):
    out: dict = {}
    G._tests_step(_ctx(tmp_path, dry_run=False), out)
    assert out["status"] == "skipped" and "no tests/ folder" in out["reason"]


def test_notebooks_step_runs_a_notebook_under_nbval(tmp_path, monkeypatch):
    pytest.importorskip("nbval")
    pytest.importorskip("ipykernel")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
                     "source": ["x = 1 + 1\n", "assert x == 2"]}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "ok.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(G, "NOTEBOOKS", ("nb/ok.ipynb", "nb/missing.ipynb"))
    monkeypatch.setattr(G, "NOTEBOOK_MIN_S", 5.0)
    ctx = _ctx(tmp_path, dry_run=False, seconds=120.0)
    ctx.notebooks = True
    out: dict = {}
    G._notebooks_step(ctx, out)
    assert out["mode"] == "run"
    (run,) = out["runs"]
    assert run["status"] == "ok", run.get("output_tail")
    assert run["counts"]["passed"] == 1 and run["name"] == "nb/ok.ipynb"
    # with too little time left the notebook is skipped, with the reason
    ctx.deadline = time.monotonic() + 1.0
    out = {}
    G._notebooks_step(ctx, out)
    assert out["runs"][0]["status"] == "skipped" and "time budget" in out["runs"][0]["reason"]


def test_feature_gates_of_a_t4(monkeypatch):
    from effx_lab import device

    monkeypatch.setattr(device, "has_cuda", lambda: True)
    monkeypatch.setattr(device, "capability", lambda: (7, 5))
    why = G.feature_reason("bf16")
    assert why.startswith("this GPU is sm_75, bf16 needs sm_80") and "T4" in why
    assert "sm_80" in G.feature_reason("triton_int8_dot") and G.feature_reason("fp16_tensor_cores") is None
    assert G._half_dtype() == __import__("torch").float16
    monkeypatch.setattr(device, "capability", lambda: (9, 0))
    assert G.feature_reason("bf16") is None and G._half_dtype() == __import__("torch").bfloat16


def test_steps_are_failure_isolated_and_time_boxed(monkeypatch):
    def boom(ctx, out):
        raise RuntimeError("kernel exploded\nsecond line")

    def slow(ctx, out):
        out["checks"] = [{"kernel": "k", "status": "ok"}]
        time.sleep(30)

    def fine(ctx, out):
        out["runs"] = [{"name": "r", "status": "ok", "counts": {"passed": 1}}]

    monkeypatch.setattr(G, "_STEP_FUNCS", {"tests": fine, "kernels": boom, "benchmarks": slow, "notebooks": fine})
    monkeypatch.setattr(G, "_BACKGROUND", {})
    monkeypatch.setattr(G, "ALARM_GRACE_S", 0.0)
    t0 = time.monotonic()
    report = G.run_check(dry_run=True, budget_s=10.0, log=lambda _msg: None)
    assert time.monotonic() - t0 < 20
    assert report["tests"]["status"] == "ok" and report["notebooks"]["status"] == "ok"
    assert report["kernels"]["status"] == "failed" and report["kernels"]["error"] == "RuntimeError: kernel exploded"
    assert report["benchmarks"]["status"] == "timeout"
    assert report["summary"]["exit_code"] == 1
    assert set(report["summary"]["failed_steps"]) == {"kernels", "benchmarks"}
    text = G.format_report(report)
    assert "FAILED:" in text and "kernel exploded" in text and "exit code 1" in text


def test_steps_option_runs_a_subset(monkeypatch):
    called = []
    monkeypatch.setattr(G, "_STEP_FUNCS", {s: (lambda ctx, out, s=s: called.append(s)) for s in G.STEPS})
    monkeypatch.setattr(G, "_BACKGROUND", {})
    report = G.run_check(dry_run=True, steps=["kernels"], budget_s=10.0, log=lambda _msg: None)
    assert called == ["kernels"] and report["options"]["steps"] == ["kernels"]
    assert report["tests"]["status"] == "skipped" and "--steps" in report["tests"]["reason"]
    assert report["summary"]["exit_code"] == 0


# ============================================================================ ratios and the table
def _gemv(paths: dict, skipped: dict | None = None) -> dict:
    rows = {name: {"ms": ms, "act_dtype": "float16", "rel_err_vs_dequant": 1e-4} for name, ms in paths.items()}
    return {"config": {"n": 4096, "k": 4096, "group_size": 128}, "skipped": skipped or {}, "paths": rows}


def test_bench_ratios_on_an_h100_like_result():
    meas = {
        "decode_gemv": _gemv({"fp32": 0.2, "fp16": 0.1, "int4_triton": 0.04, "int8_triton": 0.06,
                              "int4_torch_lib": 0.05, "int8_torch_lib": 0.08}),  # fmt: skip
        "int8_gemm": {"config": {"m": 4096, "n": 4096, "k": 4096}, "backend": "triton", "max_abs_err": 0.0,
                      "times_s": {"fp16_matmul": 2e-3, "triton_int8_gemm": 1e-3, "torch_int_mm": 0.8e-3,
                                  "torch_int_mm_scaled": 1.2e-3}},  # fmt: skip
        "flash_triton_vs_torch": {"config": {"n": 4096, "dtype": "bfloat16"}, "max_abs_diff": 0.01,
                                  "times_s": {"torch": 3e-3, "triton": 1e-3, "triton_global": 0.5e-3},
                                  "fla": "flash-linear-attention is not installed"},  # fmt: skip
        "flash_split": {"config": {"s": 128, "e": 512, "chunk_size": 256, "dtype": "bfloat16", "causal": True},
                        "rows": [{"batch": 1, "n": 4096, "unsplit_s": 2e-3, "split_s": 0.25e-3, "auto_splits": True,
                                  "max_abs_diff": 0.01, "max_abs_out": 30.0},
                                 {"batch": 32, "n": 8192, "unsplit_s": 4e-3, "split_s": 5e-3, "auto_splits": False,
                                  "max_abs_diff": 0.01, "max_abs_out": 30.0}]},  # fmt: skip
    }
    rows = {r["name"]: r for r in G.bench_ratios(meas, interpreted=False)}
    small = rows["mixed chunk Triton: split vs unsplit, batch 1 n=4096"]
    assert small["speedup"] == pytest.approx(8.0) and small["kernel"] == "split" and small["library"] == "unsplit"
    assert small["note"] == "split=None splits here: yes" and "e=512 c=256 bfloat16" in small["source"]
    large = rows["mixed chunk Triton: split vs unsplit, batch 32 n=8192"]
    assert large["speedup"] == pytest.approx(0.8) and large["note"] == "split=None splits here: no"
    assert rows["decode GEMV: Triton w4a16 vs fp16 F.linear"]["speedup"] == pytest.approx(2.5)
    assert rows["decode GEMV: Triton w8a16 vs torch._weight_int8pack_mm"]["speedup"] == pytest.approx(8 / 6)
    assert rows["int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue"]["speedup"] == pytest.approx(1.2)
    assert rows["int8 GEMM: Triton int8_gemm vs raw torch._int_mm (int32 out)"]["speedup"] == pytest.approx(0.8)
    assert rows["mixed chunk attention: Triton vs torch"]["speedup"] == pytest.approx(3.0)
    fla = rows["linear (global) part: Triton vs fla chunk_linear_attn"]
    assert fla["status"] == "skipped" and "not installed" in fla["reason"]
    assert all(r["note"] is None or "interpreter" not in r["note"] for r in rows.values())


def test_bench_ratios_of_the_block_sparse_measurement():
    meas = {
        "prune_sparse": {
            "config": {"n": 4096, "k": 4096, "block": 32, "dtype": "float16"},
            "rows": [{"tokens": 1, "density": 0.25, "times_s": {"dense": 40e-6, "triton_bsr": 20e-6},
                      "rel_err_vs_fp64": {"dense": 1e-4, "triton_bsr": 2e-4}},
                     {"tokens": 512, "density": 0.5, "times_s": {"dense": 1e-4, "triton_bsr": 2e-4,
                                                                 "torch_csr": 8e-4},
                      "rel_err_vs_fp64": {"dense": 1e-4, "triton_bsr": 2e-4, "torch_csr": 3e-4}}],
            "notes": {"torch_csr": "RuntimeError: addmm: no half CSR here"},
        },
    }  # fmt: skip
    rows = {r["name"]: r for r in G.bench_ratios(meas, interpreted=False)}
    fast = rows["block-sparse Triton vs dense cuBLAS, density 0.25, M=1"]
    assert fast["status"] == "ok" and fast["speedup"] == pytest.approx(2.0) and fast["library"] == "dense"
    assert "4096x4096 block 32 float16" in fast["source"] and fast["errors"]["kernel_rel_err_vs_fp64"] == 2e-4
    missing = rows["torch.sparse CSR vs dense cuBLAS, density 0.25, M=1"]
    assert missing["status"] == "skipped" and "no half CSR" in missing["reason"]
    assert rows["torch.sparse CSR vs dense cuBLAS, density 0.5, M=512"]["speedup"] == pytest.approx(0.125)
    assert rows["block-sparse Triton vs dense cuBLAS, density 0.5, M=512"]["speedup"] == pytest.approx(0.5)
    rows = G.bench_ratios({"prune_sparse": {"skipped": "no CUDA GPU"}}, interpreted=False)
    assert [(r["name"], r["status"], r["reason"]) for r in rows] == [
        ("block-sparse Triton vs dense cuBLAS", "skipped", "no CUDA GPU")]


def test_bench_ratios_of_the_nm_measurement():
    meas = {
        "nm_sparse": {
            "config": {"widths": [4096], "tokens": [1, 2048], "dtype": "float16"},
            "rows": [{"width": 4096, "tokens": 1,
                      "times_s": {"dense": 30e-6, "triton_nm": 20e-6, "semi_structured": 25e-6},
                      "rel_err_vs_fp64": {"dense": 1e-4, "triton_nm": 2e-4, "semi_structured": 3e-4}},
                     {"width": 4096, "tokens": 2048, "times_s": {"dense": 1e-3, "triton_nm": 2e-3},
                      "rel_err_vs_fp64": {"dense": 1e-4, "triton_nm": 2e-4}}],
            "notes": {"semi_structured": "RuntimeError: cuSPARSELt failed"},
            "published": G.NM_PUBLISHED,
        },
    }  # fmt: skip
    rows = {r["name"]: r for r in G.bench_ratios(meas, interpreted=False)}
    ours = rows["2:4 Triton (ours) vs dense cuBLAS, N=K=4096, M=1 (decode)"]
    assert ours["status"] == "ok" and ours["speedup"] == pytest.approx(1.5) and ours["library"] == "dense"
    assert "1.78x" in ours["note"] and ours["errors"]["kernel_rel_err_vs_fp64"] == 2e-4
    semi = rows["2:4 semi-structured vs dense cuBLAS, N=K=4096, M=1 (decode)"]
    assert semi["speedup"] == pytest.approx(1.2)
    missing = rows["2:4 semi-structured vs dense cuBLAS, N=K=4096, M=2048 (prefill)"]
    assert missing["status"] == "skipped" and "cuSPARSELt failed" in missing["reason"]
    assert rows["2:4 Triton (ours) vs dense cuBLAS, N=K=4096, M=2048 (prefill)"]["speedup"] == pytest.approx(0.5)
    rows = G.bench_ratios({"nm_sparse": {"skipped": "no Triton"}}, interpreted=False)
    assert [(r["name"], r["status"], r["reason"]) for r in rows] == [
        ("2:4 Triton (ours) vs dense cuBLAS", "skipped", "no Triton")]
    assert "0.5625" in G.NM_PUBLISHED and "1.24x" in G.NM_PUBLISHED


def test_bench_ratios_of_the_moe_measurement():
    meas = {
        "moe": {
            "config": {"tokens": 4096, "d": 512, "f": 1024, "experts": [8, 64], "capacity_factor": 1.25,
                       "dtype": "bfloat16"},
            "rows": [{"experts": 64, "capacity": 80, "dropped_fraction": 0.05, "padding_fraction": 0.24,
                      "times_s": {"cublas_loop": 2e-3, "einsum": 10e-3, "dense_active": 0.2e-3, "triton": 0.25e-3},
                      "rel_err_vs_fp64": {"cublas_loop": 1e-3, "einsum": 2e-3, "triton": 3e-3}}],
            "notes": {"grouped_mm": "RuntimeError: grouped gemm is only supported on SM90"},
            "goals": G.MOE_GOALS,
        },
    }  # fmt: skip
    rows = {r["name"]: r for r in G.bench_ratios(meas, interpreted=False)}
    assert len(rows) == 6
    ours = rows["MoE E=64: Triton grouped GEMM (ours) vs one-hot einsums"]
    assert ours["status"] == "ok" and ours["speedup"] == pytest.approx(40.0) and ours["library"] == "einsum"
    assert "padding 24%" in ours["note"] and ours["errors"]["kernel_rel_err_vs_fp64"] == 3e-3
    loop = rows["MoE E=64: sort + loop of cuBLAS calls (ours) vs one-hot einsums"]
    assert loop["speedup"] == pytest.approx(5.0)
    dense = rows["MoE E=64: Triton grouped GEMM (ours) vs dense FFN, same active parameters"]
    assert dense["speedup"] == pytest.approx(0.8) and dense["note"] is None
    missing = rows["MoE E=64: Triton grouped GEMM (ours) vs F.grouped_mm"]
    assert missing["status"] == "skipped" and "only supported on SM90" in missing["reason"]
    rows = G.bench_ratios({"moe": {"skipped": "no Triton"}}, interpreted=True)
    assert [(r["name"], r["status"], r["reason"]) for r in rows] == [
        ("MoE: Triton grouped GEMM (ours) vs one-hot einsums", "skipped", "no Triton")]
    assert "1.5x" in G.MOE_GOALS


def test_bench_ratios_on_a_t4_like_result():
    why = "this GPU is sm_75, triton_int8_dot needs sm_80: Triton's int8 tl.dot fails on sm_75 (T4)"
    meas = {
        "decode_gemv": _gemv({"fp32": 0.2, "fp16": 0.1, "int4_triton": 0.05, "int8_triton": 0.07,
                              "int8_torch_lib": 0.09},
                             {"int4_torch_lib": "RuntimeError: _weight_int4pack_mm needs sm_80"}),  # fmt: skip
        "int8_gemm": {"config": {"m": 4096, "n": 4096, "k": 4096}, "backend": "torch", "max_abs_err": 0.0,
                      "times_s": {"fp16_matmul": 2e-3, "triton_int8_gemm": 4e-3, "torch_int_mm": 1e-3,
                                  "torch_int_mm_scaled": 1.5e-3}},  # fmt: skip
        "flash_triton_vs_torch": {"skipped": "no CUDA GPU"},
    }
    rows = {r["name"]: r for r in G.bench_ratios(meas, interpreted=False, int8_backend_reason=why)}
    tiny = rows["decode GEMV: Triton w4a16 vs torch int4 (tinygemm)"]
    assert tiny["status"] == "skipped" and "needs sm_80" in tiny["reason"]
    gated = rows["int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue"]
    assert gated["status"] == "skipped" and "torch fallback" in gated["reason"] and "sm_75" in gated["reason"]
    fallback = rows["int8 GEMM: int8_gemm's torch fallback vs torch._int_mm + epilogue"]
    assert fallback["status"] == "ok" and fallback["speedup"] == pytest.approx(1.5 / 4)
    assert rows["mixed chunk attention: Triton vs torch"]["reason"] == "no CUDA GPU"
    assert not any("split vs unsplit" in name for name in rows)  # not measured: no row
    meas["flash_split"] = {"skipped": "time budget: 5 s left, this needs about 20 s"}
    rows = {r["name"]: r for r in G.bench_ratios(meas, interpreted=False, int8_backend_reason=why)}
    assert rows["mixed chunk Triton: split vs unsplit"]["reason"].startswith("time budget")


def _h100_report() -> dict:
    return {
        "mode": "gpu",
        "environment": {"gpu": "NVIDIA H100 80GB HBM3", "capability": "sm_90", "torch_version": "2.5.1",
                        "torch_cuda_version": "12.4", "triton_version": "3.1.0", "triton_mode": "compiled",
                        "python_version": "3.11.7", "cpu": "x"},  # fmt: skip
        "tests": {"status": "failed", "seconds": 91.0, "runs": [
            {"name": "gpu-marked", "status": "ok", "seconds": 12.0,
             "counts": {"passed": 2, "failed": 0, "errors": 0, "skipped": 0}},
            {"name": "kernel test files", "status": "failed", "seconds": 79.0,
             "error": "pytest exited 1 (tests failed)",
             "counts": {"passed": 130, "failed": 1, "errors": 0, "skipped": 4}}]},  # fmt: skip
        "kernels": {"status": "ok", "seconds": 40.0, "triton_mode": "compiled", "int8_gemm_backend": "triton",
                    "checks": [
                        {"kernel": "quantize_rows", "dtype": "float16", "shape": "4096x4096", "status": "ok",
                         "max_abs_err": 0.0, "tolerance": "exact", "first_call_s": 1.25},
                        {"kernel": "w4a16_matmul", "dtype": "bfloat16", "shape": "M=1", "status": "ok",
                         "max_abs_err": 0.0039, "rel_err_vs_fp64": 0.0021, "tolerance": 0.03, "first_call_s": 2.0},
                        {"kernel": "int8_gemm", "dtype": "int32", "shape": "512x1024x1024", "status": "ok",
                         "backend": "triton", "max_abs_err": 0.0, "tolerance": "exact",
                         "first_call_s": 0.5}]},  # fmt: skip
        "benchmarks": {"status": "ok", "seconds": 80.0, "chapters": {"ch02": {"status": "ok", "seconds": 20.0}},
                       "measurements": {"int8_gemm": {"status": "ok", "seconds": 5.0}},
                       "ratios": [
                           {"name": "int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue", "status": "ok",
                            "speedup": 1.5, "kernel_ms": 1.0, "library_ms": 1.5, "errors": {"max_abs_err": 0.0},
                            "note": "backend: triton"},
                           {"name": "linear (global) part: Triton vs fla chunk_linear_attn", "status": "skipped",
                            "reason": "fla not installed", "errors": {}}]},  # fmt: skip
        "notebooks": {"status": "skipped", "seconds": 0.0, "reason": "not selected (--steps)"},
        "summary": {"total_s": 211.0, "exit_code": 1, "failed_items": ["tests: kernel test files: pytest exited 1"],
                    "skipped_items": ["benchmarks: ratio linear (global) part: fla not installed"]},  # fmt: skip
    }


def test_format_report_table():
    text = G.format_report(_h100_report(), json_path="bench_results/gpu_check-nvidia-h100-80gb-hbm3.json")
    lines = text.splitlines()
    assert "NVIDIA H100 80GB HBM3" in lines[0] and "compute capability sm_90" in lines[0]
    assert "torch 2.5.1 (CUDA 12.4)" in lines[1] and "triton 3.1.0 (compiled)" in lines[1]
    step_rows = {ln.split()[0]: ln for ln in lines if ln.split() and ln.split()[0] in G.STEPS}
    assert "gpu-marked: 2 passed" in step_rows["tests"]
    assert "kernel test files: 130 passed, 1 failed, 0 errors, 4 skipped in 79 s (failed)" in step_rows["tests"]
    assert " failed " in step_rows["tests"] and "91.0 s" in step_rows["tests"]
    assert "3 ok; int8_gemm backend: triton; Triton compiled" in step_rows["kernels"]
    assert "skipped: not selected (--steps)" in step_rows["notebooks"]
    assert any("int8_gemm [triton]" in ln and "exact" in ln and "0.50 s" in ln for ln in lines)
    assert any("w4a16_matmul" in ln and "0.0021" in ln and "0.03" in ln for ln in lines)
    assert any(ln.startswith("int8 GEMM: Triton int8_gemm vs torch._int_mm") and "1.50x" in ln for ln in lines)
    assert any(ln.startswith("linear (global) part") and "skipped" in ln for ln in lines)
    assert "  note: backend: triton" in lines
    assert "skipped:" in lines and "FAILED:" in lines
    assert lines[-1] == "total 211.0 s · exit code 1 · JSON bench_results/gpu_check-nvidia-h100-80gb-hbm3.json"


def test_format_report_survives_a_minimal_report():
    text = G.format_report({"summary": {"total_s": 1.0, "exit_code": 0}})
    assert "exit code 0" in text and "no GPU" in text


def test_skipped_items_are_grouped_by_reason():
    report = {"kernels": {"checks": [
        {"kernel": k, "dtype": "bfloat16", "shape": "s", "status": "skipped", "reason": "needs sm_80"}
        for k in ("a", "b", "c", "d", "e")] + [{"kernel": "f", "status": "skipped", "reason": "other"}]}}  # fmt: skip
    items = G._skipped_items(report)
    assert items == ["kernels: 5 items (a [bfloat16 s], b [bfloat16 s], c [bfloat16 s], d [bfloat16 s], ...): "
                     "needs sm_80", "kernels: f: other"]  # fmt: skip


# ============================================================================ the command line
def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert G.main(["--budget", "0"]) == 2
    assert "--budget must be between" in capsys.readouterr().err
    assert G.main(["--budget", "soon"]) == 2
    assert G.main(["--steps", "tests,magic"]) == 2
    assert "--steps must be" in capsys.readouterr().err
    assert G.main(["--steps", "tests,tests"]) == 2
    assert G.main(["--frobnicate"]) == 2
    a_file = tmp_path / "file.json"
    a_file.write_text("{}")
    assert G.main(["--dry-run", "--out", str(a_file)]) == 2
    assert "--out must be a folder" in capsys.readouterr().err
    assert G.main(["--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cli_without_gpu_points_to_dry_run(capsys):
    assert G.main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--dry-run" in err
    with pytest.raises(RuntimeError, match="--dry-run"):
        G.run_check(dry_run=False)


def test_module_prints_nothing_on_import(capsys):
    importlib.reload(G)
    assert capsys.readouterr() == ("", "")
