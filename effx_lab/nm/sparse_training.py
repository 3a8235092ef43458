"""Training sparse models from scratch as hooks of the course's training loop (04.3).

:class:`NMSparseTraining` (N:M with STE or SR-STE, Zhou et al. 2021) and
:class:`TopKAST` (unstructured, Jayakumar et al. 2020) attach to a model before
:func:`effx_lab.models.training.train` and are its ``after_step`` hook::

    nm = NMSparseTraining(model, n=2, m=4, method="srste", decay=2e-4)
    train(model, tokens, steps=300, after_step=[nm])
    masks = nm.finalize()      # hard N:M masks (effx_lab.sparse.masks.MaskSet)

**Which weights.** On the shared language model (:class:`effx_lab.models.lm.LM`) the
2-D ``w*`` matrices of every layer (``wq, wk, wv, wo, w1, w2``), stored ``(in, out)``:
the groups of ``m`` run along axis 0, the input dimension. On any other model the weight
of every ``nn.Linear`` (``(out, in)``: groups along the last axis). ``include`` (a list
of names, as :attr:`names` lists them: ``"layers.0.w1"``, ``"mlp.fc1.weight"``)
restricts the set.

**How the forward pass sees sparse weights while the dense ones are trained.** Each
weight gets a parametrization
(:func:`torch.nn.utils.parametrize.register_parametrization`): the parameter stays the
dense ``W`` (``...parametrizations.w1.original``, the same ``nn.Parameter`` object, so
an optimizer made before or after sees it), and every read of the weight returns
:func:`effx_lab.nm.torch_ops.ste_weight` ``(W, M)`` with the mask ``M`` recomputed from
the current ``|W|`` at that read. The gradient reaches the dense ``W`` straight through
(STE). This works where a forward pre-hook cannot: the LM reads its weights from
``nn.ParameterDict``s whose ``forward`` never runs.

**SR-STE's decay and AdamW.** SR-STE adds ``λ_W (¬M ⊙ W)`` to the *gradient* (Zhou et
al. 2021, eq. 5, with SGD); here a gradient hook on the dense parameter adds it, so it
is clipped with the rest of the gradient by ``train``'s ``grad_clip`` and then
normalised by AdamW like any gradient. It is *not* AdamW's decoupled weight decay, which
``train`` applies to every matrix (pruned or kept) with its own ``weight_decay``. Under
Adam the pull of ``λ_W w`` counts relative to the gradient's own size, so the paper's
``2e-4`` (chosen for SGD at learning rate 0.1) pulls far less here: the experiments run
it and a larger value (:mod:`effx_lab.nm.experiments`).

**Top-KAST.** The same parametrization, with the forward pass on ``A`` (top
``forward_density`` of each matrix by ``|W|``) and the gradient kept only on ``B`` (top
``backward_density``); the exploration penalty ``penalty * topkast_penalty(W, A, B)``
is added as its gradient (``2 penalty W`` on ``A``, ``2 penalty W / D`` on ``B \\ A``)
by the same kind of gradient hook: exactly what adding it to the loss would give,
without changing ``train``'s loss function.

**Mask flips.** After every step the hook recomputes the masks from the updated weights
and counts the entries whose kept/pruned state changed (:attr:`history`): SR-STE's
point is that its masks settle, so late in training it flips fewer entries than STE.

``finalize()`` removes the parametrizations and gradient hooks and attaches the final
masks with :func:`effx_lab.sparse.masks.apply_masks`, which zeroes the pruned weights
and keeps them zero through later training (pass the returned ``MaskSet`` as an
``after_step`` hook); the model is then N:M (or ``forward_density``-dense) for good.
A hook object trains the model it was made for; a ``copy.deepcopy`` of the model keeps
the parametrizations (its reads stay sparse) but not the gradient hooks.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from effx_lab._validate import check_choice, check_float, check_int, describe
from effx_lab.models.lm import LM
from effx_lab.sparse import masks as SM
from effx_lab.sparse import torch_ops as ST

from . import shapes
from . import torch_ops as T

__all__ = ["METHODS", "NMSparseTraining", "TopKAST", "sparse_targets"]

#: the update rules :class:`NMSparseTraining` knows
METHODS = ("ste", "srste")


# ------------------------------------------------------------------------------ targets
def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    return model


def sparse_targets(
    model: nn.Module, include: Sequence[str] | None = None
) -> dict[str, tuple[nn.Module, str, int]]:
    """The weights the hooks sparsify: ``{name: (module, parameter name, input axis)}``.

    For :class:`~effx_lab.models.lm.LM`: ``"layers.<i>.<key>"`` for every 2-D ``w*``
    parameter of ``layers[i]`` (stored ``(in, out)``: input axis 0). Otherwise
    ``"<linear>.weight"`` for every ``nn.Linear`` (``(out, in)``: input axis 1).
    ``include``: ``None`` (all of them) or a list of those names (``ValueError`` on
    any other name).
    """
    model = _check_model(model)
    found: dict[str, tuple[nn.Module, str, int]] = {}
    if isinstance(model, LM):
        for i, layer in enumerate(model.layers):
            for key in layer.keys():
                p = layer[key]
                if key.startswith("w") and p.ndim == 2:
                    found[f"layers.{i}.{key}"] = (layer, key, 0)
    else:
        for prefix, mod in model.named_modules():
            if isinstance(mod, nn.Linear):
                found[f"{prefix}.weight" if prefix else "weight"] = (mod, "weight", 1)
    if include is None:
        if not found:
            raise ValueError(
                "model must have weights to sparsify (an LM's w* matrices or "
                f"nn.Linear layers), got a {type(model).__name__} with none"
            )
        return found
    if isinstance(include, str) or not isinstance(include, (list, tuple)):
        raise TypeError(
            "include must be None or a list of weight names, got "
            f"{describe(include)}"
        )
    if not include:
        raise ValueError("include must name at least one weight, got []")
    unknown = [k for k in include if k not in found]
    if unknown:
        raise ValueError(
            f"include must name weights of the model ({', '.join(list(found)[:6])}"
            f"{', ...' if len(found) > 6 else ''}), got {unknown}"
        )
    return {k: found[k] for k in include}


def _as_linear_layout(w: torch.Tensor, axis: int) -> torch.Tensor:
    """The weight as ``(out, in)`` (a view): the LM's ``(in, out)`` is transposed."""
    return w.t() if axis == 0 else w


# ----------------------------------------------------------------- parametrizations
class _NMSTE(nn.Module):
    """Parametrization: ``ste_weight(W, nm_mask(W))``, the mask remembered."""

    def __init__(self, n: int, m: int, axis: int) -> None:
        super().__init__()
        self.n, self.m, self.axis = n, m, axis
        self.mask: torch.Tensor | None = None

    def compute_mask(self, w: torch.Tensor) -> torch.Tensor:
        return ST.nm_mask(w.detach(), self.n, self.m, axis=self.axis)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.mask = self.compute_mask(w)
        return T.ste_weight(w, self.mask)


class _TopKASTParam(nn.Module):
    """Parametrization: the forward value on ``A``, the gradient on ``B`` only."""

    def __init__(self, forward_density: float, backward_density: float) -> None:
        super().__init__()
        self.forward_density = forward_density
        self.backward_density = backward_density
        self.mask: torch.Tensor | None = None  # A
        self.backward_mask: torch.Tensor | None = None  # B

    def compute_mask(self, w: torch.Tensor) -> torch.Tensor:
        fd, bd = self.forward_density, self.backward_density
        return T.topkast_masks(w.detach(), fd, bd)[0]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a, b = T.topkast_masks(w.detach(), self.forward_density, self.backward_density)
        self.mask, self.backward_mask = a, b
        w_b = torch.where(b, w, w.detach())  # no gradient outside B
        return T.ste_weight(w_b, a)


# ------------------------------------------------------------------------- the hooks
class _SparseTraining(abc.ABC):
    """What both hooks share: the parametrizations, the gradient hooks, mask flips."""


    def __init__(self, model: Any, include: Any) -> None:
        model = _check_model(model)
        targets = sparse_targets(model, include)
        for name, (module, key, _) in targets.items():
            if parametrize.is_parametrized(module, key):
                raise ValueError(
                    f"{name} is already parametrized (another sparse-training hook?); "
                    "finalize that one first"
                )
        self.model = model
        self._targets = targets
        self._params: dict[str, nn.Module] = {}
        self._handles: list[Any] = []
        self._finalized = False
        self.history: list[dict[str, Any]] = []
        for name, (module, key, axis) in targets.items():
            self._check_target(name, module._parameters[key], axis)
        for name, (module, key, axis) in targets.items():
            p = self._make(axis)
            parametrize.register_parametrization(module, key, p)
            self._params[name] = p
            original = module.parametrizations[key].original
            self._handles.append(original.register_hook(self._grad_hook(name, p)))
        self._previous = self.masks()

    # what each method defines: its parametrization and its gradient hook
    def _check_target(self, name: str, w: torch.Tensor, axis: int) -> None:
        """Refuse a weight the method cannot sparsify (default: accept any)."""

    @abc.abstractmethod
    def _make(self, axis: int) -> nn.Module:
        """The parametrization that makes a weight's masked value."""

    @abc.abstractmethod
    def _grad_hook(self, name: str, p: nn.Module) -> Any:
        """The hook on the dense weight's gradient (the decay, or Top-KAST's set B)."""

    # --------------------------------------------------------------------- reading
    @property
    def names(self) -> list[str]:
        """The names of the sparsified weights (see :func:`sparse_targets`)."""
        return list(self._targets)

    def dense_weight(self, name: str) -> torch.Tensor:
        """The dense (trained) weight ``name``, as stored in the model."""
        self._check_name(name)
        module, key, _ = self._targets[name]
        if self._finalized:
            return module._parameters[key]
        return module.parametrizations[key].original

    def masks(self) -> dict[str, torch.Tensor]:
        """The masks the current dense weights give (``True`` = used in the forward
        pass), each of the weight's stored shape."""
        self._check_live()
        return {
            name: self._params[name].compute_mask(self.dense_weight(name))
            for name in self._targets
        }

    def _check_name(self, name: Any) -> None:
        if name not in self._targets:
            raise ValueError(
                f"name must be one of the sparsified weights {self.names}, got {name!r}"
            )

    def _check_live(self) -> None:
        if self._finalized:
            raise RuntimeError(
                "this hook was finalized: the masks are hard now; keep training with "
                "the MaskSet finalize() returned"
            )

    # ----------------------------------------------------------------- the hook
    def after_step(self, model: Any, step: Any) -> None:
        """The ``after_step`` hook of :func:`~effx_lab.models.training.train`: count
        the mask flips of this step and append ``{"step", "flips", "fraction"}`` to
        :attr:`history` (``fraction``: flips over all sparsified entries)."""
        self._check_live()
        if model is not self.model:
            raise ValueError(
                "model must be the model this hook was made for, got another "
                f"{type(model).__name__}"
            )
        step = check_int("step", step, min_value=0)
        with torch.no_grad():
            if not all(
                bool(torch.isfinite(self.dense_weight(n)).all()) for n in self._targets
            ):
                return  # diverged: train raises FloatingPointError right after
            now = self.masks()
            flips = sum(int((now[n] != self._previous[n]).sum()) for n in now)
        total = sum(m.numel() for m in now.values())
        self._previous = now
        self.history.append({"step": step, "flips": flips, "fraction": flips / total})

    def __call__(self, model: Any, step: Any) -> None:
        """Same as :meth:`after_step`."""
        self.after_step(model, step)

    def finalize(self) -> SM.MaskSet:
        """Make the masks hard: remove the parametrizations and gradient hooks (the
        dense weights are kept) and attach the current masks with
        :func:`effx_lab.sparse.masks.apply_masks`, which zeroes the pruned entries.
        Returns the :class:`~effx_lab.sparse.masks.MaskSet` (an ``after_step`` hook for
        any later training)."""
        final = self.masks()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, key, _ in self._targets.values():
            parametrize.remove_parametrizations(module, key, leave_parametrized=False)
        self._finalized = True
        return SM.apply_masks(self.model, final)

    def flip_curve(self) -> list[list[float]]:
        """``[[step, fraction of entries flipped], ...]`` from :attr:`history`."""
        return [[h["step"], h["fraction"]] for h in self.history]


def _apply_rule(
    rule: Callable[..., Any],
    name: str,
    w: torch.Tensor,
    grad: torch.Tensor,
    mask: torch.Tensor,
    decay: float,
    axis: int,
) -> torch.Tensor:
    """``rule(w, grad, mask, decay)`` on float64 NumPy arrays in the ``(out, in)``
    layout; its result back as a gradient of ``grad``'s dtype and layout."""
    lin = _as_linear_layout
    args = (
        lin(w.detach(), axis).double().cpu().numpy(),
        lin(grad.detach(), axis).double().cpu().numpy(),
        lin(mask, axis).cpu().numpy(),
    )
    out = np.asarray(rule(*args, decay))
    if out.shape != args[1].shape:
        raise ValueError(
            f"grad_rule must return the gradient of {name} with shape "
            f"{args[1].shape} (out, in), got shape {out.shape}"
        )
    new = torch.as_tensor(out, dtype=grad.dtype, device=grad.device)
    return lin(new, axis)


class NMSparseTraining(_SparseTraining):
    """Train ``model``'s weights N:M from scratch: STE or SR-STE (Zhou et al. 2021).

    ``n:m`` (``1 <= n < m``; ``m`` must divide each weight's input width), ``method``
    ``"ste"`` or ``"srste"``, ``decay`` SR-STE's ``λ_W >= 0`` (ignored by ``"ste"``;
    the paper's ``2e-4`` by default), ``include`` as in :func:`sparse_targets`. The
    dense weights are kept and trained; every forward pass uses the N:M-masked ones
    (mask recomputed from ``|W|`` at each read); see the module docstring.

    ``grad_rule`` (``method="srste"`` only): a function with the signature of
    :func:`effx_lab.nm.reference.srste_grad`, ``grad_rule(w, grad, mask, decay) ->
    gradient`` on float64 NumPy arrays in the ``nn.Linear`` layout ``(out, in)`` (the
    LM's weights are transposed for it and back), used instead of the built-in SR-STE
    gradient: a student's answer can drive a training run (one NumPy round trip per
    weight and step: slower).
    """


    def __init__(
        self,
        model: nn.Module,
        n: int = 2,
        m: int = 4,
        method: str = "ste",
        decay: float = 2e-4,
        include: Sequence[str] | None = None,
        grad_rule: Callable[..., Any] | None = None,
    ) -> None:
        self.n, self.m = shapes.check_nm(n, m)
        self.method = check_choice("method", method, METHODS)
        self.decay = check_float("decay", decay, min_value=0.0)
        if grad_rule is not None:
            if not callable(grad_rule):
                raise TypeError(
                    "grad_rule must be None or a callable grad_rule(w, grad, mask, "
                    f"decay) -> gradient, got {describe(grad_rule)}"
                )
            if self.method != "srste":
                raise ValueError(
                    "grad_rule goes with method='srste' (it replaces SR-STE's "
                    f"gradient), got method={self.method!r}"
                )
        self.grad_rule = grad_rule
        super().__init__(model, include)

    def _check_target(self, name: str, w: torch.Tensor, axis: int) -> None:
        shapes.check_nm_weight(name, _as_linear_layout(w, axis), self.m)

    def _make(self, axis: int) -> nn.Module:
        return _NMSTE(self.n, self.m, axis)

    def _grad_hook(self, name: str, p: nn.Module) -> Any:
        module, key, axis = self._targets[name]
        original = module.parametrizations[key].original
        method, decay, rule = self.method, self.decay, self.grad_rule

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if method != "srste" or p.mask is None:
                return grad
            if rule is not None:
                return _apply_rule(rule, name, original, grad, p.mask, decay, axis)
            if decay == 0.0:
                return grad
            # srste_grad of the torch face, without its checks: a NaN gradient must
            # reach train's divergence check, not stop inside backward
            zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
            return grad + decay * torch.where(p.mask, zero, original.detach())

        return hook

    def __repr__(self) -> str:
        return (
            f"NMSparseTraining({self.n}:{self.m}, method={self.method!r}, "
            f"decay={self.decay:g}, {len(self._targets)} weights)"
        )


class TopKAST(_SparseTraining):
    """Top-KAST (Jayakumar et al. 2020): forward on the top ``forward_density`` of each
    weight matrix by ``|W|``, gradients on the top ``backward_density``
    (``0 < forward_density <= backward_density <= 1``), the exploration penalty
    ``penalty * topkast_penalty(W, A, B)`` (``penalty >= 0``) added through the
    gradient. ``include`` as in :func:`sparse_targets`. Unstructured: any matrix shape.
    """


    def __init__(
        self,
        model: nn.Module,
        forward_density: float,
        backward_density: float,
        penalty: float = 1e-4,
        include: Sequence[str] | None = None,
    ) -> None:
        # the face checks the densities (and their order) on a tiny tensor first
        T.topkast_masks(torch.ones(1), forward_density, backward_density)
        self.forward_density = float(forward_density)
        self.backward_density = float(backward_density)
        self.penalty = check_float("penalty", penalty, min_value=0.0)
        super().__init__(model, include)

    def _make(self, axis: int) -> nn.Module:
        return _TopKASTParam(self.forward_density, self.backward_density)

    def _grad_hook(self, name: str, p: nn.Module) -> Any:
        module, key, _ = self._targets[name]
        original = module.parametrizations[key].original
        c = self.penalty

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if c == 0.0 or p.mask is None:
                return grad
            a, b = p.mask, p.backward_mask
            d = int(a.sum()) / a.numel()
            w = original.detach()
            zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
            # d/dW of c * (sum_A W^2 + sum_(B \ A) W^2 / D)
            scale = torch.where(a, 2.0 * c * w, torch.where(b, 2.0 * c * w / d, zero))
            return grad + scale

        return hook

    def penalty_value(self) -> torch.Tensor:
        """``sum`` over the weights of ``topkast_penalty(W, A, B)`` (without the
        coefficient) at the current dense weights, as a 0-d tensor."""
        self._check_live()
        total = torch.zeros(())
        for name in self._targets:
            w = self.dense_weight(name).detach()
            a, b = T.topkast_masks(w, self.forward_density, self.backward_density)
            total = total + T.topkast_penalty(w, a, b).to(total.dtype)
        return total

    def __repr__(self) -> str:
        return (
            f"TopKAST(forward {self.forward_density:g}, backward "
            f"{self.backward_density:g}, penalty={self.penalty:g}, "
            f"{len(self._targets)} weights)"
        )
