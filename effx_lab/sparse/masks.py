"""Weight masks that survive training: :class:`WeightMask` and its helpers.

:func:`apply_mask` attaches one, :func:`apply_masks` many (a :class:`MaskSet`).

**Why zeroing the weights once is not enough.** After ``weight.mul_(mask)`` the pruned
entries are 0, but nothing keeps them there:

* the gradient of a pruned weight is not 0: ``dL/dW[i, j] = sum_t g[t, i] x[t, j]`` does
  not depend on ``W[i, j]``, so the very next optimizer step moves every pruned entry
  away from zero;
* zeroing the gradient as well does not fix it under Adam/AdamW: the first moment
  ``exp_avg`` (momentum) still holds the gradients of the steps *before* the mask (or
  before the last mask update of gradual pruning), and ``exp_avg / (sqrt(exp_avg_sq) +
  eps)`` stays far from 0 for many steps after the gradient stops;
* weight decay cannot repair it: AdamW's decoupled decay ``w <- w - lr * wd * w``
  shrinks a revived weight geometrically, never back to exactly zero.

So a mask must act at three places, which :class:`WeightMask` does:

1. a **gradient hook** on the parameter replaces the gradient of every pruned entry by
   exactly 0 (``where``, not a product: a NaN gradient there does not survive either),
   so the optimizer's moments receive zeros;
2. :meth:`WeightMask.reapply` zeros the pruned entries again; call it after every
   optimizer step (a :class:`WeightMask` or :class:`MaskSet` is itself a training loop's
   ``after_step`` hook, ``hook(model, step)``), and optionally clear the optimizer's
   state of the pruned entries (``optimizer=`` of :func:`apply_mask` and
   :meth:`WeightMask.update`), after which Adam's update of a pruned entry is ``0 / (0 +
   eps) = 0`` and AdamW's decay of 0 is 0: the weight stays exactly 0 even without
   ``reapply``;
3. a **forward pre-hook** zeros the pruned entries before every forward pass of the
   module, so the layer never computes with a revived weight even where ``reapply`` was
   not called (after ``load_state_dict`` the module also reapplies its masks at once).

The parameter stays an ordinary ``nn.Parameter`` (the optimizer, ``state_dict`` keys and
kernels that read ``module.weight`` are unchanged); the mask is a non-persistent buffer
``<name>_mask`` of the module, so it follows ``module.to(device)`` and is not written to
the ``state_dict`` (a checkpoint of a masked model loads into an unmasked one, where the
pruned weights are stored zeros). Everything works under ``torch.no_grad()`` and
``torch.inference_mode()``: forward passes still see the masked weights.

Limit: the forward pre-hook fires only when the module's own ``forward`` runs. A weight
read directly by another module (``nn.MultiheadAttention`` reads ``out_proj.weight``
without calling ``out_proj``) relies on the gradient hook and ``reapply``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from effx_lab._validate import check_int, describe

__all__ = [
    "WeightMask",
    "MaskSet",
    "apply_mask",
    "apply_masks",
    "get_mask",
    "guard_masks",
    "linear_weights",
    "model_masks",
    "select_weights",
]

_REGISTRY = "_effx_weight_masks"  # attribute of a module: {parameter name: WeightMask}


def _registry(module: nn.Module) -> dict[str, WeightMask]:
    reg = module.__dict__.get(_REGISTRY)
    if reg is None:
        reg = {}
        module.__dict__[_REGISTRY] = reg
    return reg


def _check_module(name: str, value: Any) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {describe(value)}")
    return value


def _check_optimizer(
    optimizer: Any, param: nn.Parameter, what: str
) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "optimizer must be a torch.optim.Optimizer or None, got "
            f"{describe(optimizer)}"
        )
    if not any(p is param for group in optimizer.param_groups for p in group["params"]):
        raise ValueError(
            f"optimizer must update {what}, but none of its param_groups holds that "
            "parameter"
        )
    return optimizer


def _as_mask(mask: Any, param: torch.Tensor, what: str) -> torch.Tensor:
    """``mask`` as a bool tensor of ``param``'s shape, on its device.

    A NumPy bool array is accepted too.
    """
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_:
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            "mask must be a bool torch tensor (or NumPy bool array), got "
            f"{describe(mask)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool (True = keep), got {mask.dtype}; "
            "build it with effx_lab.sparse.torch_ops (magnitude_mask, nm_mask, "
            "block_mask) or compare, e.g. w != 0"
        )
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"mask must have the shape of {what} {tuple(param.shape)}, got "
            f"{tuple(mask.shape)}"
        )
    return mask.detach().to(param.device)


class WeightMask:
    """A bool mask attached to one parameter of a module, in force through training.

    Made by :func:`apply_mask` (``WeightMask(module, mask, name)`` is the same).
    ``True`` keeps an entry, ``False`` prunes it. See the module docstring for why the
    mask needs a gradient hook, a forward pre-hook and :meth:`reapply`. Use
    :meth:`update` to change the mask (gradual pruning; regrowth is allowed: a regrown
    entry starts from 0) and :meth:`remove` to bake it into the weight and detach every
    hook.
    """

    def __init__(
        self,
        module: nn.Module,
        mask: Any,
        name: str = "weight",
        *,
        optimizer: Any = None,
    ) -> None:
        module = _check_module("module", module)
        if not isinstance(name, str) or not name:
            raise TypeError(
                "name must be a non-empty str naming a parameter of module, got "
                f"{describe(name)}"
            )
        param = module._parameters.get(name)
        if not isinstance(param, nn.Parameter):
            names = (
                ", ".join(
                    repr(n) for n, p in module._parameters.items() if p is not None
                )
                or "none"
            )
            raise ValueError(
                f"name must name a parameter of module ({type(module).__name__} has "
                f"{names}), got {name!r}"
            )
        if not param.dtype.is_floating_point:
            raise TypeError(
                f"the parameter {name!r} must have a float dtype to be masked, got "
                f"{param.dtype}"
            )
        if name in _registry(module):
            raise ValueError(
                f"module.{name} already has a mask; change it with get_mask(module, "
                f"{name!r}).update(new_mask)"
            )
        buffer = f"{name}_mask"
        if buffer in module._buffers or hasattr(module, buffer):
            raise ValueError(
                f"module already has an attribute {buffer!r}; the mask is stored under "
                "that name"
            )
        what = f"module.{name}"
        keep = _as_mask(mask, param, what)
        if optimizer is not None:
            _check_optimizer(optimizer, param, what)

        self._module = module
        self._name = name
        self._buffer = buffer
        self._removed = False
        self._grad_param: nn.Parameter | None = None
        self._grad_handle: Any = None
        module.register_buffer(buffer, keep.clone(), persistent=False)
        self._pre_handle = module.register_forward_pre_hook(self._before_forward)
        self._load_handle = module.register_load_state_dict_post_hook(self._after_load)
        _registry(module)[name] = self
        self._ensure_grad_hook()
        self.reapply()
        if optimizer is not None:
            self.clear_optimizer_state(optimizer)

    # ---------------------------------------------------------------------------- state
    @property
    def module(self) -> nn.Module:
        """The module whose parameter is masked."""
        return self._module

    @property
    def name(self) -> str:
        """The name of the masked parameter in :attr:`module` (``"weight"``)."""
        return self._name

    @property
    def param(self) -> nn.Parameter:
        """The masked parameter (looked up on the module each time)."""
        self._check_live()
        return self._module._parameters[self._name]

    @property
    def mask(self) -> torch.Tensor:
        """The bool mask (``True`` = kept), on the parameter's device.

        Change it with :meth:`update` only.
        """
        self._check_live()
        return self._module._buffers[self._buffer]

    @property
    def sparsity(self) -> float:
        """The fraction of the parameter's entries that the mask prunes."""
        keep = self.mask
        return 1.0 - int(keep.sum()) / keep.numel()

    def __repr__(self) -> str:
        if self._removed:
            return f"WeightMask({self._name!r}, removed)"
        keep = self.mask
        return (
            f"WeightMask({type(self._module).__name__}.{self._name}, "
            f"shape={tuple(keep.shape)}, "
            f"sparsity={self.sparsity:.3g})"
        )

    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeError(
                f"this mask of {self._name!r} was removed; attach a new one with "
                "apply_mask"
            )

    # ---------------------------------------------------------------------------- hooks
    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradient hook: the gradient of a pruned entry is replaced by exactly 0."""
        keep = self._module._buffers[self._buffer]
        return torch.where(
            keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)
        )

    def _ensure_grad_hook(self) -> None:
        """Register the gradient hook on the current parameter object.

        Once, and again if the parameter object was replaced.
        """
        param = self._module._parameters[self._name]
        if param is self._grad_param or not param.requires_grad:
            return
        if self._grad_handle is not None:
            self._grad_handle.remove()
        self._grad_handle = param.register_hook(self._mask_grad)
        self._grad_param = param

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook: zero the pruned entries before the module uses its weight.

        Written through ``param.data``, which does not bump autograd's version counter
        of the parameter: a module called twice in one graph (shared layers) would
        otherwise fail its backward with "modified by an inplace operation", although
        the second call changes nothing (the entries are already 0).
        """
        self._ensure_grad_hook()
        param = module._parameters[self._name]
        param.data.masked_fill_(~module._buffers[self._buffer], 0)

    def _after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        """``load_state_dict`` post-hook: a loaded dense weight is masked at once."""
        self.reapply()

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) gets a new parameter without tensor hooks:
        forget the old one, so that the next :meth:`reapply` or forward pre-hook
        registers the gradient hook on the copy's parameter."""
        state = dict(self.__dict__)
        state["_grad_param"] = None
        state["_grad_handle"] = None
        return state

    # --------------------------------------------------------------------------- public
    def reapply(self) -> None:
        """Zero the pruned entries of the parameter (in place, without autograd).

        Call it after each optimizer step.
        """
        self._check_live()
        self._ensure_grad_hook()
        with torch.no_grad():
            self.param.masked_fill_(~self.mask, 0)

    def __call__(self, model: Any = None, step: Any = None) -> None:
        """The training loop's ``after_step`` hook ``hook(model, step)``: reapply.

        ``model`` (an ``nn.Module``) and ``step`` (an int >= 0) are accepted for the
        hook's signature and checked, not used.
        """
        if model is not None:
            _check_module("model", model)
        if step is not None:
            check_int("step", step, min_value=0)
        self.reapply()

    def update(self, mask: Any, optimizer: Any = None) -> None:
        """Replace the mask (gradual pruning) and zero the newly pruned entries at once.

        ``mask``: a bool tensor of the parameter's shape. With ``optimizer`` (one that
        updates this parameter) its state of the pruned entries is cleared too
        (:meth:`clear_optimizer_state`), so its momentum cannot move them after the next
        step.
        """
        self._check_live()
        what = f"module.{self._name}"
        keep = _as_mask(mask, self.param, what)
        if optimizer is not None:
            _check_optimizer(optimizer, self.param, what)
        self.mask.copy_(keep)
        self.reapply()
        if optimizer is not None:
            self.clear_optimizer_state(optimizer)

    def clear_optimizer_state(self, optimizer: Any) -> None:
        """Zero ``optimizer``'s state of the pruned entries.

        Every state tensor of the parameter's shape is zeroed there: for Adam/AdamW
        ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``), for SGD the
        ``momentum_buffer``; scalar state (``step``) is left alone. After it, and with
        the gradient hook feeding zeros, Adam's update of a pruned entry is exactly 0.
        """
        self._check_live()
        param = self.param
        _check_optimizer(optimizer, param, f"module.{self._name}")
        pruned = ~self.mask
        with torch.no_grad():
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(pruned, 0)

    def remove(self) -> None:
        """Bake the mask into the weight and detach the hooks and the buffer.

        The parameter is then an ordinary one again: nothing keeps its zeros through
        later training.
        """
        self.reapply()
        for handle in (self._grad_handle, self._pre_handle, self._load_handle):
            if handle is not None:
                handle.remove()
        del self._module._buffers[self._buffer]
        _registry(self._module).pop(self._name, None)
        self._removed = True
        self._grad_param = self._grad_handle = None


def apply_mask(
    module: nn.Module, mask: Any, name: str = "weight", *, optimizer: Any = None
) -> WeightMask:
    """Attach ``mask`` to the parameter ``name`` of ``module``; return the WeightMask.

    ``mask`` is a bool tensor (or NumPy array) of the parameter's shape, ``True`` =
    keep. The pruned entries are zeroed at once and kept at zero through training (see
    the module docstring). ``optimizer``: pass the optimizer when it already has state
    for the parameter (masking after some dense training), to clear its momentum of the
    pruned entries. A parameter has at most one mask (``ValueError`` otherwise: use
    :meth:`WeightMask.update`).
    """
    return WeightMask(module, mask, name, optimizer=optimizer)


def get_mask(module: nn.Module, name: str = "weight") -> WeightMask | None:
    """The :class:`WeightMask` on ``module``'s parameter ``name``, or ``None``."""
    module = _check_module("module", module)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    return _registry(module).get(name)


def linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight of every ``nn.Linear`` of ``model`` (subclasses too), by name.

    The names are those of ``model.named_parameters()`` (``"0.weight"``,
    ``"mlp.fc1.weight"``): build a dict of masks from it, e.g. ``{k: magnitude_mask(w,
    0.5) for k, w in linear_weights(model).items()}``, and pass it to
    :func:`apply_masks`.
    """
    model = _check_module("model", model)
    return {
        f"{prefix}.weight" if prefix else "weight": mod.weight
        for prefix, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
    }


class MaskSet(Mapping):
    """The :class:`WeightMask` of several parameters of one model, by parameter name.

    A read-only mapping ``{"fc1.weight": WeightMask, ...}`` that is also an
    ``after_step`` hook (``masks(model, step)`` reapplies them all), with
    :meth:`update`, :meth:`clear_optimizer_state`, :meth:`remove` and :meth:`sparsity`
    over all of them.
    """

    def __init__(self, masks: Mapping[str, WeightMask]) -> None:
        for key, value in masks.items():
            if not isinstance(value, WeightMask):
                raise TypeError(
                    f"masks[{key!r}] must be a WeightMask, got {describe(value)}"
                )
        self._masks = dict(masks)

    def __getitem__(self, key: str) -> WeightMask:
        return self._masks[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return (
            f"MaskSet({len(self)} masks, sparsity={self.sparsity():.3g})"
            if self._masks
            else "MaskSet()"
        )

    def reapply(self) -> None:
        """:meth:`WeightMask.reapply` of every mask."""
        for m in self._masks.values():
            m.reapply()

    def __call__(self, model: Any = None, step: Any = None) -> None:
        """The ``after_step`` hook ``hook(model, step)``: reapply every mask.

        The arguments are checked, not used.
        """
        if model is not None:
            _check_module("model", model)
        if step is not None:
            check_int("step", step, min_value=0)
        self.reapply()

    def update(self, masks: Mapping[str, Any], optimizer: Any = None) -> None:
        """:meth:`WeightMask.update` for each ``name: mask`` of ``masks``.

        The names must be among this set's keys.
        """
        if not isinstance(masks, Mapping):
            raise TypeError(
                "masks must be a dict of parameter name -> bool mask, got "
                f"{describe(masks)}"
            )
        unknown = [k for k in masks if k not in self._masks]
        if unknown:
            raise ValueError(
                f"masks must name masked parameters ({', '.join(self._masks)}), got "
                f"{unknown}"
            )
        for key, mask in masks.items():
            self._masks[key].update(mask, optimizer)

    def clear_optimizer_state(self, optimizer: Any) -> None:
        """:meth:`WeightMask.clear_optimizer_state` of every mask."""
        for m in self._masks.values():
            m.clear_optimizer_state(optimizer)

    def remove(self) -> None:
        """Bake every mask into its weight and detach them all."""
        for m in self._masks.values():
            m.remove()

    def sparsity(self) -> float:
        """The fraction of pruned entries over all the masked parameters together."""
        total = sum(m.mask.numel() for m in self._masks.values())
        kept = sum(int(m.mask.sum()) for m in self._masks.values())
        return 1.0 - kept / total if total else 0.0


def _resolve(model: nn.Module, key: str) -> tuple[nn.Module, str, str]:
    """``(module, parameter name, full name)`` for a key of :func:`apply_masks`.

    The key names a parameter or an ``nn.Linear``.
    """
    params = dict(model.named_parameters())
    if key in params:
        prefix, _, pname = key.rpartition(".")
        return model.get_submodule(prefix), pname, key
    try:
        mod = model.get_submodule(key)
    except AttributeError:
        mod = None
    if isinstance(mod, nn.Linear):
        return mod, "weight", f"{key}.weight" if key else "weight"
    examples = (
        ", ".join(list(linear_weights(model))[:4]) or "the model has no nn.Linear"
    )
    raise ValueError(
        "masks keys must name a parameter of model or one of its nn.Linear modules "
        f"(e.g. {examples}), got {key!r}"
    )


def apply_masks(
    model: nn.Module,
    masks: Mapping[str, Any],
    *,
    optimizer: Any = None,
    strict: bool = False,
) -> MaskSet:
    """Attach one mask per entry of ``masks`` and return them as a :class:`MaskSet`.

    ``masks`` maps a parameter name of ``model`` (``"fc1.weight"``, as in
    ``named_parameters()`` and :func:`linear_weights`) or the name of an ``nn.Linear``
    (``"fc1"``, meaning its weight) to a bool mask of that parameter's shape.
    ``strict=True`` also requires a mask for the weight of every ``nn.Linear``.
    ``optimizer`` as in :func:`apply_mask`. Every key is checked before any mask is
    attached.
    """
    model = _check_module("model", model)
    if not isinstance(masks, Mapping):
        raise TypeError(
            "masks must be a dict of parameter name -> bool mask, got "
            f"{describe(masks)}"
        )
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {describe(strict)}")
    targets: dict[str, tuple[nn.Module, str, Any]] = {}
    for key, mask in masks.items():
        if not isinstance(key, str):
            raise TypeError(
                f"masks keys must be str parameter names, got {describe(key)}"
            )
        module, pname, full = _resolve(model, key)
        if full in targets:
            raise ValueError(
                f"masks names the parameter {full!r} twice (as {key!r} and another key)"
            )
        if get_mask(module, pname) is not None:
            raise ValueError(
                f"{full} already has a mask; update it with MaskSet.update or "
                "WeightMask.update"
            )
        _as_mask(mask, module._parameters[pname], full)
        if optimizer is not None:
            _check_optimizer(optimizer, module._parameters[pname], full)
        targets[full] = (module, pname, mask)
    if strict:
        missing = [k for k in linear_weights(model) if k not in targets]
        if missing:
            raise ValueError(
                "masks must cover every nn.Linear weight when strict=True; missing "
                f"{missing}"
            )
    return MaskSet(
        {
            full: WeightMask(mod, mask, pname, optimizer=optimizer)
            for full, (mod, pname, mask) in targets.items()
        }
    )


def model_masks(model: nn.Module) -> MaskSet:
    """Every mask in force on ``model`` (whoever attached it), by parameter name, as one
    :class:`MaskSet`; empty when there is none. Looked up on the model each time, so
    the masks of a ``copy.deepcopy`` are the copy's own."""
    model = _check_module("model", model)
    found: dict[str, WeightMask] = {}
    for prefix, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            mask = get_mask(module, pname)
            if mask is not None:
                found[f"{prefix}.{pname}" if prefix else pname] = mask
    return MaskSet(found)


def _zero_pruned_grad(
    module: nn.Module, name: str, grad: torch.Tensor
) -> torch.Tensor:
    """The guard's gradient hook: the mask in force on ``module.name`` now (none after
    ``remove()``: the gradient passes unchanged)."""
    mask = get_mask(module, name)
    if mask is None:
        return grad
    zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
    return torch.where(mask.mask, grad, zero)


class _MaskGuard:
    """A forward pre-hook on the masked model itself (not on the module holding the
    weight): before every forward pass it zeros the pruned entries of every mask in
    force (``param.data``, as the masks' own pre-hooks do, so a model called twice in
    one graph still runs backward) and makes sure each masked parameter has a
    gradient hook that zeros its pruned entries.

    Why: an LM's weights live in ``nn.ParameterDict``s, whose ``forward`` never runs,
    so the masks' per-module pre-hooks never fire there; and ``copy.deepcopy`` of a
    model copies its parameters without their tensor hooks (the mask's gradient hook
    among them), while module hooks such as this one are copied. The guard records the
    parameters it armed (by weak reference); a copy (``deepcopy``, pickle) starts with
    an empty record, so it arms its own parameters before their first backward. The
    gradient hook reads the mask in force when it runs: after
    ``model_masks(model).remove()`` it lets gradients through.
    """

    def __init__(self) -> None:
        self._armed: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a copy (deepcopy, pickle) has parameters of its own: arm them afresh
        return {"_armed": {}}

    def __call__(self, model: nn.Module, args: Any = ()) -> None:
        for name, mask in model_masks(model).items():
            param = mask.param
            param.data.masked_fill_(~mask.mask, 0)
            ref = self._armed.get(name)
            if param.requires_grad and (ref is None or ref() is not param):
                hook = functools.partial(_zero_pruned_grad, mask.module, mask.name)
                param.register_hook(hook)
                self._armed[name] = weakref.ref(param)


_GUARD = "_effx_mask_guard"  # attribute of a model: its _MaskGuard


def guard_masks(model: nn.Module) -> None:
    """Keep every mask of ``model`` in force through anything: a forward pre-hook on
    the model itself (attached once; see :class:`_MaskGuard` for why the masks' own
    hooks are not enough for an LM's ``nn.ParameterDict`` weights or a
    ``copy.deepcopy``), run once now. The whole-model verbs (``prune_``,
    ``sparsify_``) call it after attaching their masks."""
    model = _check_module("model", model)
    guard = model.__dict__.get(_GUARD)
    if guard is None:
        guard = _MaskGuard()
        model.__dict__[_GUARD] = guard
        model.register_forward_pre_hook(guard)
    with torch.no_grad():
        guard(model)


def select_weights(
    weights: Mapping[str, Any], include: Any, what: str, listing: str
) -> dict[str, Any]:
    """The entries of ``weights`` that ``include`` names: ``None`` keeps them all; else
    each name is a key or a module prefix of keys (``"layers.0"`` names every weight
    under it). A name that matches nothing raises ``ValueError`` naming it, with
    ``what`` the weights are (e.g. "a prunable weight") and the function ``listing``
    that lists them. The whole-model verbs' ``include=`` options use it."""
    if include is None:
        return dict(weights)
    if isinstance(include, str) or not isinstance(include, (list, tuple)):
        raise TypeError(
            f"include must be None or a list of names, got {describe(include)}"
        )
    chosen: set[str] = set()
    for name in include:
        hits = [k for k in weights if k == name or k.startswith(f"{name}.")]
        if not hits:
            examples = ", ".join(list(weights)[:4]) or "none"
            raise ValueError(
                f"include names {name!r}, which is neither {what} of the model nor a "
                f"module holding one ({examples}, ...; see {listing})"
            )
        chosen.update(hits)
    return {k: w for k, w in weights.items() if k in chosen}
