"""The library baseline for 2:4 matmuls: PyTorch's semi-structured sparse tensors.

``torch.sparse.to_sparse_semi_structured`` stores a 2:4 weight for the **sparse tensor
cores** of NVIDIA Ampere (sm_80) and later, through cuSPARSELt (or CUTLASS where
cuSPARSELt is missing), and ``F.linear`` then runs the sparse ``mma.sp`` instruction:
half the multiply-adds *and* half the weight bytes, plus the metadata. It is what
:func:`effx_lab.nm.kernels.nm_matmul_triton` (ours, dense ``tl.dot`` on decompressed
tiles) is compared with in ``effx-lab gpu-check``.

* :func:`why_unavailable` says why it cannot run here (no CUDA, a GPU before sm_80, a
  dtype other than float16/bfloat16, a torch without it), or ``None``;
* :func:`to_semi_structured` makes the sparse weight from a 2:4 ``w (out, in)``;
* :func:`semi_structured_linear` is ``x @ W.T (+ bias)`` with it.

The library reorders the metadata for the hardware, unlike the logical layout of
:class:`~effx_lab.nm._format.NMCompressed`. Nothing here runs on a CPU: the functions
raise a ``RuntimeError`` carrying :func:`why_unavailable`'s sentence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from effx_lab._validate import describe

from .shapes import check_nm_weight

__all__ = [
    "DTYPES",
    "why_unavailable",
    "available",
    "min_shape",
    "to_semi_structured",
    "semi_structured_linear",
]

#: The dtypes the sparse tensor cores take for 2:4 in ``F.linear`` here.
DTYPES = (torch.float16, torch.bfloat16)


def _backend() -> str:
    """``"cusparselt"`` when torch ships it, else ``"cutlass"``."""
    cusparselt = getattr(torch.backends, "cusparselt", None)
    ok = cusparselt is not None and bool(cusparselt.is_available())
    return "cusparselt" if ok else "cutlass"


def _check_dtype(dtype: Any) -> None:
    if dtype not in DTYPES:
        raise TypeError(
            "the sparse tensor cores' 2:4 matmul takes float16 or bfloat16 weights, "
            f"got dtype {dtype}; cast with w.half() (or use effx_lab.nm.kernels, which "
            "also takes float32)"
        )


def why_unavailable(device: Any = None) -> str | None:
    """Why the semi-structured matmul cannot run on ``device`` (default: the current
    CUDA device), or ``None`` when it can.

    It needs ``torch.sparse.to_sparse_semi_structured``, a CUDA GPU, and compute
    capability 8.0 or more (A100, RTX 30xx/40xx, L4, H100; not a T4 (7.5) nor V100
    (7.0)).
    """
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return (
            f"this torch ({torch.__version__}) has no "
            "torch.sparse.to_sparse_semi_structured (PyTorch 2.1 or later has it)"
        )
    if device is not None:
        try:
            device = torch.device(device)
        except (TypeError, RuntimeError) as exc:
            raise TypeError(
                f"device must be a torch device or its name, got {describe(device)}"
            ) from exc
        if device.type != "cuda":
            return (
                f"the tensors are on {device}: 2:4 semi-structured sparsity runs on "
                "the sparse tensor cores of CUDA GPUs (sm_80 or later) only"
            )
    if not torch.cuda.is_available():
        return (
            "no CUDA GPU: 2:4 semi-structured sparsity runs on the sparse tensor cores "
            "of NVIDIA GPUs with compute capability 8.0 or more (A100, H100, RTX "
            "30xx/40xx, L4); the course's own nm_matmul runs everywhere"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        name = torch.cuda.get_device_name(device)
        return (
            f"{name} has compute capability {major}.{minor}: the sparse tensor cores "
            "that 2:4 semi-structured sparsity needs arrived with 8.0 (Ampere)"
        )
    return None


def available(device: Any = None) -> bool:
    """Whether :func:`to_semi_structured` can run; see :func:`why_unavailable`."""
    return why_unavailable(device) is None


def min_shape(dtype: torch.dtype = torch.float16) -> tuple[int, int]:
    """``(rows, cols)``: the weight's dimensions must be multiples of these (and at
    least these) for the backend torch uses here (cuSPARSELt: 16 x 16 for 16-bit
    floats; CUTLASS: 32 x 64)."""
    _check_dtype(dtype)
    return (16, 16) if _backend() == "cusparselt" else (32, 64)


def to_semi_structured(w: torch.Tensor) -> torch.Tensor:
    """``w (out, in)``, 2:4 sparse along the input dimension, as a
    ``SparseSemiStructuredTensor`` for ``F.linear`` (:func:`semi_structured_linear`).

    ``w``: a contiguous float16/bfloat16 CUDA tensor on a GPU with compute capability
    8.0 or more, each dimension a multiple of :func:`min_shape`, every group of 4 along
    the input dimension holding at most 2 non-zeros (prune it with
    ``effx_lab.nm.torch_ops.nm_mask`` first: the library would silently keep 2 of a
    denser group). Raises ``TypeError``/``ValueError`` naming what is wrong, and
    ``RuntimeError`` with :func:`why_unavailable`'s sentence where it cannot run.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch tensor, got {describe(w)}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"w must have a float dtype, got {w.dtype}")
    _check_dtype(w.dtype)
    out, d_in = check_nm_weight("w", w, 4)
    reason = why_unavailable(w.device)
    if reason is not None:
        raise RuntimeError(f"2:4 semi-structured sparsity cannot run here: {reason}")
    rows, cols = min_shape(w.dtype)
    if out % rows or d_in % cols:
        raise ValueError(
            f"w must have out_features a multiple of {rows} and in_features a multiple "
            f"of {cols} for the {_backend()} backend, got shape {(out, d_in)}"
        )
    groups = (w.detach() != 0).reshape(out, d_in // 4, 4).sum(dim=-1)
    if bool((groups > 2).any()):
        raise ValueError(
            "w must be 2:4 sparse (at most 2 non-zeros in every group of 4 along the "
            "input dimension); prune it with effx_lab.nm.torch_ops.nm_mask first"
        )
    w = w.detach().contiguous()
    if _backend() == "cutlass":
        return torch.sparse.SparseSemiStructuredTensorCUTLASS.from_dense(w)
    return torch.sparse.to_sparse_semi_structured(w)


def _is_semi_structured(w: Any) -> bool:
    cls = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    return cls is not None and isinstance(w, cls)


def semi_structured_linear(
    x: torch.Tensor, w_sparse: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` on the sparse tensor cores: ``F.linear`` with the weight
    made by :func:`to_semi_structured`.

    ``x (..., in_features)`` and ``bias (out_features,)`` in the weight's dtype and on
    its device. (The library pads the rows of ``x`` to its minimum internally: one
    decode token is padded to 8.)
    """
    if not _is_semi_structured(w_sparse):
        raise TypeError(
            "w_sparse must be a SparseSemiStructuredTensor made by to_semi_structured, "
            f"got {describe(w_sparse)}"
        )
    out_features, in_features = (int(d) for d in w_sparse.shape)
    for name, a in (("x", x), ("bias", bias)):
        if a is None:
            continue
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {describe(a)}")
        if a.dtype != w_sparse.dtype:
            raise TypeError(
                f"{name} must have the dtype of w_sparse ({w_sparse.dtype}), got "
                f"{a.dtype}"
            )
        if a.device != w_sparse.device:
            raise ValueError(
                f"{name} must be on the device of w_sparse ({w_sparse.device}), got "
                f"{a.device}"
            )
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (..., in_features={in_features}), got shape "
            f"{tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"bias must have shape (out_features,) = ({out_features},), got "
            f"{tuple(bias.shape)}"
        )
    lead = tuple(x.shape[:-1])
    y = F.linear(x.reshape(-1, in_features), w_sparse, bias)
    return y.reshape(*lead, out_features)
