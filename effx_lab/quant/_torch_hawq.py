"""Hessian-aware mixed precision (HAWQ) and the straight-through estimator, in PyTorch (chapter 2, 02.5, 02.7).

Same names and signatures as :mod:`effx_lab.quant._np_hawq` (tensors in and out), plus what only an autograd
framework can do:

* :func:`hvp_fn` (torch only): Hessian-vector products by double backprop (Pearlmutter 1994). One forward
  and one backward with ``create_graph=True`` give the gradient ``g(theta)`` as a differentiable function;
  ``H v = d(g . v) / d theta`` is then one more backward per probe, with ``v`` fed as ``grad_outputs``
  (the Hessian is symmetric, so the vector-Jacobian product of ``g`` is ``H v``). The first-order graph is
  built once and reused for every probe.
* :func:`layer_traces` (torch only): the Hutchinson trace of the loss Hessian with respect to each listed
  layer's weight (the diagonal block ``H_ii``), what HAWQ-v2 ranks layers by (HAWQ and Q-BERT used
  the block's top eigenvalue instead).
* :func:`fake_quantize_ste` (torch only): ``fake_quantize`` as a ``torch.autograd.Function`` whose backward is
  the clipped straight-through estimator :func:`ste_grad`; the building block of quantization-aware training
  (:mod:`effx_lab.quant.qat`).

:func:`hutchinson_trace` draws its Rademacher probes from ``np.random.default_rng(seed)`` exactly as the NumPy
version does, so on the same matrix both backends return the same estimate. :func:`allocate_bits` is the
NumPy function (it is combinatorial, on a handful of plain floats), accepting tensors as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from effx_lab._validate import check_int, describe

from ._np_hawq import (
    _check_choices,
    _check_hutchinson_args,
    _check_traces_weights,
    _rademacher_signs,
)
from ._np_hawq import allocate_bits as _allocate_bits_np
from ._torch_gptq import rtn_quantize_weight
from ._np_uniform import QParams, _check_matches
from ._torch_uniform import (
    _broadcast_view,
    _check_qparams_torch,
    _check_tensor_x,
    compute_qparams,
)

__all__ = [
    "allocate_bits",
    "fake_quantize_ste",
    "hawq_sensitivity",
    "hutchinson_trace",
    "hvp_fn",
    "layer_traces",
    "linear_layer_hessian",
    "ste_grad",
]


# --------------------------------------------------------------------------- Hessian-vector products
class _HVP:
    """``v -> H v`` for the loss Hessian with respect to a list of parameters (see :func:`hvp_fn`).

    Attributes ``dim`` (total number of parameters), ``dtype`` and ``device`` (of the first parameter):
    :func:`hutchinson_trace` makes its probes with them.
    """

    def __init__(self, grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        self.grads = list(grads)
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != (self.dim,):
            raise ValueError(f"v must be a 1-D torch tensor of length {self.dim} (all parameters), got {describe(v)}")
        pieces = v.to(device=self.device, dtype=self.dtype).split(self.sizes)
        # only gradients that still depend on the parameters contribute (a loss linear in p has H = 0 there)
        live = [(g, piece.view_as(g).to(g.dtype)) for g, piece in zip(self.grads, pieces) if g.requires_grad]
        if not live:
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        hv = torch.autograd.grad(
            [g for g, _ in live],
            self.params,
            grad_outputs=[piece for _, piece in live],
            retain_graph=True,
            allow_unused=True,
        )
        return torch.cat(
            [
                (torch.zeros_like(p) if h is None else h).reshape(-1).to(self.dtype)
                for h, p in zip(hv, self.params)
            ]
        ).detach()


def _check_params(params: Any) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor) or not isinstance(params, (list, tuple)) or len(params) == 0:
        raise TypeError(f"params must be a non-empty list of tensors that require grad, got {describe(params)}")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.dtype.is_floating_point or not p.requires_grad:
            raise TypeError(f"params[{i}] must be a float tensor with requires_grad=True, got {describe(p)}")
    return list(params)


def _math_attention() -> Any:
    """Context that restricts ``F.scaled_dot_product_attention`` to its plain-math backend: the fused
    (flash / memory-efficient) kernels have no double backward, the math one is ordinary differentiable ops."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _gradients(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
    """``dL/dp`` for every ``p`` with the graph kept (``create_graph=True``), zeros for unused parameters."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable with no arguments returning the loss, got {describe(loss_fn)}")
    with torch.enable_grad(), _math_attention():
        loss = loss_fn()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.dtype.is_floating_point:
            raise ValueError(f"loss_fn() must return a scalar float tensor, got {describe(loss)}")
        if not loss.requires_grad:
            raise ValueError("loss_fn() returned a loss that does not depend on params (requires_grad is False)")
        grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def hvp_fn(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``v -> H v`` for the Hessian of ``loss_fn()`` with respect to ``params`` (torch only).

    ``loss_fn`` takes no arguments and returns a scalar loss tensor (e.g. the cross-entropy of a fixed batch);
    ``params`` is a list of tensors with ``requires_grad=True`` (e.g. ``[layer.weight]``). They are flattened
    into one vector in the given order, so ``v`` has length ``dim = sum(p.numel())`` and ``H`` is
    ``dim x dim``. ``loss_fn`` is called once, here; the gradient is taken with ``create_graph=True`` and each
    call ``hvp(v)`` is one more backward pass (double backprop), returning a detached 1-D tensor of the first
    parameter's dtype and device. ``v`` is converted to that dtype and device. The callable also carries
    ``dim``, ``dtype`` and ``device`` attributes; it holds the autograd graph until it is deleted.
    ``loss_fn`` runs with ``F.scaled_dot_product_attention`` restricted to its math backend (the fused
    attention kernels have no second derivative).
    """
    params = _check_params(params)
    return _HVP(_gradients(loss_fn, params), params)


def hutchinson_trace(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    n_samples: int = 64,
    seed: int = 0,
    return_samples: bool = False,
) -> float | tuple[float, torch.Tensor]:
    """Hutchinson's estimate ``mean_i v_i^T H v_i`` of ``tr(H)``; same contract as the NumPy version.

    The Rademacher probes are drawn from ``np.random.default_rng(seed)`` exactly as there (same probes, same
    estimate on the same matrix), then made tensors of ``hvp.dtype`` on ``hvp.device`` when the callable has
    those attributes (as :func:`hvp_fn`'s does), else float64 on the CPU (convert inside ``hvp``, e.g.
    ``lambda v: H @ v.to(H)``). ``hvp(v)`` must return a 1-D tensor of length ``dim``. Returns a float, or
    ``(mean, samples)`` with ``samples`` a float64 CPU tensor of the per-probe values.
    """
    dim, n_samples, seed, return_samples = _check_hutchinson_args(hvp, dim, n_samples, seed, return_samples)
    dtype = getattr(hvp, "dtype", torch.float64)
    device = getattr(hvp, "device", torch.device("cpu"))
    rng = np.random.default_rng(seed)
    samples = torch.empty(n_samples, dtype=torch.float64)
    for i in range(n_samples):
        v = torch.from_numpy(_rademacher_signs(rng, dim)).to(device=device, dtype=dtype) * 2 - 1
        hv = hvp(v)
        if not isinstance(hv, torch.Tensor) or tuple(hv.shape) != (dim,):
            raise ValueError(
                f"hvp must return a 1-D torch tensor of length dim={dim} (H v), got {describe(hv)} for probe {i}"
            )
        samples[i] = torch.dot(v.to(torch.float64), hv.to(device=v.device, dtype=torch.float64)).item()
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("hvp returned non-finite values (NaN/inf): v^T H v is not finite")
    mean = float(samples.mean())
    return (mean, samples) if return_samples else mean


def linear_layer_hessian(x: torch.Tensor) -> torch.Tensor:
    """``2 X^T X / n`` (``[in, in]``), the Hessian of a linear layer's squared output error per output row;
    same contract as the NumPy version (float64 for float64 ``x``, float32 otherwise, on ``x``'s device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {describe(x)}")
    if not 2 <= x.ndim <= 8:
        raise ValueError(f"x must have 2 to 8 dimensions, got shape {tuple(x.shape)}")
    x = _check_tensor_x("x", x)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    X = x.reshape(-1, x.shape[-1]).to(dtype)
    return (2.0 / X.shape[0]) * (X.T @ X)


def layer_traces(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    layers: Mapping[str, nn.Module],
    n_samples: int = 32,
    seed: int = 0,
) -> dict[str, float]:
    """Hutchinson trace of the loss Hessian with respect to each layer's ``weight`` (torch only).

    ``layers`` maps names to submodules of ``model`` that have a ``weight`` parameter (e.g.
    ``{name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}``); ``loss_fn()`` recomputes
    the loss on a fixed batch. For each layer ``i`` this estimates ``tr(H_ii)``, the trace of the diagonal
    block of the Hessian that belongs to its weights (HAWQ-v2), with :func:`hutchinson_trace` (``n_samples``
    probes, seed ``seed`` for every layer). One forward and one first-order backward are shared by all layers;
    each probe of each layer costs one more backward (attention runs on its math backend, see :func:`hvp_fn`).
    Returns ``{name: trace}`` as plain floats. Trained
    networks have positive traces almost everywhere; a small negative estimate means a nearly flat layer (or
    too few probes).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    if not isinstance(layers, Mapping) or len(layers) == 0:
        raise TypeError(f"layers must be a non-empty dict {{name: module}}, got {describe(layers)}")
    n_samples = check_int("n_samples", n_samples, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    members = {id(m) for m in model.modules()}
    weights = []
    for name, module in layers.items():
        if not isinstance(name, str):
            raise TypeError(f"layers must have str keys, got {describe(name)}")
        if not isinstance(module, nn.Module) or id(module) not in members:
            raise ValueError(f"layers[{name!r}] must be a submodule of model, got {describe(module)}")
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.requires_grad:
            raise ValueError(
                f"layers[{name!r}] must have a weight parameter with requires_grad=True, got {describe(w)}"
            )
        weights.append(w)
    grads = _gradients(loss_fn, weights)
    traces = {}
    for (name, _), g, w in zip(layers.items(), grads, weights):
        traces[name] = hutchinson_trace(_HVP([g], [w]), w.numel(), n_samples=n_samples, seed=seed)
    return traces


# --------------------------------------------------------------------------- bit allocation and sensitivity
def allocate_bits(
    sensitivity: Sequence[Sequence[float]] | torch.Tensor,
    n_params: Sequence[int],
    budget_bits: float,
    choices: Sequence[int] = (2, 3, 4, 8),
) -> list[int]:
    """The NumPy :func:`effx_lab.quant._np_hawq.allocate_bits` (exact Pareto-front dynamic programme over
    plain floats); ``sensitivity`` may also be a ``[L, len(choices)]`` tensor on any device."""
    if isinstance(sensitivity, torch.Tensor):
        sensitivity = sensitivity.detach().to("cpu", torch.float64).numpy()
    if isinstance(n_params, torch.Tensor):
        n_params = n_params.tolist()
    if isinstance(budget_bits, torch.Tensor) and budget_bits.numel() == 1:
        budget_bits = budget_bits.item()
    return _allocate_bits_np(sensitivity, n_params, budget_bits, choices)


def hawq_sensitivity(
    traces: Sequence[float],
    weights: Sequence[torch.Tensor],
    choices: Sequence[int] = (2, 3, 4, 8),
    group_size: int | None = None,
) -> list[list[float]]:
    """``sens[i][c] = tr(H_i) / n_i * ||Q_b(W_i) - W_i||_F^2`` with ``Q_b`` = ``rtn_quantize_weight`` (torch);
    same contract as the NumPy version. ``traces`` may be a list of floats or a 1-D tensor (from
    :func:`layer_traces`' dict: ``list(traces.values())``, in the order of ``weights``)."""
    if isinstance(traces, torch.Tensor):
        traces = traces.detach().cpu().tolist()
    traces, weights = _check_traces_weights(traces, weights, allow_torch=True)
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"weights[{i}] must be a torch tensor, got {describe(w)}")
    choices = _check_choices(choices)
    sens = []
    with torch.no_grad():
        for t, w in zip(traces, weights):
            w64 = w.detach().to(torch.float64)
            errs = []
            for b in choices:
                err = rtn_quantize_weight(w.detach(), bits=b, group_size=group_size).to(torch.float64) - w64
                errs.append((err * err).sum())
            sq = torch.stack(errs).tolist()  # one device sync per layer
            sens.append([t / w.numel() * e for e in sq])
    return sens


# --------------------------------------------------------------------------- the straight-through estimator
def _ste_mask(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Where ``qmin <= round(x / scale) + zero_point <= qmax`` (the clip is inactive), shaped like ``x``."""
    xv, scale, zero_point = _broadcast_view(qparams, x.to(qparams.scale.dtype))
    unclipped = torch.round(xv / scale) + zero_point
    return ((unclipped >= qparams.qmin) & (unclipped <= qparams.qmax)).reshape(x.shape)


def ste_grad(x: torch.Tensor, grad_out: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """Clipped straight-through gradient ``grad_out * [qmin <= round(x / scale) + zp <= qmax]``; same contract
    as :func:`effx_lab.quant._np_hawq.ste_grad` (returns ``grad_out``'s dtype, on its device)."""
    x = _check_tensor_x("x", x)
    if not isinstance(grad_out, torch.Tensor) or not grad_out.dtype.is_floating_point:
        raise TypeError(f"grad_out must be a float torch tensor, got {describe(grad_out)}")
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have the shape of x {tuple(x.shape)}, got {tuple(grad_out.shape)}")
    qparams = _check_qparams_torch(qparams)
    _check_matches("x", tuple(x.shape), qparams)
    return torch.where(_ste_mask(x, qparams).to(grad_out.device), grad_out, torch.zeros_like(grad_out))


class FakeQuantizeSTE(torch.autograd.Function):
    """Forward: ``fake_quantize`` with parameters calibrated on ``x``; backward: the clipped STE.

    The forward repeats ``quantize`` / ``dequantize``'s arithmetic (same IEEE operations in the same order, so
    the values are identical) without their re-validation, and keeps the clip mask for the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bits: int, symmetric: bool, granularity: str, axis: int,
                group_size: int | None) -> torch.Tensor:
        with torch.no_grad():
            qparams = compute_qparams(x, bits, symmetric, granularity, axis, group_size)  # validates x
            xv, scale, zero_point = _broadcast_view(qparams, x.to(qparams.scale.dtype))
            unclipped = torch.round(xv / scale) + zero_point
            inside = (unclipped >= qparams.qmin) & (unclipped <= qparams.qmax)
            q = unclipped.clamp(qparams.qmin, qparams.qmax)
            out = ((q - zero_point) * scale).to(x.dtype).reshape(x.shape)
        ctx.save_for_backward(inside.reshape(x.shape))
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        (inside,) = ctx.saved_tensors
        grad_x = torch.where(inside, grad_out, torch.zeros_like(grad_out))
        return grad_x, None, None, None, None, None


def fake_quantize_ste(
    x: torch.Tensor,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
    axis: int = -1,
    group_size: int | None = None,
) -> torch.Tensor:
    """``fake_quantize`` with a straight-through gradient (torch only; Bengio et al. 2013).

    The forward is exactly :func:`effx_lab.quant.torch_ops.fake_quantize` (parameters calibrated on ``x``,
    same arguments and validation). The backward treats ``round`` as the identity and the calibrated
    ``scale`` / ``zero_point`` as constants (no gradient flows through the min/max): the gradient is
    :func:`ste_grad` ``(x, grad_out, qparams)``, i.e. ``grad_out`` where the clip is inactive and 0 where the
    value saturates (with min/max calibration nothing saturates, so the gradient passes through unchanged; the
    mask matters for fixed or learned ranges). Used by :class:`effx_lab.quant.qat.FakeQuantLinear`.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {describe(x)}")
    return FakeQuantizeSTE.apply(x, bits, symmetric, granularity, axis, group_size)
