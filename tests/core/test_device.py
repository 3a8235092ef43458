from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from effx_lab import device


def test_triton_interpreter_is_on_without_gpu():
    if device.has_cuda():
        pytest.skip("GPU present: kernels compile for real")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert device.triton_mode() in ("interpreter", "unavailable")


def test_triton_kernel_runs_in_this_process():
    """A real @triton.jit kernel, defined after effx_lab was imported, runs (interpreter on CPU)."""
    triton = pytest.importorskip("triton", exc_type=ImportError)
    import triton.language as tl

    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)

    dev = device.torch_device()
    x = torch.arange(37, dtype=torch.float32, device=dev)
    y = torch.ones(37, device=dev)
    out = torch.empty_like(x)
    add_kernel[(triton.cdiv(37, 16),)](x, y, out, 37, BLOCK=16)
    torch.testing.assert_close(out, x + 1)


def test_summary_is_one_line_naming_device_and_versions():
    s = device.summary()
    assert "\n" not in s
    assert torch.__version__ in s
    assert ("GPU" in s) or ("CPU" in s and "no GPU" in s)


def test_info_fields():
    d = device.info()
    assert d.kind in ("cpu", "cuda")
    assert d.cpu_cores >= 1
    assert d.to_dict()["torch_version"] == torch.__version__
    assert (d.capability is None) == (d.kind == "cpu")


def test_gates_print_reason_when_unavailable(capsys):
    if device.has_cuda():
        pytest.skip("gating reasons are for machines without the feature")
    assert device.supports("sparse_2to4") is False
    assert device.gate("sparse_2to4") is False
    out = capsys.readouterr().out
    assert "sparse_2to4" in out and "sm_80" in out and "T4" in out
    assert device.gate("bf16") is False
    assert "no CUDA GPU" in capsys.readouterr().out


def test_feature_names_are_validated():
    with pytest.raises(ValueError, match="feature must be one of"):
        device.supports("warp_drive")
    with pytest.raises(TypeError, match="feature must be a str"):
        device.gate(80)


def test_seed_everything_is_reproducible():
    a = device.seed_everything(3)
    ta = torch.rand(3)
    b = device.seed_everything(3)
    tb = torch.rand(3)
    assert np.array_equal(a.random(4), b.random(4))
    assert torch.equal(ta, tb)
    with pytest.raises(ValueError, match="seed"):
        device.seed_everything(-1)
    with pytest.raises(TypeError, match="seed"):
        device.seed_everything(1.5)


def test_colab_detection(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert device.is_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101")
    assert device.is_colab() is True


def test_resolve_torch_device():
    import torch

    assert device.resolve_torch_device("cpu") == torch.device("cpu")
    assert device.resolve_torch_device(torch.device("cpu")).type == "cpu"
    assert device.resolve_torch_device(None) == device.torch_device()
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        device.resolve_torch_device("tpu")
    with pytest.raises(TypeError, match="device must be None"):
        device.resolve_torch_device(3)
    if not device.has_cuda():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            device.resolve_torch_device("cuda")


def test_short_summary_names_the_device_in_a_few_words():
    s = device.short_summary()
    assert "\n" not in s and " · " not in s
    if device.has_cuda():
        assert s.startswith("GPU ") and "sm_" in s
    else:
        assert s == f"CPU {device.cpu_name()} ({os.cpu_count() or 1} cores)"


def test_mps_is_never_chosen_but_mentioned(monkeypatch):
    """Apple silicon: MPS has no float64, so the course stays on the CPU and says how to opt in."""
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.has_mps() is True
    assert device.torch_device() == torch.device("cpu")
    assert device.resolve_torch_device(None) == torch.device("cpu")
    s = device.summary()
    assert "MPS present but not used: the course runs on the CPU (MPS has no float64, which its checks need)" in s
    assert "\n" not in s


def test_no_mps_note_without_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.has_mps() is False
    assert "MPS" not in device.summary()


def _double_plus_one(x):
    return x * 2 + 1


def test_compile_or_eager_without_a_compiler_returns_the_function_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    monkeypatch.setattr(device.shutil, "which", lambda name: None)  # no C++ compiler anywhere
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile must not be called"))
    fn = device.compile_or_eager(_double_plus_one)
    assert fn is _double_plus_one
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "C++ compiler" in out and "_double_plus_one" in out and "eagerly" in out
    assert "g++" in out  # names the compilers it looked for


def test_compile_or_eager_looks_for_the_compiler_inductor_is_configured_with(monkeypatch, capsys):
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "my-special-cxx"))
    seen = []
    monkeypatch.setattr(
        device.shutil, "which", lambda name: seen.append(name) or (name if name == "my-special-cxx" else None)
    )
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    fn = device.compile_or_eager(_double_plus_one, mode="reduce-overhead")
    assert seen[0] == "my-special-cxx"
    assert calls == [{"mode": "reduce-overhead"}]  # kwargs reach torch.compile
    assert fn(torch.tensor(2.0)).item() == 5.0
    assert capsys.readouterr().out == ""


def test_compile_or_eager_falls_back_when_the_first_compiled_call_fails(monkeypatch, capsys):
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    monkeypatch.setattr(device.shutil, "which", lambda name: f"/usr/bin/{name}")
    attempts = []

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            attempts.append(args)
            raise RuntimeError("InductorError: cc1plus: fatal error\nmore lines")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    fn = device.compile_or_eager(_double_plus_one)
    x = torch.arange(3.0)
    assert torch.equal(fn(x), x * 2 + 1)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "first call" in out and "RuntimeError" in out and "cc1plus" in out
    assert torch.equal(fn(x), x * 2 + 1)  # from now on eager, without trying to compile again
    assert len(attempts) == 1 and capsys.readouterr().out == ""


def test_compile_or_eager_raises_the_callers_own_error(monkeypatch, capsys):
    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    monkeypatch.setattr(device.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled" = the function: same error

    def needs_positive(x):
        if x <= 0:
            raise ValueError("x must be positive")
        return x

    fn = device.compile_or_eager(needs_positive)
    with pytest.raises(ValueError, match="x must be positive"):
        fn(-1)
    assert capsys.readouterr().out == ""  # not blamed on the compiler
    assert fn(2) == 2


def test_compile_or_eager_really_compiles_with_a_backend_that_needs_no_compiler():
    fn = device.compile_or_eager(_double_plus_one, backend="eager")  # TorchDynamo only: no C++ compiler needed
    assert fn is not _double_plus_one
    x = torch.randn(4)
    torch.testing.assert_close(fn(x), x * 2 + 1)
    torch.testing.assert_close(fn(x), x * 2 + 1)


def test_compile_or_eager_validates_fn():
    with pytest.raises(TypeError, match="fn must be a callable"):
        device.compile_or_eager(42)


def test_triton_mode_is_unavailable_when_the_import_failed(monkeypatch):
    """An installed Triton that fails to import (as the kernel modules found out) is not a usable Triton."""
    import types

    monkeypatch.setitem(sys.modules, "effx_lab._triton", types.SimpleNamespace(IMPORT_ERROR="hidden for a test"))
    assert device.triton_mode() == "unavailable"
    assert "(unavailable)" in device.summary() or "Triton not installed" in device.summary()


def test_dot_dtype_keeps_the_input_dtype_except_bf16_interpreted():
    """The operand dtype the course's kernels give ``tl.dot``: bf16 becomes float32 only
    under the CPU interpreter (whose tl.dot multiplies bf16's raw bits)."""
    pytest.importorskip("triton", exc_type=ImportError)
    from effx_lab import _triton
    from effx_lab.sparse.kernels import _bsr_matmul_kernel as kernel

    tl = _triton.tl
    assert _triton.dot_dtype(torch.float16, kernel) == tl.float16
    assert _triton.dot_dtype(torch.float32, kernel) == tl.float32
    interpreted = _triton.is_interpreted(kernel)
    want = tl.float32 if interpreted else tl.bfloat16
    assert _triton.dot_dtype(torch.bfloat16, kernel) == want
    with pytest.raises(TypeError, match="dtype must be torch.float16, bfloat16 or float32"):
        _triton.dot_dtype(torch.float64, kernel)
