"""The Scaling Transformer's sparse layers as modules (04.4): for training in the shared
LM, and for timing single-token decode.

* :class:`SparseFFN` and :class:`SparseQKV`: ``nn.Module`` s around
  :func:`effx_lab.nm.torch_ops.sparse_ffn` / :func:`~effx_lab.nm.torch_ops.sparse_qkv`
  (read :mod:`effx_lab.nm._np_layers` for the method). :class:`SparseFFN` runs the
  training path (Gumbel noise from its own seeded generator, straight-through) in
  ``train()`` mode while autograd records, and the inference path (argmax, only the
  chosen units read) otherwise.
* Importing this module registers, with :mod:`effx_lab.models.lm`, the FFN
  ``"sparse_ffn"`` (options ``d_ff``, ``block``, ``rank``, ``tau``, ``activation``) and
  the mixer ``"sparse_qkv"`` (options ``n_heads``, ``n_modules``, ``kernel``): pre-LN
  causal softmax attention whose Q, K and V come from the sparse QKV layer, followed by
  a dense output projection ``wo``. So ``LM(LMSpec(mixer="sparse_qkv",
  ffn="sparse_ffn", ffn_options={"block": 8}))`` trains with
  :func:`effx_lab.models.training.train`. A sublayer function cannot see
  ``model.training``: the LM's sparse FFN takes the training path while autograd
  records (``train`` does) and the inference path under ``torch.no_grad()``
  (``evaluate`` and ``perplexity`` do).
* :func:`decode_model`: a stack of ``n_layers`` pre-LN layers of width ``d_model``
  (attention with a KV cache, then the FFN; dense or sparse FFN, dense or sparse QKV;
  ReLU FFNs as in the paper; no embedding or output head, whose cost is the same in
  every variant), built to time **single-token decode** with
  :func:`decode_step_time`. Its sparse FFN stores ``w1`` unit-major (``(d_ff, d)``,
  the chosen units' weights contiguous, as the paper's code does) and gathers the
  chosen units: ``d_ff / block`` rows of ``w1`` and of ``w2``.
  :func:`weight_bytes_per_token` counts the weights one token reads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import (
    check_alloc,
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    describe,
)
from effx_lab.attention import torch_ops as attn_ops
from effx_lab.attention.shapes import linear, tensor_params
from effx_lab.bench import check_threads, limit_threads, time_fn
from effx_lab.models import lm

from . import _torch_layers as TL
from ._np_layers import ACTIVATIONS, check_kernel

__all__ = [
    "DecodeModel",
    "SparseFFN",
    "SparseQKV",
    "decode_model",
    "decode_step_time",
    "gumbel_noise",
    "init_sparse_ffn_params",
    "init_sparse_qkv_params",
    "sparse_ffn_sublayer",
    "sparse_qkv_mixer",
    "weight_bytes_per_token",
]

_LN_EPS = 1e-5


# --------------------------------------------------------------------------------------
# parameters and noise
# --------------------------------------------------------------------------------------
def _check_ffn_dims(d_model: Any, d_ff: Any, block: Any, rank: Any) -> tuple[int, ...]:
    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    block = check_int("block", block, min_value=1)
    if d_ff % block:
        raise ValueError(
            f"block must divide d_ff = {d_ff} (one unit chosen per block), got {block}"
        )
    if rank is None:
        rank = max(1, d_model // block)  # the paper's d_lowrank = d_model / N
    rank = check_int("rank", rank, min_value=1)
    return d_model, d_ff, block, rank


def init_sparse_ffn_params(
    d_model: int, d_ff: int, block: int, rank: int | None = None, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """float32 parameters of a sparse FFN in the LM's layout: ``w1 (d, d_ff)``, ``w2
    (d_ff, d)`` drawn ``N(0, 0.02)`` (the LM's FFN init), zero biases, and the
    controller ``c1 (d, r)``, ``c2 (r, d_ff)`` drawn ``N(0, 1/d)`` and ``N(0, 1/r)``
    (logits of order one). ``rank`` defaults to ``d_model // block``, the paper's
    ``d_lowrank = d_model / N``."""
    d_model, d_ff, block, rank = _check_ffn_dims(d_model, d_ff, block, rank)
    seed = check_int("seed", seed, min_value=0)
    check_alloc(
        f"init_sparse_ffn_params(d_model={d_model}, d_ff={d_ff}, rank={rank})",
        4 * (2 * d_model * d_ff + rank * (d_model + d_ff) + d_ff + d_model),
    )
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return {
        "w1": rng.normal(0.0, 0.02, (d_model, d_ff)).astype(f32),
        "b1": np.zeros(d_ff, f32),
        "w2": rng.normal(0.0, 0.02, (d_ff, d_model)).astype(f32),
        "b2": np.zeros(d_model, f32),
        "c1": rng.normal(0.0, 1.0 / math.sqrt(d_model), (d_model, rank)).astype(f32),
        "c2": rng.normal(0.0, 1.0 / math.sqrt(rank), (rank, d_ff)).astype(f32),
    }


def _check_qkv_dims(d_model: Any, n_modules: Any, kernel: Any) -> tuple[int, ...]:
    d_model = check_int("d_model", d_model, min_value=1)
    n_modules = check_int("n_modules", n_modules, min_value=1)
    if d_model % n_modules:
        raise ValueError(
            f"n_modules must divide d_model = {d_model}, got n_modules = {n_modules}"
        )
    if isinstance(kernel, (int, np.integer)) and not isinstance(kernel, bool):
        kernel = (kernel, kernel)
    if not isinstance(kernel, (tuple, list)) or len(kernel) != 2:
        raise TypeError(
            "kernel must be an int or a pair (length, modules) of ints, got "
            f"{describe(kernel)}"
        )
    kl, ks = check_kernel(*kernel)
    return d_model, n_modules, kl, ks


def init_sparse_qkv_params(
    d_model: int, n_modules: int, kernel: int | tuple[int, int] = 3, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """float32 parameters of a sparse QKV layer (keys of
    :func:`effx_lab.nm.torch_ops.sparse_qkv`): ``mul_d ~ N(0, 1)``, ``mul_e ~ N(0,
    1/d)`` (the multiplicative layer keeps unit variance), convolutions ``N(0, 0.02^2 d
    / (M kl ks))`` (Q, K, V of the variance a dense ``N(0, 0.02)`` projection gives),
    zero biases. ``kernel``: ``(kl, ks)`` or one int for both (the paper: 3)."""
    d_model, s, kl, ks = _check_qkv_dims(d_model, n_modules, kernel)
    seed = check_int("seed", seed, min_value=0)
    m = d_model // s
    check_alloc(
        f"init_sparse_qkv_params(d_model={d_model}, n_modules={s})",
        4 * (s * d_model + d_model * m + d_model + 3 * m * (m * kl * ks + 1)),
    )
    rng = np.random.default_rng(seed)
    f32 = np.float32
    std = 0.02 * math.sqrt(d_model / (m * kl * ks))
    p = {
        "mul_d": rng.normal(0.0, 1.0, (s, d_model)).astype(f32),
        "mul_e": rng.normal(0.0, 1.0 / math.sqrt(d_model), (d_model, m)).astype(f32),
        "mul_b": np.zeros(d_model, f32),
    }
    for c in "qkv":
        p[f"conv_w{c}"] = rng.normal(0.0, std, (m, m, kl, ks)).astype(f32)
        p[f"conv_b{c}"] = np.zeros(m, f32)
    return p


def gumbel_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(U))``, ``U`` uniform in ``[1e-6, 1 - 1e-6]``
    (as the paper's code clips it), drawn on the CPU from ``generator`` and moved to
    ``device``."""
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
        for s in shape
    ):
        raise TypeError(f"shape must be a tuple of ints >= 0, got {describe(shape)}")
    if generator is not None:
        check_instance("generator", generator, torch.Generator)
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float64)
    u = u.clamp(1e-6, 1.0 - 1e-6)
    return (-torch.log(-torch.log(u))).to(dtype=dtype, device=device)


def _to_params(arrays: Mapping[str, np.ndarray]) -> nn.ParameterDict:
    return nn.ParameterDict(
        {k: nn.Parameter(torch.from_numpy(np.array(v))) for k, v in arrays.items()}
    )


# --------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------
class SparseFFN(nn.Module):
    """The sparse FFN ``x (..., d_model) -> (..., d_model)`` (no norm, no residual):
    parameters ``self.params`` (the LM's layout, :func:`init_sparse_ffn_params`).
    Training path in ``train()`` mode while autograd records (noise from a generator
    seeded with ``seed``), the inference path otherwise."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        block: int,
        rank: int | None = None,
        *,
        tau: float = 1.0,
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        d_model, d_ff, block, rank = _check_ffn_dims(d_model, d_ff, block, rank)
        self.block = block
        self.tau = check_float("tau", tau, min_value=0.0, min_inclusive=False)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.params = _to_params(
            init_sparse_ffn_params(d_model, d_ff, block, rank, seed=seed)
        )
        self._generator = torch.Generator().manual_seed(check_int("seed", seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = dict(self.params.items())
        if self.training and torch.is_grad_enabled():
            d_ff = p["w1"].shape[1]
            shape = (*x.shape[:-1], d_ff // self.block, self.block)
            g = gumbel_noise(shape, self._generator, dtype=x.dtype, device=x.device)
            return TL.sparse_ffn(
                x, p, self.block, mode="train", gumbel=g, tau=self.tau,
                activation=self.activation,
            )  # fmt: skip
        return TL.sparse_ffn(x, p, self.block, activation=self.activation)

    def extra_repr(self) -> str:
        d, d_ff = self.params["w1"].shape
        r = self.params["c1"].shape[1]
        return f"d_model={d}, d_ff={d_ff}, block={self.block}, rank={r}"


class SparseQKV(nn.Module):
    """The sparse QKV layer ``x (..., n, d_model) -> (q, k, v)``: a multiplicative layer
    over ``n_modules`` modules and three causal 2-D convolutions of kernel ``kernel``
    (:func:`init_sparse_qkv_params`)."""

    def __init__(
        self,
        d_model: int,
        n_modules: int,
        kernel: int | tuple[int, int] = 3,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_modules = check_int("n_modules", n_modules, min_value=1)
        self.params = _to_params(
            init_sparse_qkv_params(d_model, n_modules, kernel, seed=seed)
        )

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return TL.sparse_qkv(x, dict(self.params.items()), self.n_modules)

    def extra_repr(self) -> str:
        kl, ks = self.params["conv_wq"].shape[2:]
        d = self.params["mul_b"].shape[0]
        return f"d_model={d}, n_modules={self.n_modules}, kernel=({kl}, {ks})"


# --------------------------------------------------------------------------------------
# sublayers of the shared LM
# --------------------------------------------------------------------------------------
_SFFN_KEYS = ("ln2_g", "ln2_b", "w1", "b1", "w2", "b2", "c1", "c2")


def _sparse_ffn_apply(
    x: torch.Tensor,
    p: Mapping[str, torch.Tensor],
    *,
    block: int,
    tau: float,
    activation: str,
    generator: torch.Generator,
) -> torch.Tensor:
    t = tensor_params(p, ("ln2_g", "ln2_b"), x)
    h = F.layer_norm(x, (x.shape[-1],), t["ln2_g"], t["ln2_b"], eps=_LN_EPS)
    q = {k: p[k] for k in _SFFN_KEYS[2:]}
    if torch.is_grad_enabled():
        shape = (*x.shape[:-1], p["w1"].shape[1] // block, block)
        g = gumbel_noise(shape, generator, dtype=x.dtype, device=x.device)
        out = TL.sparse_ffn(
            h, q, block, mode="train", gumbel=g, tau=tau, activation=activation
        )
    else:
        out = TL.sparse_ffn(h, q, block, activation=activation)
    return x + out


def sparse_ffn_sublayer(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    d_ff: int | None = None,
    block: int = 8,
    rank: int | None = None,
    tau: float = 1.0,
    activation: str = "relu",
) -> lm.Sublayer:
    """The LM's FFN ``"sparse_ffn"``: ``x + SparseFFN(LN(x))`` of width ``d_ff``
    (default ``4 d_model``), one unit per block of ``block``, controller rank ``rank``
    (default ``d_model // block``); ReLU by default (the paper's). Training path while
    autograd records (Gumbel noise from a generator seeded with the layer's seed),
    inference path under ``torch.no_grad()``."""
    check_bool("causal", causal)
    d_ff = 4 * check_int("d_model", d_model, min_value=1) if d_ff is None else d_ff
    d_model, d_ff, block, rank = _check_ffn_dims(d_model, d_ff, block, rank)
    tau = check_float("tau", tau, min_value=0.0, min_inclusive=False)
    activation = check_choice("activation", activation, ACTIVATIONS)
    seed = check_int("seed", seed, min_value=0)
    params = init_sparse_ffn_params(d_model, d_ff, block, rank, seed=seed + 1)
    params["ln2_g"] = np.ones(d_model, np.float32)
    params["ln2_b"] = np.zeros(d_model, np.float32)
    apply = functools.partial(
        _sparse_ffn_apply,
        block=block,
        tau=tau,
        activation=activation,
        generator=torch.Generator().manual_seed(seed),
    )
    return lm.Sublayer(params, apply)


_SQKV_KEYS = (
    "ln1_g", "ln1_b", "mul_d", "mul_e", "mul_b",
    "conv_wq", "conv_bq", "conv_wk", "conv_bk", "conv_wv", "conv_bv", "wo", "bo",
)  # fmt: skip


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int
) -> torch.Tensor:
    """Causal multi-head softmax attention of ``(..., n, d)`` projections."""
    q, k, v = (t.unflatten(-1, (n_heads, -1)).transpose(-2, -3) for t in (q, k, v))
    o = attn_ops.softmax_attention(q, k, v, True, 1.0 / math.sqrt(q.shape[-1]))
    return o.transpose(-2, -3).flatten(-2)


def _sparse_qkv_apply(
    x: torch.Tensor, p: Mapping[str, torch.Tensor], *, n_heads: int, n_modules: int
) -> torch.Tensor:
    t = tensor_params(p, ("ln1_g", "ln1_b", "wo", "bo"), x)
    h = F.layer_norm(x, (x.shape[-1],), t["ln1_g"], t["ln1_b"], eps=_LN_EPS)
    q, k, v = TL.sparse_qkv(h, {k: p[k] for k in _SQKV_KEYS[2:-2]}, n_modules)
    return x + linear(_attend(q, k, v, n_heads), t["wo"], t["bo"])


def sparse_qkv_mixer(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    n_heads: int = 4,
    n_modules: int = 4,
    kernel: int | tuple[int, int] = 3,
) -> lm.Sublayer:
    """The LM's mixer ``"sparse_qkv"``: ``x + wo · attention(SparseQKV(LN(x))) + bo``,
    causal softmax attention with ``n_heads`` heads; ``wo`` dense ``N(0, 0.02)`` (the
    paper also sparsifies the output projection; this layer does not). Needs
    ``causal=True``: its convolution looks only backwards."""
    if not check_bool("causal", causal):
        raise ValueError(
            "causal must be True for the 'sparse_qkv' mixer (its convolution along "
            "the sequence is causal), got False"
        )
    d_model, s, kl, ks = _check_qkv_dims(d_model, n_modules, kernel)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model = {d_model}, got {n_heads}")
    seed = check_int("seed", seed, min_value=0)
    params = init_sparse_qkv_params(d_model, s, (kl, ks), seed=seed)
    rng = np.random.default_rng(seed + 1)
    params["wo"] = rng.normal(0.0, 0.02, (d_model, d_model)).astype(np.float32)
    params["bo"] = np.zeros(d_model, np.float32)
    params["ln1_g"] = np.ones(d_model, np.float32)
    params["ln1_b"] = np.zeros(d_model, np.float32)
    apply = functools.partial(_sparse_qkv_apply, n_heads=n_heads, n_modules=s)
    return lm.Sublayer(params, apply, no_decay=("mul_d",))


lm.register_ffn("sparse_ffn", sparse_ffn_sublayer)
lm.register_mixer("sparse_qkv", sparse_qkv_mixer)


# --------------------------------------------------------------------------------------
# single-token decode
# --------------------------------------------------------------------------------------
def _ffn_step(
    x: torch.Tensor,
    w1u: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    controller: tuple[torch.Tensor, torch.Tensor, int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One token's ReLU FFN in the decode layout (``w1u (d_ff, d)``, ``w2 (d_ff,
    d)``: a unit's weights contiguous). ``controller = (c1, c2, block, offsets)``: the
    sparse FFN's inference path, which reads only the chosen rows of both."""
    if controller is None:
        return F.linear(torch.relu(F.linear(x, w1u, b1)), w2.t(), b2)
    c1, c2, block, offsets = controller
    units = ((x @ c1) @ c2).view(-1, block).argmax(-1) + offsets
    a = torch.relu(F.embedding(units, w1u) @ x + b1[units])
    y = F.embedding_bag(
        units.unsqueeze(0), w2, per_sample_weights=a.unsqueeze(0), mode="sum"
    )[0]
    return y + b2


class _DecodeLayer(nn.Module):
    """One pre-LN layer for decode: ``h + wo · attn(qkv(LN1 h))``, then ``h +
    ffn(LN2 h)``; weights in the layouts decode reads fastest."""

    def __init__(
        self,
        d: int,
        d_ff: int,
        n_heads: int,
        block: int,
        rank: int | None,
        n_modules: int,
        kernel: tuple[int, int],
        sparse_ffn: bool,
        sparse_qkv: bool,
        max_len: int,
        seed: int,
    ) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        f32 = np.float32

        def normal(*shape: int) -> nn.Parameter:
            w = rng.normal(0, 0.02, shape).astype(f32)
            return nn.Parameter(torch.from_numpy(w))

        self.d, self.n_heads, self.block = d, n_heads, block
        self.sparse_ffn, self.sparse_qkv = sparse_ffn, sparse_qkv
        self.ln1 = nn.LayerNorm(d, eps=_LN_EPS)
        self.ln2 = nn.LayerNorm(d, eps=_LN_EPS)
        if sparse_qkv:
            p = init_sparse_qkv_params(d, n_modules, kernel, seed=seed + 1)
            self.qkv = _to_params(p)
            self.n_modules = n_modules
            self.kl, self.ks = kernel
            m = d // n_modules
            # the three convolutions as one matrix (M kl ks, 3 M) for decode: a
            # token's output is one small GEMM of its (S, M kl ks) window patches
            conv_w = torch.cat([self.qkv[f"conv_w{c}"].detach() for c in "qkv"])
            self.conv_w = nn.Parameter(conv_w.flatten(1).t().contiguous())
            self.conv_b = nn.Parameter(
                torch.cat([self.qkv[f"conv_b{c}"].detach() for c in "qkv"]).clone()
            )
            self.register_buffer("conv_state", torch.zeros(self.kl - 1, n_modules, m))
        else:
            self.w_qkv = normal(3 * d, d)  # nn.Linear layout (out, in)
            self.b_qkv = nn.Parameter(torch.zeros(3 * d))
        self.w_o = normal(d, d)
        self.b_o = nn.Parameter(torch.zeros(d))
        if sparse_ffn:
            p = init_sparse_ffn_params(d, d_ff, block, rank, seed=seed + 2)
            self.w1u = nn.Parameter(torch.from_numpy(np.ascontiguousarray(p["w1"].T)))
            for k in ("b1", "w2", "b2", "c1", "c2"):
                setattr(self, k, nn.Parameter(torch.from_numpy(p[k])))
            self.register_buffer(
                "offsets", block * torch.arange(d_ff // block, dtype=torch.int64)
            )
        else:
            self.w1u = normal(d_ff, d)  # nn.Linear layouts: fc1 (d_ff, d)
            self.b1 = nn.Parameter(torch.zeros(d_ff))
            self.w2 = normal(d_ff, d)  # fc2's weight transposed, as the sparse one
            self.b2 = nn.Parameter(torch.zeros(d))
        hd = d // n_heads
        self.register_buffer("k_cache", torch.zeros(n_heads, max_len, hd))
        self.register_buffer("v_cache", torch.zeros(n_heads, max_len, hd))

    # the full-sequence path (the faces), the reference for the decode path
    def ffn_params(self) -> dict[str, torch.Tensor]:
        if self.sparse_ffn:
            return {"w1": self.w1u.t(), "b1": self.b1, "w2": self.w2, "b2": self.b2,
                    "c1": self.c1, "c2": self.c2}  # fmt: skip
        return {"w1": self.w1u.t(), "b1": self.b1, "w2": self.w2, "b2": self.b2}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h (n, d)``, the whole sequence from position 0 (the faces' path)."""
        x = self.ln1(h)
        if self.sparse_qkv:
            q, k, v = TL.sparse_qkv(x, dict(self.qkv.items()), self.n_modules)
        else:
            q, k, v = F.linear(x, self.w_qkv, self.b_qkv).chunk(3, dim=-1)
        h = h + F.linear(_attend(q, k, v, self.n_heads), self.w_o, self.b_o)
        x = self.ln2(h)
        if self.sparse_ffn:
            return h + TL.sparse_ffn(x, self.ffn_params(), self.block)
        return h + TL.dense_ffn(x, self.ffn_params())

    def step(self, h: torch.Tensor, pos: int) -> torch.Tensor:
        """One token ``h (d,)`` at position ``pos`` (caches hold ``0 .. pos - 1``)."""
        x = self.ln1(h)
        if self.sparse_qkv:
            s, kl = self.n_modules, self.kl
            y = (x * self.qkv["mul_d"]) @ self.qkv["mul_e"] + self.qkv["mul_b"].view(
                s, -1
            )  # (S, M)
            window = torch.cat([self.conv_state, y.unsqueeze(0)])  # (kl, S, M)
            if kl > 1:
                self.conv_state.copy_(window[1:])
            half = (self.ks - 1) // 2
            padded = F.pad(window, (0, 0, half, half))  # zero modules each side
            patches = padded.unfold(1, self.ks, 1).permute(1, 2, 0, 3)  # S,M,kl,ks
            out = torch.addmm(self.conv_b, patches.reshape(s, -1), self.conv_w)
            q, k, v = out.view(s, 3, -1).transpose(0, 1).flatten(1)  # (3, S M)
        else:
            q, k, v = F.linear(x, self.w_qkv, self.b_qkv).chunk(3)
        nh = self.n_heads
        self.k_cache[:, pos] = k.view(nh, -1)
        self.v_cache[:, pos] = v.view(nh, -1)
        keys, vals = self.k_cache[:, : pos + 1], self.v_cache[:, : pos + 1]
        qh = q.view(nh, 1, -1)
        att = torch.softmax(qh @ keys.transpose(1, 2) / math.sqrt(qh.shape[-1]), -1)
        h = h + F.linear((att @ vals).flatten(), self.w_o, self.b_o)
        return h + self.ffn_step(self.ln2(h))

    def ffn_step(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN of one normalised token ``x (d,)``. Sparse: the controller, then
        only the chosen rows of the unit-major ``w1`` (gathered) and of ``w2``
        (``embedding_bag``: gathered and summed with weights in one pass)."""
        if not self.sparse_ffn:
            return _ffn_step(x, self.w1u, self.b1, self.w2, self.b2)
        return _ffn_step(x, self.w1u, self.b1, self.w2, self.b2,
                         (self.c1, self.c2, self.block, self.offsets))  # fmt: skip

    def weight_count(self) -> int:
        """Weights (and biases, LayerNorms) one decode step reads."""
        d = self.d
        n = 4 * d + d * d + d  # two LayerNorms, wo, bo
        if self.sparse_qkv:
            n += sum(self.qkv[k].numel() for k in ("mul_d", "mul_e", "mul_b"))
            n += self.conv_w.numel() + self.conv_b.numel()
        else:
            n += 3 * d * d + 3 * d
        if self.sparse_ffn:
            k = self.offsets.numel()
            n += self.c1.numel() + self.c2.numel() + 2 * k * d + k + d
        else:
            n += self.w1u.numel() + self.b1.numel() + self.w2.numel() + d
        return int(n)


class DecodeModel(nn.Module):
    """A stack of decode layers (see :func:`decode_model`); ``forward(h)`` runs a whole
    sequence ``(n, d)`` through the faces, ``step(h)`` one token ``(d,)`` at
    ``self.position`` with the caches, ``reset(context)`` fills the caches with
    ``context`` positions of random keys and values (what a prompt would leave)."""

    def __init__(self, layers: list[_DecodeLayer], max_len: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.max_len = max_len
        self.position = 0

    @property
    def d_model(self) -> int:
        return self.layers[0].d

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[1] != self.d_model:
            raise ValueError(
                f"h must be a tensor of shape (n, {self.d_model}), got {describe(h)}"
            )
        for layer in self.layers:
            h = layer(h)
        return h

    @torch.no_grad()
    def reset(self, context: int = 0, *, seed: int = 0) -> "DecodeModel":
        context = check_int("context", context, min_value=0, max_value=self.max_len - 1)
        g = torch.Generator().manual_seed(check_int("seed", seed, min_value=0))
        for layer in self.layers:
            for buf in (layer.k_cache, layer.v_cache):
                buf.zero_()
                buf[:, :context] = torch.randn(
                    buf[:, :context].shape, generator=g
                ).to(buf)
            if layer.sparse_qkv:
                layer.conv_state.zero_()
                if context:
                    layer.conv_state.copy_(
                        torch.randn(layer.conv_state.shape, generator=g).to(
                            layer.conv_state
                        )
                    )
        self.position = context
        return self

    @torch.no_grad()
    def step(self, h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != (self.d_model,):
            raise ValueError(
                f"h must be a tensor of shape ({self.d_model},), got {describe(h)}"
            )
        if self.position >= self.max_len:
            raise ValueError(
                f"the caches are full (max_len = {self.max_len}); call reset()"
            )
        for layer in self.layers:
            h = layer.step(h, self.position)
        self.position += 1
        return h


def decode_model(
    d_model: int = 1024,
    d_ff: int = 4096,
    n_layers: int = 2,
    *,
    n_heads: int = 16,
    block: int = 32,
    rank: int | None = None,
    n_modules: int = 16,
    kernel: int | tuple[int, int] = 3,
    sparse_ffn: bool = True,
    sparse_qkv: bool = True,
    max_len: int = 512,
    seed: int = 0,
    device: Any = "cpu",
) -> DecodeModel:
    """A float32 :class:`DecodeModel` of ``n_layers`` layers, to time single-token
    decode:
    dense or sparse FFN (``block``, ``rank``: :class:`SparseFFN`'s), dense or sparse QKV
    (``n_modules``, ``kernel``), ``n_heads`` heads, caches of ``max_len`` positions.
    Dense FFNs use ReLU too, so only the sparsity differs. ``device``: where the
    model lives (``"cuda"`` times a GPU's decode)."""
    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    n_layers = check_int("n_layers", n_layers, min_value=1)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model = {d_model}, got {n_heads}")
    sparse_ffn = check_bool("sparse_ffn", sparse_ffn)
    sparse_qkv = check_bool("sparse_qkv", sparse_qkv)
    _, _, block, _ = _check_ffn_dims(d_model, d_ff, block, rank)
    _, n_modules, kl, ks = _check_qkv_dims(d_model, n_modules, kernel)
    max_len = check_int("max_len", max_len, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must name a torch device ('cpu', 'cuda'), got {describe(device)}"
        ) from None
    check_alloc(
        f"decode_model(d_model={d_model}, d_ff={d_ff}, n_layers={n_layers})",
        4 * n_layers * (4 * d_model**2 + 2 * d_model * d_ff + 2 * max_len * d_model),
    )
    layers = [
        _DecodeLayer(
            d_model, d_ff, n_heads, block, rank, n_modules, (kl, ks),
            sparse_ffn, sparse_qkv, max_len, seed + 7 * i,
        )  # fmt: skip
        for i in range(n_layers)
    ]
    model = DecodeModel(layers, max_len).eval().requires_grad_(False)
    return model.to(device)


def weight_bytes_per_token(model: DecodeModel) -> int:
    """Bytes of weights one decode step of ``model`` reads (float32: 4 per weight;
    caches not counted)."""
    check_instance("model", model, DecodeModel)
    return 4 * sum(layer.weight_count() for layer in model.layers)


def decode_step_time(
    model: DecodeModel,
    *,
    context: int = 128,
    min_run_time: float = 0.2,
    threads: int | None = None,
) -> float:
    """Median seconds of one single-token decode step of ``model`` (batch 1) with
    ``context`` positions in the caches (each step the next of 64 random tokens), on
    the model's device (:func:`effx_lab.bench.time_fn`); on a CPU with ``threads``
    threads (None: PyTorch's current setting; on a busy machine one thread is steadier:
    a step is a chain of small ops, each waiting for every thread)."""
    check_instance("model", model, DecodeModel)
    context = check_int("context", context, min_value=0, max_value=model.max_len - 1)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0,
                               min_inclusive=False)  # fmt: skip
    model.reset(context)
    threads = check_threads(threads)
    dev = model.layers[0].b_o.device
    gen = torch.Generator().manual_seed(0)
    hs = torch.randn(64, model.d_model, generator=gen).to(dev)
    count = [0]

    def one_step() -> torch.Tensor:  # the next of 64 tokens: the units chosen vary
        model.position = context
        count[0] += 1
        return model.step(hs[count[0] % 64])

    with limit_threads(threads):
        return time_fn(one_step, min_run_time=min_run_time, device=dev.type).median_s
