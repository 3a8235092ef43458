"""Model surgery shared by every chapter: find, replace and hook the linear layers of a
model, and record what flows into them. PyTorch only.

Two kinds of model, two protocols:

* **TinyLM** (:class:`effx_lab.models.torch_ops.TinyLM`), or any ``nn.Module``: its
  linear layers are submodules. :func:`linear_names` lists them, :func:`replace_linears`
  swaps them (a quantized, pruned or 2:4-sparse layer in place of each),
  :func:`collect_linear_inputs` / :func:`linear_input_absmax` record their inputs with
  forward hooks on windows of a token stream. What counts as a linear layer is one
  predicate, :func:`is_linear` by default (an ``nn.Linear``, or any module with a 2-D
  floating ``weight`` ``[out, in]`` that is not an embedding table, so the layers a
  chapter swapped in, e.g. a quantized or a masked linear, still count); every function
  takes ``is_linear=`` to use another.
* **MiniLM** (all-MiniLM-L6-v2) is a parameter dict run by
  :func:`effx_lab.models.torch_ops.minilm_forward`, which calls a hook ``linear(name, x,
  weight, bias) -> y`` for each of its linear layers (:func:`minilm_linear_names`, in
  execution order). :func:`record_minilm_linears` and :func:`minilm_layer_inputs` record
  those layers' inputs through such a hook, over the real (unpadded) tokens only;
  :func:`minilm_batches` cuts sentences into batches the way every MiniLM pass of the
  course does.

Nothing here knows about a compression method: chapter packages build on it
(``effx_lab.quant`` for quantization), never the other way round.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_array, check_bool, check_int, describe
from effx_lab.data.pools import check_token_stream
from effx_lab.models.config import MiniLMConfig, check_minilm_config

__all__ = [
    "MINILM_LINEAR_SUFFIXES",
    "check_ids_mask",
    "check_minilm_linear_weights",
    "collect_linear_inputs",
    "is_linear",
    "linear_input_absmax",
    "linear_names",
    "minilm_batches",
    "minilm_layer_inputs",
    "minilm_linear_names",
    "model_device",
    "record_minilm_linears",
    "replace_linears",
    "set_submodule",
]

#: a hook of minilm_forward: ``linear(name, x, weight, bias) -> y``
LinearHook = Callable[[str, torch.Tensor, torch.Tensor, Any], torch.Tensor]


# ======================================================================================
# Finding and replacing the linear layers of an nn.Module
# ======================================================================================
def is_linear(module: nn.Module) -> bool:
    """The default answer to "is this module a linear layer?".

    ``True`` for an ``nn.Linear`` and for any other module whose ``weight`` is a 2-D
    floating tensor (``[out, in]``), unless it is an embedding table
    (``nn.Embedding``/``nn.EmbeddingBag``, whose 2-D weight is looked up, not
    multiplied). So a layer that a chapter put in place of an ``nn.Linear``
    (``effx_lab.quant.models.QuantizedLinear``, a QAT layer, a masked or pruned linear)
    is still found by :func:`linear_names` and recorded by
    :func:`collect_linear_inputs`.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {describe(module)}")
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return False
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.ndim == 2 and w.dtype.is_floating_point


def _check_module(name: str, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {describe(model)}")
    return model


def _check_predicate(pred: Any) -> Callable[[nn.Module], bool]:
    if pred is None:
        return is_linear
    if not callable(pred):
        raise TypeError(
            "is_linear must be None or a callable (module) -> bool, "
            f"got {describe(pred)}"
        )
    return pred


def _linear_modules(
    model: nn.Module, pred: Callable[[nn.Module], bool]
) -> dict[str, nn.Module]:
    """``{name: module}`` of the linear layers of ``model`` in ``named_modules`` order;
    a module inside one already found is not listed again (replacing the outer one
    replaces it)."""
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in found):
            continue
        if pred(m):
            found[name] = m
    return found


def linear_names(
    model: nn.Module, *, is_linear: Callable[[nn.Module], bool] | None = None
) -> list[str]:
    """Qualified names (as in ``model.named_modules()``, same order) of the linear
    layers of ``model``: the submodules for which ``is_linear(module)`` holds (default:
    :func:`is_linear`; pass ``lambda m: isinstance(m, nn.Linear)`` for plain float
    layers only). ``model`` itself is never listed, nor a module inside a listed one."""
    _check_module("model", model)
    return list(_linear_modules(model, _check_predicate(is_linear)))


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the qualified name ``name`` (e.g. ``"layers.0.mlp.fc1"``) of
    ``model``, in place. The parent module must exist (``ValueError`` otherwise)."""
    _check_module("model", model)
    if not isinstance(name, str) or not name:
        raise TypeError(
            "name must be a non-empty str (a qualified module name), "
            f"got {describe(name)}"
        )
    _check_module("new", new)
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ValueError(
            f"name must be a qualified name under model, got {name!r}: model has no "
            f"submodule {parent_name!r}"
        ) from None
    setattr(parent, child, new)


def _check_skip(skip: Any, names: list[str]) -> set[str]:
    if isinstance(skip, str) or not isinstance(skip, Iterable):
        raise TypeError(
            f"skip must be a list/tuple/set of layer names, got {describe(skip)}"
        )
    skip = set(skip)
    unknown = sorted(skip - set(names), key=str)
    if unknown:
        raise ValueError(
            f"skip names {unknown} that are not linear layers of model; its linear "
            f"layers: {names}"
        )
    return skip


def replace_linears(
    model: nn.Module,
    make: Callable[[str, nn.Module], nn.Module],
    *,
    skip: Iterable[str] = (),
    is_linear: Callable[[nn.Module], bool] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """``model`` with every linear layer whose qualified name is not in ``skip``
    replaced by ``make(name, linear)``.

    By default a deep copy is edited and returned (``linear`` is the *copy*'s layer:
    ``model`` itself is never touched); ``inplace=True`` edits ``model`` and returns it.
    Layers are replaced one at a time in :func:`linear_names` order, so when ``make``
    runs for layer ``k`` the model being edited already holds the replacements of the
    earlier layers (sequential calibration, as in GPTQ, relies on that). ``make`` must
    return an ``nn.Module``; names in ``skip`` must be linear layers of ``model`` (a
    typo raises instead of silently replacing everything). ``is_linear`` is as in
    :func:`linear_names`.
    """
    _check_module("model", model)
    if not callable(make):
        raise TypeError(
            "make must be a callable make(name, linear) -> nn.Module, "
            f"got {describe(make)}"
        )
    inplace = check_bool("inplace", inplace)
    names = linear_names(model, is_linear=is_linear)
    skip = _check_skip(skip, names)
    new_model = model if inplace else copy.deepcopy(model)
    for name in names:
        if name in skip:
            continue
        new = make(name, new_model.get_submodule(name))
        if not isinstance(new, nn.Module):
            raise TypeError(
                f"make({name!r}, linear) must return an nn.Module, got {describe(new)}"
            )
        set_submodule(new_model, name, new)
    return new_model


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (else first buffer; CPU for a model
    with neither)."""
    _check_module("model", model)
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# ======================================================================================
# Recording the inputs of the linear layers of a token-in model (TinyLM)
# ======================================================================================
class _StopForward(Exception):
    """Raised by a recording hook once every requested layer has run: the rest of the
    forward pass is skipped."""


def _record(
    model: nn.Module,
    tokens: Any,
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    names: Iterable[str] | None,
    absmax: bool,
    stop_early: bool,
    is_linear: Callable[[nn.Module], bool] | None,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on consecutive windows of ``tokens`` and record, for the linear
    layers ``names``, either their inputs ``[n_tokens, in]`` or the per-feature max
    ``|x|`` ``[in]``."""
    _check_module("model", model)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    cfg = getattr(model, "config", None)
    max_seq_len = getattr(cfg, "max_seq_len", None)
    if isinstance(max_seq_len, int) and seq_len > max_seq_len:
        raise ValueError(
            f"seq_len must be <= the model's max_seq_len={max_seq_len}, got {seq_len}"
        )
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, min_value=1)
    stop_early = check_bool("stop_early", stop_early)
    vocab = getattr(cfg, "vocab_size", None)
    stream = check_token_stream(
        "tokens", tokens, min_len=seq_len, allow_torch=True,
        vocab_size=vocab if isinstance(vocab, int) else None,
    )
    if isinstance(stream, np.ndarray):
        stream = torch.from_numpy(np.ascontiguousarray(stream))
    stream = stream.long()
    layers = _linear_modules(model, _check_predicate(is_linear))
    if not layers:
        raise ValueError(
            "model has no linear layer to record "
            "(is_linear holds for none of its modules)"
        )
    if names is None:
        wanted = list(layers)
    else:
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError(
                f"names must be a list of layer names or None, got {describe(names)}"
            )
        wanted = list(names)
        unknown = [n for n in wanted if n not in layers]
        if unknown:
            raise ValueError(
                f"names {unknown} are not linear layers of model; its linear layers: "
                f"{list(layers)}"
            )
    n_windows = stream.shape[0] // seq_len
    if max_tokens is not None:
        n_windows = min(n_windows, -(-max_tokens // seq_len))
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    windows = windows.to(model_device(model))
    store: dict[str, list[torch.Tensor]] = {n: [] for n in wanted}
    seen: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            store[name].append(x.abs().amax(dim=0) if absmax else x.clone())
            seen.add(name)
            if stop_early and len(seen) == len(wanted):
                raise _StopForward

        return hook

    handles = [layers[n].register_forward_hook(make_hook(n)) for n in wanted]
    try:
        with torch.no_grad():
            for b in range(0, n_windows, batch_size):
                seen.clear()
                try:
                    model(windows[b : b + batch_size])
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in wanted if not store[n]]
    if missing:
        raise ValueError(f"layers {missing} were never called by model's forward pass")
    if absmax:
        return {n: torch.stack(v).amax(dim=0) for n, v in store.items()}
    out = {n: torch.cat(v) for n, v in store.items()}
    if max_tokens is not None:
        out = {n: v[:max_tokens] for n, v in out.items()}
    return out


def collect_linear_inputs(
    model: nn.Module,
    tokens: Any,
    *,
    batch_size: int = 16,
    seq_len: int = 64,
    max_tokens: int | None = None,
    names: Iterable[str] | None = None,
    stop_early: bool = False,
    is_linear: Callable[[nn.Module], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """The inputs of the linear layers of a token-in model (e.g. TinyLM), recorded with
    forward hooks.

    ``tokens`` (a 1-D integer stream, NumPy or torch; inside the model's vocabulary when
    its ``config`` has a ``vocab_size``) is cut into consecutive windows of ``seq_len``
    (a tail shorter than a window is dropped), which run ``batch_size`` at a time.
    Returns ``{name: float32 tensor [n_tokens, in]}`` on the model's device for every
    linear layer (see :func:`is_linear`: an already partly replaced model can be
    recorded, as GPTQ's sequential calibration does), or only for ``names``.
    ``max_tokens`` keeps the first ``max_tokens`` rows. ``stop_early=True`` ends each
    forward pass as soon as every requested layer has run (much less work for an early
    layer; wrong for a layer called twice in one pass).
    """
    return _record(
        model, tokens, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens,
        names=names, absmax=False, stop_early=stop_early, is_linear=is_linear,
    )


def linear_input_absmax(
    model: nn.Module,
    tokens: Any,
    *,
    batch_size: int = 16,
    seq_len: int = 64,
    max_tokens: int | None = None,
    names: Iterable[str] | None = None,
    stop_early: bool = False,
    is_linear: Callable[[nn.Module], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-input-feature ``max |x|`` (float32 ``[in]``) of each linear layer over the
    windows: the statistic of SmoothQuant's ``act_absmax``, LLM.int8's outlier analysis
    or Wanda's activation norms. Same arguments as :func:`collect_linear_inputs`,
    without storing the inputs (``max_tokens`` rounds up to whole windows)."""
    return _record(
        model, tokens, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens,
        names=names, absmax=True, stop_early=stop_early, is_linear=is_linear,
    )


# ======================================================================================
# MiniLM: a parameter dict whose linear layers are reached through minilm_forward's hook
# ======================================================================================
#: the six linear layers of each MiniLM encoder layer, in execution order
MINILM_LINEAR_SUFFIXES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def minilm_linear_names(config: MiniLMConfig) -> list[str]:
    """The ``num_hidden_layers * 6`` linear layers of MiniLM in execution order (query,
    key, value, attention.output.dense, intermediate.dense, output.dense of each layer),
    e.g. ``"encoder.layer.3.intermediate.dense"``; ``params[name + ".weight"]`` is
    ``[out, in]``."""
    check_minilm_config(config)
    return [
        f"encoder.layer.{i}.{s}"
        for i in range(config.num_hidden_layers)
        for s in MINILM_LINEAR_SUFFIXES
    ]


def check_minilm_linear_weights(params: Any, config: MiniLMConfig) -> dict:
    """Return ``params`` if it is a dict holding ``name + ".weight"`` for every name of
    :func:`minilm_linear_names`, else raise ``TypeError``/``ValueError`` naming
    ``params``."""
    names = minilm_linear_names(config)
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be a dict (from load_minilm()), got {describe(params)}"
        )
    missing = [n + ".weight" for n in names if n + ".weight" not in params]
    if missing:
        raise ValueError(
            f"params is missing {len(missing)} linear weights, e.g. {missing[0]!r}: "
            "pass load_minilm()'s dict"
        )
    return params


def check_ids_mask(ids: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` as int64 tensors (NumPy or torch in; ``mask`` moved to ``ids``'
    device), both ``[batch, seq]`` with ``batch, seq >= 1``, every row of ``mask`` with
    a real token (a 1); raises naming ``ids`` or ``mask``."""
    check_array("ids", ids, ndim=2, dtype_kind="iu", allow_torch=True)
    check_array("mask", mask, ndim=2, dtype_kind="iub", allow_torch=True)
    ids_t = torch.as_tensor(ids).long()
    mask_t = torch.as_tensor(mask).to(ids_t.device).long()
    if tuple(mask_t.shape) != tuple(ids_t.shape):
        raise ValueError(
            f"mask must have the shape of ids {tuple(ids_t.shape)}, "
            f"got {tuple(mask_t.shape)}"
        )
    if ids_t.shape[0] < 1 or ids_t.shape[1] < 1:
        raise ValueError(
            "ids must have shape [batch, seq] with batch >= 1 and seq >= 1, "
            f"got {tuple(ids_t.shape)}"
        )
    empty = torch.nonzero(~mask_t.bool().any(dim=1))
    if empty.numel():
        raise ValueError(
            "mask must select at least one real token in every sentence, but row "
            f"{int(empty[0])} is all zeros"
        )
    return ids_t, mask_t


def minilm_batches(
    ids: Any, mask: Any, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(ids, mask)`` of consecutive batches of ``batch_size`` sentences, each cut to
    its longest sentence (the trailing columns that are padding in every row are
    dropped), as if each batch had been tokenized on its own: less work, and statistics
    of a batch (a dynamic activation scale) never see padding the batch does not
    need."""
    ids_t, mask_t = check_ids_mask(ids, mask)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    return _batches(ids_t, mask_t, batch_size)


def _batches(ids: torch.Tensor, mask: torch.Tensor, batch_size: int):
    for b in range(0, ids.shape[0], batch_size):
        i, m = ids[b : b + batch_size], mask[b : b + batch_size]
        cols = torch.nonzero(m.any(dim=0))
        length = int(cols.max()) + 1 if cols.numel() else 1
        yield i[:, :length], m[:, :length]


def _check_hook(linear: Any) -> LinearHook | None:
    if linear is not None and not callable(linear):
        raise TypeError(
            "linear must be None or a callable linear(name, x, weight, bias) -> y, "
            f"got {describe(linear)}"
        )
    return linear


def _check_max_tokens(max_tokens: Any) -> int | None:
    if max_tokens is None:
        return None
    return check_int("max_tokens", max_tokens, min_value=1)


def record_minilm_linears(
    params: dict[str, Any],
    config: MiniLMConfig,
    ids: Any,
    mask: Any,
    *,
    keep_inputs: bool = True,
    max_tokens: int | None = 4096,
    batch_size: int = 64,
    linear: LinearHook | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics of every linear layer of MiniLM over the *real* (unpadded) tokens of
    ``ids``/``mask``.

    Returns ``{name: {"in_absmax": [in], "out_absmax": [out], "inputs": [n, in]}}``
    (float32, CPU): per-feature ``max |x|`` of the layer's input and output, and
    (``keep_inputs``) the inputs themselves, the first ``max_tokens`` real tokens
    (``None``: all), e.g. for GPTQ's or SparseGPT's Hessian. The forward runs
    ``batch_size`` sentences at a time (:func:`minilm_batches`) with each layer computed
    by ``linear(name, x, weight, bias)`` (``None``: ``F.linear``, the float model; a
    quantization or pruning hook records what the layers see in that model).
    """
    from effx_lab.models.torch_ops import minilm_forward

    check_minilm_linear_weights(params, config)
    keep_inputs = check_bool("keep_inputs", keep_inputs)
    max_tokens = _check_max_tokens(max_tokens)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    inner = _check_hook(linear)
    ids_t, mask_t = check_ids_mask(ids, mask)
    names = minilm_linear_names(config)
    in_max: dict[str, torch.Tensor] = {}
    out_max: dict[str, torch.Tensor] = {}
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    kept = {n: 0 for n in names}
    real: torch.Tensor = torch.empty(0)

    def hook(name: str, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> Any:
        y = F.linear(x, weight, bias) if inner is None else inner(name, x, weight, bias)
        xr, yr = x[real].float(), y[real].float()
        if xr.shape[0]:
            a, o = xr.abs().amax(dim=0).cpu(), yr.abs().amax(dim=0).cpu()
            in_max[name] = torch.maximum(in_max[name], a) if name in in_max else a
            out_max[name] = torch.maximum(out_max[name], o) if name in out_max else o
        if keep_inputs and (max_tokens is None or kept[name] < max_tokens):
            take = xr if max_tokens is None else xr[: max_tokens - kept[name]]
            inputs[name].append(take.cpu().clone())
            kept[name] += take.shape[0]
        return y

    with torch.no_grad():
        for i, m in _batches(ids_t, mask_t, batch_size):
            real = m.bool()
            minilm_forward(params, config, i, m, linear=hook)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for n in names:
        out[n] = {"in_absmax": in_max[n], "out_absmax": out_max[n]}
        if keep_inputs:
            out[n]["inputs"] = torch.cat(inputs[n])
    return out


def minilm_layer_inputs(
    params: dict[str, Any],
    config: MiniLMConfig,
    ids: Any,
    mask: Any,
    name: str,
    *,
    max_tokens: int | None = 4096,
    batch_size: int = 64,
    linear: LinearHook | None = None,
) -> torch.Tensor:
    """The inputs ``[n, in]`` (float32, on ``ids``' device) that MiniLM's linear layer
    ``name`` receives on the real tokens of ``ids``/``mask``, at most ``max_tokens``
    (``None``: all).

    Each forward pass stops at that layer (the layers after it never run) and batches
    stop once ``max_tokens`` are kept: the cheap recording for sequential calibration,
    where layer ``k`` is calibrated on the model whose layers before it are already
    compressed (pass those ``params``, or a ``linear`` hook computing them; ``None``:
    ``F.linear``).
    """
    from effx_lab.models.torch_ops import minilm_forward

    check_minilm_linear_weights(params, config)
    names = minilm_linear_names(config)
    if name not in names:
        raise ValueError(
            f"name must be one of MiniLM's linear layers {names[:6]} ..., got {name!r}"
        )
    max_tokens = _check_max_tokens(max_tokens)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    inner = _check_hook(linear)
    ids_t, mask_t = check_ids_mask(ids, mask)
    chunks: list[torch.Tensor] = []
    kept = 0
    real = torch.empty(0, dtype=torch.bool)

    def hook(layer: str, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> Any:
        nonlocal kept
        if layer == name:
            xr = x[real].float()
            take = xr if max_tokens is None else xr[: max_tokens - kept]
            chunks.append(take.clone())
            kept += take.shape[0]
            raise _StopForward
        if inner is None:
            return F.linear(x, weight, bias)
        return inner(layer, x, weight, bias)

    with torch.no_grad():
        for i, m in _batches(ids_t, mask_t, batch_size):
            if max_tokens is not None and kept >= max_tokens:
                break
            real = m.bool()
            try:
                minilm_forward(params, config, i, m, linear=hook)
            except _StopForward:
                pass
    return torch.cat(chunks)
