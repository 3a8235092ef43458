"""A small nanoGPT-style language model whose token-mixing and feed-forward sublayers
are pluggable.

``LM(spec, seed)`` maps ``(B, n)`` int64 token ids to ``(B, n, vocab_size)`` logits::

    h_0 = E[tokens] + P[:n]           embeddings: tokens N(0, 0.02), positions N(0, .01)
    h_{l+1} = ffn_l(mixer_l(h_l))     each sublayer pre-LN and residual: h + f(LN(h))
    logits = LN(h_L) E^T              final LayerNorm, output head tied to the embedding

A **sublayer** is functional, in the course's layout: a dict of parameters (float32
NumPy arrays, weights stored ``(in, out)``: ``y = x @ w + b``) and a function ``apply(x,
params) -> x + f(norm(x))`` that owns its normalisation and its residual. Layer ``l``
keeps the parameters of its sublayers in one ``nn.ParameterDict`` (``model.layers[l]``,
keys as the sublayers name them), so ``{k: v.detach().numpy() for k, v in
model.layers[l].items()}`` feeds the NumPy references directly, and any parameter can be
masked, pruned or swapped by name. The shared side registers:

* mixer ``"softmax"``: pre-LN multi-head softmax attention
  (:func:`effx_lab.attention.torch_ops.multi_head_attention`; options ``n_heads`` and
  ``head_dim``, for fewer heads than ``d_model`` needs, as after head pruning; keys
  ``ln1_g, ln1_b, wq, bq, wk, bk, wv, bv, wo, bo``);
* FFN ``"gelu"``: pre-LN ``gelu(h W1 + b1) W2 + b2`` (option ``d_ff``, default ``4 d``;
  keys ``ln2_g, ln2_b, w1, b1, w2, b2``). Together they are exactly the pre-LN
  Transformer layer of :func:`effx_lab.attention.torch_ops.transformer_layer`, with the
  weights of :func:`effx_lab.attention.params.init_transformer_layer_params` for the
  layer's seed.

:meth:`LM.rebuild_sublayer` gives one layer's sublayer new options and new (smaller)
parameters in place: structured pruning (chapter 3) shrinks layers this way, so layers
may differ (:meth:`LM.sublayer_options`). With ``kind=`` it also swaps the sublayer for
another registered one (chapter 5 turns the dense FFN of every other layer into a
mixture of experts this way); :meth:`LM.sublayer_kind` names a layer's sublayers.

Chapters add their own sublayers with :func:`register_mixer` / :func:`register_ffn` when
they are imported (shared packages never import a chapter). Chapter 7 (``import
effx_lab.flash``) registers the mixers ``"gau"`` and ``"flash"`` (GAU and FLASH layers,
which have no separate FFN: ``ffn=None``). A mixture-of-experts chapter would register
its FFN the same way::

    import functools
    from effx_lab.models import lm

    def moe_ffn(d_model, *, seed, causal, n_experts=4, d_ff=None):
        params = init_moe_params(d_model, n_experts, d_ff, seed=seed)  # NumPy, its own
        # moe_layer(x, params, top_k) -> x + f(LN(x)), in torch
        return lm.Sublayer(params, functools.partial(moe_layer, top_k=2))

    lm.register_ffn("moe", moe_ffn)
    spec = lm.LMSpec(mixer="softmax", mixer_options={"n_heads": 4},
                     ffn="moe", ffn_options={"n_experts": 8})
    model = lm.LM(spec, seed=0)

A factory is called as ``factory(d_model, seed=layer_seed, causal=spec.causal,
**options)`` once per layer and returns a :class:`Sublayer`; it validates its options
(``TypeError``/``ValueError`` naming them) and checks its allocation (the course's
initialisers call :func:`effx_lab._validate.check_alloc`). The mixer and the FFN of a
layer get the same seed (derived from the model's seed and the layer's index); the
``"gelu"`` FFN draws its weights after the attention's four matrices, as
:func:`~effx_lab.attention.params.init_transformer_layer_params` does, so the two make
the same Transformer layer as before they were split.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import (
    check_alloc,
    check_bool,
    check_choice,
    check_instance,
    check_int,
    describe,
)
from effx_lab.attention import torch_ops as attn_ops
from effx_lab.attention.params import (
    init_mha_params,
    init_transformer_layer_params,
    to_torch,
)
from effx_lab.attention.shapes import linear, tensor_params

__all__ = [
    "LM",
    "LMSpec",
    "Sublayer",
    "ffns",
    "gelu_ffn",
    "mixers",
    "register_ffn",
    "register_mixer",
    "softmax_attention_mixer",
]

_LN_EPS = 1e-5

SublayerFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Sublayer:
    """What a mixer or FFN factory returns: its initial ``params`` (a dict of float32
    NumPy arrays) and ``apply(x, params) -> x + f(norm(x))`` (torch, differentiable,
    output of ``x``'s shape and dtype). ``no_decay`` names 2-D parameters that must get
    no weight decay (per-dimension scales, such as GAU's ``gamma`` and ``beta``);
    :func:`effx_lab.models.training.train` reads them through
    :meth:`LM.no_weight_decay`."""

    params: dict[str, np.ndarray]
    apply: SublayerFn
    no_decay: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.params, Mapping) or not self.params:
            raise TypeError(
                "params must be a non-empty dict of NumPy arrays, got "
                f"{describe(self.params)}"
            )
        for key, value in self.params.items():
            if not isinstance(key, str) or not key:
                raise TypeError(
                    f"params keys must be non-empty str, got {describe(key)}"
                )
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise TypeError(
                    f"params[{key!r}] must be a float NumPy array, "
                    f"got {describe(value)}"
                )
        if not callable(self.apply):
            raise TypeError(
                f"apply must be a callable apply(x, params), got {describe(self.apply)}"
            )
        if not isinstance(self.no_decay, (tuple, list)) or not all(
            isinstance(k, str) for k in self.no_decay
        ):
            raise TypeError(
                "no_decay must be a tuple of parameter names, got "
                f"{describe(self.no_decay)}"
            )
        unknown = sorted(set(self.no_decay) - set(self.params))
        if unknown:
            raise ValueError(
                f"no_decay names parameters the sublayer does not have: {unknown}"
            )


# --------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------

_MIXERS: dict[str, Callable[..., Sublayer]] = {}
_FFNS: dict[str, Callable[..., Sublayer]] = {}


def _register(
    table: dict[str, Callable[..., Sublayer]],
    what: str,
    name: Any,
    factory: Any,
    replace: Any,
) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"name must be an identifier-like str (e.g. 'gau'), got {describe(name)}"
        )
    if not callable(factory):
        raise TypeError(
            "factory must be a callable factory(d_model, *, seed, causal, **options), "
            f"got {describe(factory)}"
        )
    replace = check_bool("replace", replace)
    old = table.get(name)
    same = old is not None and (old.__module__, old.__qualname__) == (
        factory.__module__,
        factory.__qualname__,
    )
    if old is not None and not same and not replace:
        raise ValueError(
            f"a {what} named {name!r} is already registered "
            f"({old.__module__}.{old.__qualname__}); "
            f"pick another name or pass replace=True"
        )
    table[name] = factory


def register_mixer(
    name: str, factory: Callable[..., Sublayer], *, replace: bool = False
) -> None:
    """Make ``LMSpec(mixer=name)`` build its token-mixing sublayers with ``factory``
    (see the module docstring for the contract). Registering the same function again (a
    module reload) is allowed; another function under a taken name needs
    ``replace=True``."""
    _register(_MIXERS, "mixer", name, factory, replace)


def register_ffn(
    name: str, factory: Callable[..., Sublayer], *, replace: bool = False
) -> None:
    """Make ``LMSpec(ffn=name)`` build its feed-forward sublayers with ``factory`` (as
    :func:`register_mixer`)."""
    _register(_FFNS, "FFN", name, factory, replace)


def mixers() -> tuple[str, ...]:
    """Names of the registered token-mixing sublayers."""
    return tuple(sorted(_MIXERS))


def ffns() -> tuple[str, ...]:
    """Names of the registered feed-forward sublayers."""
    return tuple(sorted(_FFNS))


# --------------------------------------------------------------------------------------
# the shared sublayers: softmax attention and the GELU FFN (a Transformer layer, split)
# --------------------------------------------------------------------------------------

_MHA_KEYS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")
_FFN_KEYS = ("ln2_g", "ln2_b", "w1", "b1", "w2", "b2")


def _softmax_apply(
    x: torch.Tensor,
    p: Mapping[str, torch.Tensor],
    *,
    n_heads: int,
    causal: bool,
    head_dim: int | None = None,
) -> torch.Tensor:
    t = tensor_params(p, ("ln1_g", "ln1_b"), x)
    h = F.layer_norm(x, (x.shape[-1],), t["ln1_g"], t["ln1_b"], eps=_LN_EPS)
    if head_dim is None or n_heads * head_dim == x.shape[-1]:
        return x + attn_ops.multi_head_attention(
            h, {k: p[k] for k in _MHA_KEYS}, n_heads, causal
        )
    # heads of their own width (after head pruning): project, split, attend, merge
    t = tensor_params(p, _MHA_KEYS, x)
    q, k, v = (
        linear(h, t[f"w{c}"], t[f"b{c}"]).unflatten(-1, (n_heads, head_dim))
        .transpose(-2, -3)
        for c in "qkv"
    )  # each (..., n_heads, n, head_dim)
    o = attn_ops.softmax_attention(q, k, v, causal, 1.0 / math.sqrt(head_dim))
    return x + linear(o.transpose(-2, -3).flatten(-2), t["wo"], t["bo"])


def _gelu_apply(x: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    t = tensor_params(p, _FFN_KEYS, x)
    f = F.layer_norm(x, (x.shape[-1],), t["ln2_g"], t["ln2_b"], eps=_LN_EPS)
    return x + linear(
        F.gelu(linear(f, t["w1"], t["b1"]), approximate="tanh"), t["w2"], t["b2"]
    )


def softmax_attention_mixer(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    n_heads: int = 4,
    head_dim: int | None = None,
) -> Sublayer:
    """The ``"softmax"`` mixer: ``x + MHA(LN(x))`` with ``n_heads`` heads (the
    materialised softmax of :mod:`effx_lab.attention.torch_ops`), weights of
    :func:`~effx_lab.attention.params.init_mha_params`.

    ``head_dim`` (default ``d_model // n_heads``) lets the heads be narrower or fewer
    than ``d_model`` needs, as after head pruning (``n_heads`` of the original width):
    ``wq, wk, wv`` are then ``(d_model, n_heads * head_dim)``, ``wo`` is ``(n_heads *
    head_dim, d_model)``, scores are scaled by ``1 / sqrt(head_dim)``, and the weights
    are drawn ``N(0, 0.02)`` with zero biases, as ``init_mha_params`` draws them.
    """
    check_bool("causal", causal)
    d_model = check_int("d_model", d_model, min_value=1)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if head_dim is not None:
        head_dim = check_int("head_dim", head_dim, min_value=1)
    if head_dim is None or n_heads * head_dim == d_model:
        params = init_mha_params(d_model, n_heads, seed=seed)
        head_dim = None  # the square layer of multi_head_attention
    else:
        inner = n_heads * head_dim
        check_alloc(
            f"softmax_attention_mixer(d_model={d_model}, n_heads={n_heads}, "
            f"head_dim={head_dim})",
            4 * (4 * (d_model + 1) * inner + 8 * d_model * inner),
        )
        rng = np.random.default_rng(seed)
        params = {}
        for c in "qkv":
            params[f"w{c}"] = rng.normal(0.0, 0.02, (d_model, inner)).astype(np.float32)
            params[f"b{c}"] = np.zeros(inner, dtype=np.float32)
        params["wo"] = rng.normal(0.0, 0.02, (inner, d_model)).astype(np.float32)
        params["bo"] = np.zeros(d_model, dtype=np.float32)
    params["ln1_g"] = np.ones(d_model, dtype=np.float32)
    params["ln1_b"] = np.zeros(d_model, dtype=np.float32)
    return Sublayer(
        params,
        functools.partial(
            _softmax_apply, n_heads=n_heads, causal=causal, head_dim=head_dim
        ),
    )


def gelu_ffn(
    d_model: int, *, seed: int, causal: bool, d_ff: int | None = None
) -> Sublayer:
    """The ``"gelu"`` FFN: ``x + gelu(LN(x) W1 + b1) W2 + b2`` of width ``d_ff``
    (default ``4 * d_model``); its weights are those
    :func:`~effx_lab.attention.params.init_transformer_layer_params` draws for ``seed``
    after the attention's (``causal`` does not matter to it)."""
    check_bool("causal", causal)
    layer = init_transformer_layer_params(d_model, 1, d_ff, seed=seed)
    return Sublayer({k: layer[k] for k in _FFN_KEYS}, _gelu_apply)


register_mixer("softmax", softmax_attention_mixer)
register_ffn("gelu", gelu_ffn)


# --------------------------------------------------------------------------------------
# the specification and the model
# --------------------------------------------------------------------------------------


def _check_options(
    what: str, name: str, factory: Callable[..., Sublayer], options: Any, causal: bool
) -> dict:
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            f"{what}_options must be a dict of keyword arguments, "
            f"got {describe(options)}"
        )
    options = dict(options)
    try:
        inspect.signature(factory).bind(1, seed=0, causal=causal, **options)
    except TypeError as err:
        raise TypeError(
            f"{what}_options {options} do not fit the {what} {name!r} "
            f"(it takes {inspect.signature(factory)}): {err}"
        ) from None
    return options


def _lookup(
    table: dict[str, Callable[..., Sublayer]], what: str, name: Any
) -> Callable[..., Sublayer]:
    if name not in table:
        raise ValueError(
            f"{what} must be a registered {what} name, one of {sorted(table)}; got "
            f"{name!r} (chapter packages register theirs when imported: "
            "import effx_lab.flash adds 'gau' and 'flash')"
        )
    return table[name]


@dataclass(frozen=True)
class LMSpec:
    """What :class:`LM` builds: ``n_layers`` layers, each a ``mixer`` sublayer then an
    ``ffn`` sublayer (``ffn=None``: none, for units such as GAU that are their own FFN),
    built by the registered factories with ``mixer_options`` / ``ffn_options``; widths
    ``d_model``, ``vocab_size`` tokens, a learned position table of ``max_len`` (the
    longest sequence accepted); ``causal`` is passed to every factory.
    """

    mixer: str = "softmax"
    ffn: str | None = "gelu"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    max_len: int = 1024
    causal: bool = True
    mixer_options: dict[str, Any] = field(default_factory=dict, hash=False)
    ffn_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, min_value=1)
        check_int("d_model", self.d_model, min_value=1)
        check_int("n_layers", self.n_layers, min_value=1)
        check_int("max_len", self.max_len, min_value=1)
        check_bool("causal", self.causal)
        factory = _lookup(_MIXERS, "mixer", self.mixer)
        object.__setattr__(
            self,
            "mixer_options",
            _check_options(
                "mixer", self.mixer, factory, self.mixer_options, self.causal
            ),
        )
        if self.ffn is None:
            if self.ffn_options:
                raise ValueError(
                    "ffn_options need an ffn; with ffn=None leave them empty, "
                    f"got {self.ffn_options}"
                )
        else:
            factory = _lookup(_FFNS, "ffn", self.ffn)
            object.__setattr__(
                self,
                "ffn_options",
                _check_options("ffn", self.ffn, factory, self.ffn_options, self.causal),
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (``LMSpec.from_dict(spec.to_dict()) == spec``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LMSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {describe(data)}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown LMSpec fields {unknown}; expected a subset of "
                f"{[f.name for f in fields(cls)]}"
            )
        return cls(**data)


def _layer_seed(seed: int, index: int) -> int:
    """Seed of part ``index`` of a model (0: the embeddings, ``l + 1``: layer ``l``),
    derived from the model seed by ``numpy.random.SeedSequence`` (independent
    streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _nbytes(params: Mapping[str, np.ndarray]) -> int:
    return int(sum(4 * math.prod(v.shape) for v in params.values()))


class LM(nn.Module):
    """The language model of :class:`LMSpec` (see the module docstring); build it with
    ``LM(spec, seed)``.

    Parameters: ``tok_emb`` ``(vocab_size, d_model)``, ``pos_emb`` ``(max_len,
    d_model)``, ``ln_f_g`` and ``ln_f_b``, and ``layers[l]``, an ``nn.ParameterDict``
    holding the parameters of layer ``l``'s sublayers. The same ``(spec, seed)`` gives
    the same weights. ``causal=False`` makes a bidirectional model.
    """

    def __init__(self, spec: LMSpec, seed: int = 0) -> None:
        super().__init__()
        check_instance("spec", spec, LMSpec, "an LMSpec")
        seed = check_int("seed", seed, min_value=0)
        d, v, n = spec.d_model, spec.vocab_size, spec.max_len
        what = f"{type(self).__name__}({spec})"
        emb_bytes = 4 * (v + n) * d + 2 * d
        # the embeddings, and the float64 draw of the larger table on top
        check_alloc(what, emb_bytes + 8 * max(v, n) * d)
        self.spec = spec
        self.seed = seed
        self._options = [
            {"mixer": dict(spec.mixer_options), "ffn": dict(spec.ffn_options)}
            for _ in range(spec.n_layers)
        ]
        self._kinds = [
            {"mixer": spec.mixer, "ffn": spec.ffn} for _ in range(spec.n_layers)
        ]
        layers, self._plans, no_decay = [], [], []
        for i in range(spec.n_layers):
            parts = self._sublayers(_layer_seed(seed, i + 1))
            params: dict[str, np.ndarray] = {}
            for part in parts:
                clash = sorted(set(params) & set(part.params))
                if clash:
                    raise ValueError(
                        f"the mixer {spec.mixer!r} and the ffn {spec.ffn!r} both "
                        f"name parameters {clash}"
                    )
                params.update(part.params)
            if i == 0:  # the whole model, checked before building the other layers
                check_alloc(what, emb_bytes + spec.n_layers * _nbytes(params))
            tensors = to_torch(params)
            layers.append(
                nn.ParameterDict({k: nn.Parameter(t) for k, t in tensors.items()})
            )
            self._plans.append(
                tuple((part.apply, tuple(part.params)) for part in parts)
            )
            no_decay += [f"layers.{i}.{k}" for part in parts for k in part.no_decay]
        self._no_decay = tuple(no_decay)
        rng = np.random.default_rng(_layer_seed(seed, 0))
        tok = rng.normal(0.0, 0.02, (v, d)).astype(np.float32)
        pos = rng.normal(0.0, 0.01, (n, d)).astype(np.float32)
        self.tok_emb = nn.Parameter(torch.from_numpy(tok))
        self.pos_emb = nn.Parameter(torch.from_numpy(pos))
        self.layers = nn.ModuleList(layers)
        self.ln_f_g = nn.Parameter(torch.ones(d))
        self.ln_f_b = nn.Parameter(torch.zeros(d))

    def _roles(self) -> tuple[str, ...]:
        return ("mixer",) if self.spec.ffn is None else ("mixer", "ffn")

    def sublayer_options(self, index: int, role: str) -> dict[str, Any]:
        """The options layer ``index``'s ``role`` sublayer (``"mixer"`` or ``"ffn"``)
        was built with: the spec's, or those :meth:`rebuild_sublayer` gave it."""
        index = check_int("index", index, min_value=0, max_value=len(self.layers) - 1)
        role = check_choice("role", role, self._roles())
        return dict(self._options[index][role])

    def sublayer_kind(self, index: int, role: str) -> str:
        """The registered name of layer ``index``'s ``role`` sublayer (``"mixer"`` or
        ``"ffn"``): the spec's, or the ``kind`` :meth:`rebuild_sublayer` gave it."""
        index = check_int("index", index, min_value=0, max_value=len(self.layers) - 1)
        role = check_choice("role", role, self._roles())
        return self._kinds[index][role]

    def rebuild_sublayer(
        self,
        index: int,
        role: str,
        params: Mapping[str, torch.Tensor],
        *,
        kind: str | None = None,
        **options: Any,
    ) -> None:
        """Give layer ``index``'s ``role`` sublayer (``"mixer"`` or ``"ffn"``) new
        ``options`` and new parameters, in place: structured pruning shrinks a layer
        this way (``n_heads=2, head_dim=16`` for a ``"softmax"`` mixer that kept 2 of
        its heads, ``d_ff=256`` for a ``"gelu"`` FFN).

        The sublayer's factory is called with the layer's current options updated by
        ``options`` (for its ``apply`` and the names and shapes of its parameters; its
        random weights are discarded); ``params`` must hold exactly those names, as
        float tensors of exactly those shapes. They replace the sublayer's parameters
        in ``self.layers[index]`` as new ``nn.Parameter`` objects (copies, with the
        dtype, device and ``requires_grad`` of the parameters they replace; names kept
        keep their place in the layer). Everything is checked before the model is
        changed. An optimizer built before holds the old parameters: build a new one.

        ``kind`` (a registered mixer or FFN name, for ``role``) makes the sublayer one
        of another kind, built with ``options`` alone (the old kind's options do not
        carry over): chapter 5's ``moefy_`` turns a ``"gelu"`` FFN into an ``"moe"``
        one. :meth:`sublayer_kind` tells a layer's kind afterwards.
        """
        index = check_int("index", index, min_value=0, max_value=len(self.layers) - 1)
        role = check_choice("role", role, self._roles())
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params must be a dict of name -> torch tensor, got {describe(params)}"
            )
        spec = self.spec
        table = _MIXERS if role == "mixer" else _FFNS
        current = self._kinds[index][role]
        name = current if kind is None else kind
        factory = _lookup(table, role, name)
        base = self._options[index][role] if name == current else {}
        merged = _check_options(role, name, factory, {**base, **options}, spec.causal)
        part = factory(
            spec.d_model,
            seed=_layer_seed(self.seed, index + 1),
            causal=spec.causal,
            **merged,
        )
        if not isinstance(part, Sublayer):
            raise TypeError(
                f"the {role} factory {name!r} must return an lm.Sublayer, "
                f"got {describe(part)}"
            )
        if set(params) != set(part.params):
            raise ValueError(
                f"params must hold the parameters of the {role} {name!r} with "
                f"{merged}: {sorted(part.params)}, got {sorted(map(str, params))}"
            )
        layer = self.layers[index]
        slot = self._roles().index(role)
        old_keys = self._plans[index][slot][1]
        like = layer[old_keys[0]]
        new: dict[str, nn.Parameter] = {}
        for key, want in part.params.items():
            value = params[key]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(
                    f"params[{key!r}] must be a float torch tensor, got "
                    f"{describe(value)}"
                )
            if tuple(value.shape) != tuple(want.shape):
                raise ValueError(
                    f"params[{key!r}] must have shape {tuple(want.shape)} for the "
                    f"{role} {name!r} with {merged}, got {tuple(value.shape)}"
                )
            ref = layer[key] if key in old_keys else like
            new[key] = nn.Parameter(
                value.detach().to(device=ref.device, dtype=ref.dtype).clone(),
                requires_grad=ref.requires_grad,
            )
        for key in old_keys:
            if key not in new:
                del layer[key]
        for key, value in new.items():
            layer[key] = value
        plans = list(self._plans[index])
        plans[slot] = (part.apply, tuple(part.params))
        self._plans[index] = tuple(plans)
        self._options[index][role] = merged
        self._kinds[index][role] = name
        prefix = f"layers.{index}."
        self._no_decay = tuple(
            n
            for n in self._no_decay
            if not (n.startswith(prefix) and n[len(prefix) :] in old_keys)
        ) + tuple(prefix + k for k in part.no_decay)

    def _sublayers(self, seed: int) -> list[Sublayer]:
        """The mixer and (if any) the FFN of one layer, built by their factories."""
        spec = self.spec
        built = [("mixer", spec.mixer, _MIXERS[spec.mixer], spec.mixer_options)]
        if spec.ffn is not None:
            built.append(("ffn", spec.ffn, _FFNS[spec.ffn], spec.ffn_options))
        parts = []
        for role, name, factory, options in built:
            part = factory(spec.d_model, seed=seed, causal=spec.causal, **options)
            if not isinstance(part, Sublayer):
                raise TypeError(
                    f"the {role} factory {name!r} must return an lm.Sublayer, "
                    f"got {describe(part)}"
                )
            parts.append(part)
        return parts

    def _check_tokens(self, tokens: Any) -> torch.Tensor:
        spec = self.spec
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(
                "tokens must be a torch.LongTensor of shape (batch, n), "
                f"got {describe(tokens)}"
            )
        if tokens.dtype != torch.int64:
            raise TypeError(
                f"tokens must have dtype torch.int64 (token ids), got {tokens.dtype}"
            )
        if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise ValueError(
                "tokens must have shape (batch, n) with batch, n >= 1, "
                f"got shape {tuple(tokens.shape)}"
            )
        if tokens.shape[1] > spec.max_len:
            raise ValueError(
                f"tokens has n = {tokens.shape[1]} positions but the model's max_len "
                f"is {spec.max_len} "
                f"(the size of its position table)"
            )
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= spec.vocab_size:
            raise ValueError(
                f"tokens must lie in [0, {spec.vocab_size - 1}], "
                f"got values in [{lo}, {hi}]"
            )
        return tokens

    def _layer(self, h: torch.Tensor, index: int) -> torch.Tensor:
        """Layer ``index``: its mixing sublayer, then its FFN sublayer if it has one;
        each one is ``h + f(LN(h))`` on its own parameters, read by name from
        ``self.layers[index]``.
        """
        layer = self.layers[index]
        for apply, keys in self._plans[index]:
            h = apply(h, {key: layer[key] for key in keys})
        return h

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` int64 token ids in ``[0, vocab_size)``, ``n <= max_len`` -> ``(B,
        n, vocab_size)`` logits."""
        tokens = self._check_tokens(tokens)
        n = tokens.shape[1]
        h = self.tok_emb[tokens] + self.pos_emb[:n]
        for index in range(len(self.layers)):
            h = self._layer(h, index)
        h = F.layer_norm(h, (self.spec.d_model,), self.ln_f_g, self.ln_f_b, _LN_EPS)
        return h @ self.tok_emb.t()

    def no_weight_decay(self) -> tuple[str, ...]:
        """Names of 2-D parameters that get no weight decay (those the sublayers list in
        ``no_decay``)."""
        return self._no_decay

    def num_params(self) -> int:
        """Number of trainable scalars (the tied output head is counted once)."""
        return int(sum(p.numel() for p in self.parameters()))

    def extra_repr(self) -> str:
        spec = self.spec
        built = {"mixer": spec.mixer_options, "ffn": spec.ffn_options}
        kinds = {"mixer": spec.mixer, "ffn": spec.ffn}
        rebuilt: dict[int, dict[str, Any]] = {}
        for i, (o, k) in enumerate(zip(self._options, self._kinds)):
            changed = {
                role: (opts if k[role] == kinds[role] else {"kind": k[role], **opts})
                for role, opts in o.items()
                if opts != built[role] or k[role] != kinds[role]
            }
            if changed:
                rebuilt[i] = changed
        return (
            f"mixer={spec.mixer!r}, ffn={spec.ffn!r}, d_model={spec.d_model}, "
            f"layers={spec.n_layers}, "
            f"params={self.num_params():,}"
            + (f", rebuilt={rebuilt}" if rebuilt else "")
        )
