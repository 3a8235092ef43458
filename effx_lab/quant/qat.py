"""Quantization-aware training (QAT) of a whole model, in PyTorch (chapter 2, section 02.7).

Post-training quantization (RTN, GPTQ) rounds trained weights once and hopes the network copes. QAT lets the
network *adapt* to the rounding: keep float "latent" weights, use their fake-quantized copy in every forward
pass, and train the latent weights through the rounding with the straight-through estimator (Bengio et al.
2013; Jacob et al. 2018; Nagel et al. 2021, section 4). After training, :func:`freeze_qat` rounds the latent
weights one last time and what is deployed is exactly what training saw.

* :class:`FakeQuantLinear` wraps an ``nn.Linear``: ``y = x @ fq(W).T + b`` with ``fq`` =
  :func:`~effx_lab.quant._torch_hawq.fake_quantize_ste` (weights per output row, or per group of
  ``group_size`` input features; optional dynamic per-tensor activation fake-quantization).
* :func:`prepare_qat` returns a copy of a model in which every ``nn.Linear`` is a :class:`FakeQuantLinear`
  (via :func:`effx_lab.models.surgery.replace_linears`). TinyLM's output head is tied to the token embedding and
  is not an ``nn.Linear``: it stays in float, like the embeddings and LayerNorms.
* :class:`FakeQuantizeSTE` is the ``torch.autograd.Function`` behind ``fake_quantize_ste`` (forward:
  ``fake_quantize``; backward: the clipped straight-through gradient), under its public name.
* :func:`distillation_loss` is the training loss of the two routes of QAT: the task loss (cross-entropy on the
  next tokens, ``alpha=0``) and knowledge distillation from the float teacher (Hinton et al. 2015),
  ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(targets)``.
* :func:`qat_finetune` trains the student with that loss (``distill`` is its ``alpha``) on random windows of a
  token stream. Matching the teacher's full next-token distribution carries more signal per token than the
  one-hot label (LLM-QAT, Liu et al. 2023, distils from the full-precision model for that reason); notebook
  02.7 compares the two routes at the same budget.
* :func:`freeze_qat` replaces each :class:`FakeQuantLinear` by a plain ``nn.Linear`` holding the
  quantized-dequantized weights (for evaluation and export).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_bool, check_float, check_int, describe
from effx_lab.data.pools import check_token_stream
from effx_lab.models.surgery import linear_names, replace_linears, set_submodule
from effx_lab.models.training import train

from ._torch_hawq import FakeQuantizeSTE
from ._torch_hawq import fake_quantize_ste
from .torch_ops import fake_quantize

__all__ = [
    "FakeQuantLinear",
    "FakeQuantizeSTE",
    "distillation_loss",
    "freeze_qat",
    "prepare_qat",
    "qat_finetune",
]


def _is_nn_linear(module: nn.Module) -> bool:
    """QAT wraps exactly the plain ``nn.Linear`` layers (not already-quantized ones)."""
    return isinstance(module, nn.Linear)


def _check_bits(name: str, bits: Any, optional: bool = False) -> int | None:
    if optional and bits is None:
        return None
    return check_int(name, bits, min_value=2, max_value=8)


def _weight_scheme(group_size: int | None) -> dict:
    """``fake_quantize`` keyword arguments for a ``[out, in]`` weight: per output row, or per input group."""
    if group_size is None:
        return {"granularity": "channel", "axis": 0}
    return {"granularity": "group", "axis": 1, "group_size": group_size}


class FakeQuantLinear(nn.Module):
    """An ``nn.Linear`` whose weight is fake-quantized with a straight-through gradient in every forward pass.

    ``FakeQuantLinear(linear, bits=4, group_size=32, symmetric=False, a_bits=None)`` copies ``linear``'s
    ``weight`` and ``bias`` into its own parameters (the latent float weights that training updates; the
    original layer is never modified). Forward: ``F.linear(fq_a(x), fq(weight), bias)`` where ``fq`` quantizes
    the ``[out, in]`` weight to ``bits`` bits with min/max scales per output row (``group_size=None``) or per
    group of ``group_size`` consecutive input features of each row (``group_size`` must divide
    ``in_features``), affine by default (``symmetric=True``: the restricted signed grid), and ``fq_a`` is the
    identity (``a_bits=None``) or a dynamic per-tensor affine fake-quantization of the input to ``a_bits``
    bits. Both use :func:`~effx_lab.quant._torch_hawq.fake_quantize_ste`: the gradient of the latent weight is
    the gradient of the quantized one wherever the clip is inactive (the scales are treated as constants).
    """

    def __init__(
        self,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int | None = 32,
        symmetric: bool = False,
        a_bits: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {describe(linear)}")
        self.bits = _check_bits("bits", bits)
        if group_size is not None:
            group_size = check_int("group_size", group_size, min_value=1)
            if linear.in_features % group_size:
                raise ValueError(
                    f"group_size={group_size} must divide in_features={linear.in_features} of the linear layer"
                )
        self.group_size = group_size
        self.symmetric = check_bool("symmetric", symmetric)
        self.a_bits = _check_bits("a_bits", a_bits, optional=True)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=linear.weight.requires_grad)
        if linear.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize_ste(self.weight, self.bits, self.symmetric, **_weight_scheme(self.group_size))
        if self.a_bits is not None:
            x = fake_quantize_ste(x, self.a_bits, False, "tensor")
        return F.linear(x, w, self.bias)

    @torch.no_grad()
    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: ``fake_quantize(weight)`` (a new tensor, no gradient)."""
        return fake_quantize(self.weight.detach(), self.bits, self.symmetric, **_weight_scheme(self.group_size))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric}, a_bits={self.a_bits}"
        )


def prepare_qat(
    model: nn.Module,
    bits: int = 4,
    group_size: int | None = 32,
    a_bits: int | None = None,
    skip: tuple[str, ...] | list[str] = (),
    *,
    symmetric: bool = False,
) -> nn.Module:
    """A deep copy of ``model`` in which every ``nn.Linear`` (but those named in ``skip``) is a
    :class:`FakeQuantLinear` (``bits``, ``group_size``, ``symmetric``, ``a_bits`` as there).

    ``skip`` holds qualified names from ``model.named_modules()`` (e.g. ``"layers.0.attn.qkv"``); every name
    must be an ``nn.Linear`` of the model. ``model`` itself is untouched (no shared parameters). Affine weights
    by default, the scheme of ``rtn_quantize_weight``'s default, so QAT and RTN compare like for like.
    Raises ``ValueError`` when no layer would be quantized or when ``group_size`` does not divide a layer's
    ``in_features`` (the message names the layer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    bits = _check_bits("bits", bits)
    if group_size is not None:
        group_size = check_int("group_size", group_size, min_value=1)
    a_bits = _check_bits("a_bits", a_bits, optional=True)
    symmetric = check_bool("symmetric", symmetric)
    if isinstance(skip, str) or not isinstance(skip, (tuple, list, set, frozenset)):
        raise TypeError(f"skip must be a tuple of layer names, got {describe(skip)}")
    names = linear_names(model, is_linear=_is_nn_linear)
    if not set(names) - set(skip):
        raise ValueError(f"model has no nn.Linear layer to quantize (linear layers: {names}, skip: {tuple(skip)})")
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name not in skip and group_size is not None and m.in_features % group_size:
            raise ValueError(
                f"group_size={group_size} must divide in_features of every quantized layer; "
                f"{name!r} has in_features={m.in_features} (skip it, or use group_size=None for per-row scales)"
            )

    def make(name: str, linear: nn.Linear) -> FakeQuantLinear:
        return FakeQuantLinear(linear, bits=bits, group_size=group_size, symmetric=symmetric, a_bits=a_bits)

    return replace_linears(model, make, skip=tuple(skip), is_linear=_is_nn_linear)


def freeze_qat(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every :class:`FakeQuantLinear` is a plain ``nn.Linear`` whose weight is
    the quantized-dequantized latent weight (``layer.quantized_weight()``) and whose bias is the layer's bias.

    The frozen model computes exactly what the QAT model computes in its forward pass when ``a_bits`` is
    ``None``. Activation fake-quantization (``a_bits``) is dynamic and is not part of the weights: it is dropped
    (the frozen model is weight-only quantized). ``model`` is untouched; ``ValueError`` if it has no
    :class:`FakeQuantLinear` (see :func:`prepare_qat`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    if not any(isinstance(m, FakeQuantLinear) for m in model.modules()):
        raise ValueError("model has no FakeQuantLinear layer: make the QAT model with prepare_qat first")
    if isinstance(model, FakeQuantLinear):
        raise TypeError("model must contain FakeQuantLinear layers, not be one: wrap it in a module")

    def make(fq: FakeQuantLinear) -> nn.Linear:
        w = fq.weight
        linear = nn.Linear(fq.in_features, fq.out_features, bias=fq.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(fq.quantized_weight())
            if fq.bias is not None:
                linear.bias.copy_(fq.bias)
        return linear

    frozen = copy.deepcopy(model)
    for name in [n for n, m in frozen.named_modules() if n and isinstance(m, FakeQuantLinear)]:
        set_submodule(frozen, name, make(frozen.get_submodule(name)))
    return frozen


def _soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over positions of ``KL(softmax(t / T) || softmax(s / T))`` (nats), on
    ``[..., vocab]`` logits, in float32 at least (float64 stays float64); the teacher is
    a constant (detached)."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()


def _task_ce(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``[..., vocab]`` logits against integer ``targets``
    shaped ``[...]``, in float32 at least."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    vocab = student_logits.shape[-1]
    logits = student_logits.reshape(-1, vocab).to(dtype)
    return F.cross_entropy(logits, targets.reshape(-1))


def _combine(
    kl: torch.Tensor | None, ce: torch.Tensor | None, temperature: float, alpha: float
) -> torch.Tensor:
    """``alpha * T^2 * kl + (1 - alpha) * ce``, leaving out a term whose weight is 0."""
    if alpha == 0.0:
        return ce
    if alpha == 1.0:
        return temperature**2 * kl
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl


def _check_logits(name: str, logits: Any, like: torch.Tensor | None = None) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float torch tensor, got {describe(logits)}")
    if like is None:
        if logits.ndim < 1 or logits.numel() == 0:
            raise ValueError(
                f"{name} must have shape [..., vocab] with at least one position, "
                f"got shape {tuple(logits.shape)}"
            )
        return
    if logits.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of student_logits {tuple(like.shape)}, "
            f"got {tuple(logits.shape)}"
        )
    if logits.device != like.device:
        raise ValueError(
            f"{name} must be on student_logits' device {like.device}, got {logits.device}"
        )


def _check_targets(targets: Any, logits: torch.Tensor) -> torch.Tensor:
    if (
        not isinstance(targets, torch.Tensor)
        or targets.dtype.is_floating_point
        or targets.dtype.is_complex
        or targets.dtype == torch.bool
    ):
        raise TypeError(
            f"targets must be an integer torch tensor or None, got {describe(targets)}"
        )
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have shape student_logits.shape[:-1] = "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if targets.device != logits.device:
        raise ValueError(
            f"targets must be on student_logits' device {logits.device}, "
            f"got {targets.device}"
        )
    vocab = logits.shape[-1]
    # reads the labels back (never the logits)
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(
            f"targets must lie in [0, {vocab}) (the vocabulary), got values in "
            f"[{lo}, {hi}]"
        )
    return targets.long()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float = 1.0,
    alpha: float = 1.0,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of QAT's two routes, a scalar tensor differentiable in ``student_logits``::

        alpha * T^2 * mean_positions KL(softmax(teacher / T) || softmax(student / T))
        + (1 - alpha) * mean_positions CE(student, targets)

    Hinton et al. (2015): the softened teacher carries its whole next-token
    distribution; ``T^2`` (``T`` = ``temperature``) keeps the KL's gradient size
    independent of ``T``. ``alpha=1`` (default) is pure distillation, ``alpha=0`` the
    plain task loss (``teacher_logits`` may then be ``None``).

    ``student_logits`` and ``teacher_logits``: float tensors of one shape
    ``[..., vocab]`` on one device (the softmax runs over the last axis, every other
    axis is a position). ``targets``: an integer tensor of shape
    ``student_logits.shape[:-1]`` with values in ``[0, vocab)``, required when
    ``alpha < 1``. The teacher's logits are detached (no gradient reaches the teacher).
    Computed in float32, or in float64 for float64 logits; the cross-entropy term is
    ``torch.nn.functional.cross_entropy`` (at ``T = 1``).
    """
    _check_logits("student_logits", student_logits)
    temperature = check_float("temperature", temperature, min_value=0.0, min_inclusive=False)
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    if teacher_logits is None:
        if alpha > 0:
            raise ValueError(
                f"teacher_logits is required when alpha > 0 (got alpha={alpha}); "
                f"pass alpha=0.0 for the task loss alone"
            )
    else:
        _check_logits("teacher_logits", teacher_logits, like=student_logits)
    if targets is None:
        if alpha < 1:
            raise ValueError(
                f"targets is required when alpha < 1 (got alpha={alpha}); "
                f"pass alpha=1.0 for distillation alone"
            )
    else:
        targets = _check_targets(targets, student_logits)
    kl = None if alpha == 0.0 else _soft_kl(student_logits, teacher_logits, temperature)
    ce = None if alpha == 1.0 else _task_ce(student_logits, targets)
    return _combine(kl, ce, temperature, alpha)


def qat_finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    tokens: np.ndarray,
    *,
    steps: int = 100,
    lr: float = 3e-4,
    batch_size: int = 16,
    seq_len: int = 64,
    distill: float = 1.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """Train ``student`` (typically from :func:`prepare_qat`) in place; return the loss at every step.

    Each step draws ``batch_size`` random windows of ``seq_len`` tokens from the 1-D integer stream ``tokens``
    with :func:`effx_lab.data.get_batch` and ``np.random.default_rng(seed)``, and minimises::

        loss = (1 - distill) * CE(student, next tokens) + distill * T^2 * KL(teacher || student)

    (:func:`distillation_loss` with ``alpha=distill``: ``distill=0`` is QAT on the task loss alone,
    ``distill=1`` pure distillation; the KL is averaged over tokens) with AdamW (peak ``lr``, betas (0.9, 0.95), no weight decay) and the gradient norm
    clipped to 1, in the course's one training loop (:func:`effx_lab.models.training.train`).
    The learning rate warms up linearly over the first ``max(1, steps // 10)`` steps, then
    decays towards 0 with a cosine (:func:`~effx_lab.models.training.lr_schedule` with
    ``min_ratio=0``, ``hold=1``). Both matter: Adam's first updates move *every* latent weight
    by about ``lr``, which flips many roundings at once, and a constant rate keeps flipping them at the end (pretrained TinyLM,
    3 bits, group 32, 100 steps of 16 x 64 tokens: a constant 3e-4 recovered 71% of RTN's perplexity gap, this
    schedule about 90%; a constant 1e-3 ended worse than RTN). Every parameter of the student with ``requires_grad`` is
    trained (latent weights, biases, LayerNorms, embeddings; freeze some with ``requires_grad_(False)``).
    ``teacher`` (float, frozen, run under ``no_grad`` in eval mode) may be ``None`` only when ``distill == 0``.
    Both models map ``[B, T]`` int64 tokens to ``[B, T, vocab]`` logits and live on one device. Returns
    ``{"loss", "ce", "kl"}`` (lists of per-step floats; ``kl`` is NaN without a teacher), ``"steps"``,
    ``"tokens"`` (tokens seen) and ``"elapsed_s"``. The student is left in eval mode.
    """
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {describe(student)}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module or None, got {describe(teacher)}")
    if teacher is student:
        raise ValueError("teacher must not be the student itself (prepare the student with prepare_qat(teacher))")
    steps = check_int("steps", steps, min_value=1)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    max_len = getattr(getattr(student, "config", None), "max_seq_len", None)
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=max_len)
    distill = check_float("distill", distill, min_value=0.0, max_value=1.0)
    temperature = check_float("temperature", temperature, min_value=0.0, min_inclusive=False)
    seed = check_int("seed", seed, min_value=0)
    if teacher is None and distill > 0:
        raise ValueError(f"teacher is required when distill > 0 (got distill={distill}); pass distill=0.0 for CE only")
    tokens = check_token_stream("tokens", tokens, min_len=seq_len + 1)
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError("student has no trainable parameter (requires_grad=True)")

    def qat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        # distillation_loss(logits, t_logits, temperature, distill, y), with both terms kept
        # for the record (the CE is logged even when its weight is 0)
        logits = model(x)
        ce = _task_ce(logits, y)
        if teacher is None:
            return {"loss": ce, "ce": ce, "kl": ce.new_tensor(math.nan)}
        with torch.no_grad():
            t_logits = teacher(x)
        kl = _soft_kl(logits, t_logits, temperature)
        return {"loss": _combine(kl, ce, temperature, distill), "ce": ce, "kl": kl}

    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    try:
        run = train(
            student, tokens, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
            warmup=max(1, steps // 10), hold=1, min_ratio=0.0, weight_decay=0.0,
            betas=(0.9, 0.95), grad_clip=1.0, seed=seed, loss_fn=qat_loss,
            desc="QAT",
        )  # fmt: skip
    finally:
        if teacher is not None and teacher_was_training:
            teacher.train()
    return {
        "loss": run.losses,
        "ce": run.metrics["ce"],
        "kl": run.metrics["kl"],
        "steps": steps,
        "tokens": run.tokens,
        "elapsed_s": run.time_s,
    }
