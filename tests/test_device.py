from __future__ import annotations

import os

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
    triton = pytest.importorskip("triton")
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
