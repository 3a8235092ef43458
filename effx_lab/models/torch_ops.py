"""The course's models in PyTorch: the same names and weights as :mod:`effx_lab.models.reference`.

What differs from the NumPy reference, and why:

* TinyLM is an ``nn.Module`` built from ``nn.Embedding``/``nn.LayerNorm``/``nn.Linear``, so it trains
  with autograd and later chapters can swap its linear layers (quantized, pruned, 2:4 sparse) in place.
  ``nn.Linear`` stores its weight ``[out, in]``: :meth:`TinyLM.from_params` transposes the reference's
  ``[in, out]`` matrices, and :meth:`TinyLM.to_params` transposes them back.
* The three projections ``W^Q, W^K, W^V`` are fused into one ``qkv`` linear layer: one matrix
  multiplication instead of three (as in GPT-2 and nanoGPT).
* Attention calls :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel
  (FlashAttention / memory-efficient attention on GPUs, a fused C++ loop on CPUs) instead of
  materialising ``softmax(Q K^T / sqrt(d_k))`` as the reference does. Grouped-query attention uses its
  ``enable_gqa`` flag where this torch has it, and repeats the key/value heads otherwise.
* MiniLM's forward is functional (``F.linear``, ``F.layer_norm``, SDPA) on the same parameter dict;
  NumPy parameters are wrapped without copying (``torch.as_tensor``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_alloc, check_array, check_bool, check_float, check_int, describe
from effx_lab.models.config import (
    MiniLMConfig,
    TinyLMConfig,
    check_generate_args,
    check_minilm_config,
    check_tinylm_config,
    check_tinylm_params,
    init_tinylm_params,
)
from effx_lab.models.reference import _check_linear_hook, _check_minilm_inputs, _check_minilm_params

__all__ = [
    "layer_norm",
    "gelu_tanh",
    "gelu_erf",
    "softmax",
    "KVCache",
    "TinyLM",
    "minilm_forward",
    "mean_pool_normalize",
]


def _sdpa_has_gqa() -> bool:
    """Feature detection: ``enable_gqa`` arrived in torch 2.5."""
    q = torch.zeros(1, 2, 1, 2)
    kv = torch.zeros(1, 1, 1, 2)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except (TypeError, RuntimeError):
        return False
    return True


_HAS_GQA = _sdpa_has_gqa()


def _check_tensor(name: str, value: Any, *, ndim: int | tuple[int, ...] | None = None, dtype_kind: str | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    return check_array(name, value, ndim=ndim, dtype_kind=dtype_kind, allow_torch=True)


# ----------------------------------------------------------------------------------------------------------
# Building blocks (thin wrappers over torch, same signatures as the reference)
# ----------------------------------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis, ``torch.nn.functional.layer_norm`` (one fused kernel)."""
    _check_tensor("x", x, dtype_kind="f")
    _check_tensor("weight", weight, ndim=1, dtype_kind="f")
    _check_tensor("bias", bias, ndim=1, dtype_kind="f")
    if x.ndim == 0 or weight.shape[0] != x.shape[-1] or bias.shape != weight.shape:
        raise ValueError(
            f"weight and bias must have shape ({x.shape[-1] if x.ndim else '?'},) to match x's last axis, got "
            f"x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    eps = check_float("eps", eps, min_value=0.0, min_inclusive=False)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2), ``F.gelu(x, approximate="tanh")``."""
    _check_tensor("x", x, dtype_kind="f")
    return F.gelu(x, approximate="tanh")


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU ``0.5 x (1 + erf(x / sqrt(2)))`` (BERT), ``F.gelu(x)``."""
    _check_tensor("x", x, dtype_kind="f")
    return F.gelu(x)


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Softmax along ``axis`` (``torch.softmax``, numerically stable)."""
    _check_tensor("x", x, dtype_kind="f")
    axis = check_int("axis", axis, min_value=-max(x.ndim, 1), max_value=max(x.ndim, 1) - 1)
    return torch.softmax(x, dim=axis)


# ----------------------------------------------------------------------------------------------------------
# TinyLM
# ----------------------------------------------------------------------------------------------------------


class KVCache:
    """Preallocated keys/values of every layer as tensors ``[batch, kv_heads, max_seq_len, head_dim]``.

    Same fields as ``reference.KVCache`` (``k``, ``v``, ``length``, ``nbytes``), plus ``device``.
    """

    def __init__(
        self,
        config: TinyLMConfig,
        batch_size: int,
        *,
        max_seq_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> None:
        check_tinylm_config(config)
        batch_size = check_int("batch_size", batch_size, min_value=1)
        if max_seq_len is None:
            max_seq_len = config.max_seq_len
        max_seq_len = check_int("max_seq_len", max_seq_len, min_value=1, max_value=config.max_seq_len)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {describe(dtype)}")
        self.config = config
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        shape = (batch_size, config.kv_heads, max_seq_len, config.head_dim)
        if self.device.type == "cpu":  # on an accelerator, its own allocator says when it is full
            itemsize = torch.empty((), dtype=dtype).element_size()
            check_alloc(
                f"KVCache(batch_size={batch_size}, max_seq_len={max_seq_len}) for {config}",
                2 * config.n_layers * batch_size * config.kv_heads * max_seq_len * config.head_dim * itemsize,
            )
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(config.n_layers)]
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated keys and values of all layers."""
        return int(sum(t.numel() * t.element_size() for t in self.k + self.v))

    def reset(self) -> None:
        """Forget the cached positions (the memory stays allocated)."""
        self.length = 0

    def __repr__(self) -> str:
        return (
            f"KVCache(batch_size={self.batch_size}, length={self.length}/{self.max_seq_len}, "
            f"layers={self.config.n_layers}, kv_heads={self.config.kv_heads}, head_dim={self.config.head_dim}, "
            f"dtype={self.dtype}, device={self.device}, nbytes={self.nbytes})"
        )


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with a fused QKV projection."""

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        check_tinylm_config(config)
        d, qkv = config.d_model, (config.n_heads + 2 * config.kv_heads) * config.head_dim
        check_alloc(f"CausalSelfAttention({config})", 4 * ((d + 1) * qkv + (config.n_heads * config.head_dim + 1) * d))
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, (config.n_heads + 2 * config.kv_heads) * config.head_dim)
        self.proj = nn.Linear(config.n_heads * config.head_dim, config.d_model)

    def forward(self, x: torch.Tensor, layer: int, start: int, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        h, h_kv, d_k = self.n_heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([h * d_k, h_kv * d_k, h_kv * d_k], dim=-1)
        q = q.view(B, T, h, d_k).transpose(1, 2)
        k = k.view(B, T, h_kv, d_k).transpose(1, 2)
        v = v.view(B, T, h_kv, d_k).transpose(1, 2)
        if cache is not None:
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k = cache.k[layer][:, :, : start + T]
            v = cache.v[layer][:, :, : start + T]
        kwargs: dict[str, Any] = {}
        if h_kv != h:
            if _HAS_GQA:
                kwargs["enable_gqa"] = True
            else:  # pragma: no cover - torch < 2.5
                k = k.repeat_interleave(h // h_kv, dim=1)
                v = v.repeat_interleave(h // h_kv, dim=1)
        if start == 0:  # square causal mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        elif T == 1:  # one new token sees every cached position
            y = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:  # chunk after a prefix: query t sees keys 0 .. start + t (is_causal would align top-left)
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
        return self.proj(y.transpose(1, 2).reshape(B, T, h * d_k))


class MLP(nn.Module):
    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        check_tinylm_config(config)
        check_alloc(f"MLP({config})", 4 * ((config.d_model + 1) * config.ffn_dim + (config.ffn_dim + 1) * config.d_model))
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN Transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        check_tinylm_config(config)
        self.ln1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, layer: int, start: int, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), layer, start, cache)
        return x + self.mlp(self.ln2(x))


def _check_tokens(tokens: Any, config: TinyLMConfig) -> torch.Tensor:
    _check_tensor("tokens", tokens, ndim=2, dtype_kind="i")
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must have shape [batch, seq] with batch >= 1 and seq >= 1, got {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(
            f"tokens must be in [0, {config.vocab_size - 1}] (vocab_size={config.vocab_size}), got values in [{lo}, {hi}]"
        )
    return tokens.long()


class TinyLM(nn.Module):
    """TinyLM as an ``nn.Module``: ``TinyLM(params, config)`` with the reference's parameter dict.

    Same methods as ``reference.TinyLM`` (``forward``, ``new_cache``, ``generate``, ``to_params``,
    ``from_params``, ``from_config``); tensors in, tensors out. The output head is tied to
    ``tok_emb.weight`` (one shared parameter).
    """

    def __init__(self, params: dict[str, np.ndarray], config: TinyLMConfig) -> None:
        super().__init__()
        check_tinylm_config(config)
        params = check_tinylm_params(params, config)
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self._load_params(params)

    @classmethod
    def from_params(cls, params: dict[str, np.ndarray], config: TinyLMConfig) -> "TinyLM":
        """Same as ``TinyLM(params, config)``."""
        return cls(params, config)

    @classmethod
    def from_config(cls, config: TinyLMConfig, seed: int = 0) -> "TinyLM":
        """A freshly initialised model, identical to ``reference.TinyLM.from_config(config, seed)``."""
        return cls(init_tinylm_params(config, seed), config)

    @torch.no_grad()
    def _load_params(self, params: dict[str, np.ndarray]) -> None:
        t = torch.from_numpy
        self.tok_emb.weight.copy_(t(params["tok_emb"]))
        self.pos_emb.weight.copy_(t(params["pos_emb"]))
        for i, block in enumerate(self.layers):
            p = f"layers.{i}."
            block.ln1.weight.copy_(t(params[p + "ln1.weight"]))
            block.ln1.bias.copy_(t(params[p + "ln1.bias"]))
            wqkv = np.concatenate([params[p + "attn.wq"], params[p + "attn.wk"], params[p + "attn.wv"]], axis=1)
            bqkv = np.concatenate([params[p + "attn.bq"], params[p + "attn.bk"], params[p + "attn.bv"]])
            block.attn.qkv.weight.copy_(t(wqkv.T.copy()))
            block.attn.qkv.bias.copy_(t(bqkv))
            block.attn.proj.weight.copy_(t(params[p + "attn.wo"].T.copy()))
            block.attn.proj.bias.copy_(t(params[p + "attn.bo"]))
            block.ln2.weight.copy_(t(params[p + "ln2.weight"]))
            block.ln2.bias.copy_(t(params[p + "ln2.bias"]))
            block.mlp.fc1.weight.copy_(t(params[p + "mlp.w1"].T.copy()))
            block.mlp.fc1.bias.copy_(t(params[p + "mlp.b1"]))
            block.mlp.fc2.weight.copy_(t(params[p + "mlp.w2"].T.copy()))
            block.mlp.fc2.bias.copy_(t(params[p + "mlp.b2"]))
        self.ln_f.weight.copy_(t(params["ln_f.weight"]))
        self.ln_f.bias.copy_(t(params["ln_f.bias"]))

    @torch.no_grad()
    def to_params(self) -> dict[str, np.ndarray]:
        """The weights as the reference's float32 parameter dict (``[in, out]`` matrices, Q/K/V split)."""

        def n(x: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()).copy()

        out = {"tok_emb": n(self.tok_emb.weight), "pos_emb": n(self.pos_emb.weight)}
        for i, block in enumerate(self.layers):
            p = f"layers.{i}."
            # the block's own head counts: a head-pruned layer has fewer than the config
            q = block.attn.n_heads * block.attn.head_dim
            kv = block.attn.kv_heads * block.attn.head_dim
            wq, wk, wv = block.attn.qkv.weight.split([q, kv, kv], dim=0)
            bq, bk, bv = block.attn.qkv.bias.split([q, kv, kv], dim=0)
            out.update(
                {
                    p + "ln1.weight": n(block.ln1.weight),
                    p + "ln1.bias": n(block.ln1.bias),
                    p + "attn.wq": n(wq.T),
                    p + "attn.bq": n(bq),
                    p + "attn.wk": n(wk.T),
                    p + "attn.bk": n(bk),
                    p + "attn.wv": n(wv.T),
                    p + "attn.bv": n(bv),
                    p + "attn.wo": n(block.attn.proj.weight.T),
                    p + "attn.bo": n(block.attn.proj.bias),
                    p + "ln2.weight": n(block.ln2.weight),
                    p + "ln2.bias": n(block.ln2.bias),
                    p + "mlp.w1": n(block.mlp.fc1.weight.T),
                    p + "mlp.b1": n(block.mlp.fc1.bias),
                    p + "mlp.w2": n(block.mlp.fc2.weight.T),
                    p + "mlp.b2": n(block.mlp.fc2.bias),
                }
            )
        out["ln_f.weight"] = n(self.ln_f.weight)
        out["ln_f.bias"] = n(self.ln_f.bias)
        return out

    def new_cache(self, batch_size: int, *, max_seq_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache` with the model's dtype and device."""
        w = self.tok_emb.weight
        return KVCache(self.config, batch_size, max_seq_len=max_seq_len, dtype=w.dtype, device=w.device)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` for an integer tensor ``tokens`` ``[B, T]``; see ``reference.TinyLM.forward``."""
        cfg = self.config
        tokens = _check_tokens(tokens, cfg)
        B, T = tokens.shape
        if cache is None:
            start = 0
            if T > cfg.max_seq_len:
                raise ValueError(f"tokens has length {T}, more than max_seq_len={cfg.max_seq_len}")
        else:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a torch_ops.KVCache (from model.new_cache), got {describe(cache)}")
            if cache.config != cfg:
                raise ValueError(f"cache was built for {cache.config}, but the model has {cfg}")
            if cache.batch_size != B:
                raise ValueError(f"tokens has batch size {B}, but the cache holds batch_size={cache.batch_size}")
            if cache.length + T > cache.max_seq_len:
                raise ValueError(
                    f"tokens of length {T} do not fit in the cache: cache.length={cache.length} + {T} > "
                    f"max_seq_len={cache.max_seq_len}"
                )
            if cache.device != tokens.device or cache.dtype != self.tok_emb.weight.dtype:
                raise ValueError(
                    f"cache holds {cache.dtype} on {cache.device}, but the model runs {self.tok_emb.weight.dtype} "
                    f"and tokens are on {tokens.device}: make it with model.new_cache"
                )
            start = cache.length
        positions = torch.arange(start, start + T, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for i, block in enumerate(self.layers):
            x = block(x, i, start, cache)
        x = self.ln_f(x)
        if cache is not None:
            cache.length = start + T
        return F.linear(x, self.tok_emb.weight)

    @torch.inference_mode()
    def generate(
        self, prompt_tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, seed: int = 0
    ) -> torch.Tensor:
        """Continue ``prompt_tokens`` ([B, T] or [T]) by ``max_new_tokens`` tokens using the KV cache.

        Greedy when ``temperature == 0``; otherwise samples with ``torch.multinomial`` and a
        ``torch.Generator`` seeded with ``seed`` (so samples differ from the NumPy version's, greedy
        outputs agree). Returns the prompt followed by the new tokens, with the prompt's rank.
        """
        _check_tensor("prompt_tokens", prompt_tokens, ndim=(1, 2), dtype_kind="i")
        squeeze = prompt_tokens.ndim == 1
        prompt = prompt_tokens[None, :] if squeeze else prompt_tokens
        prompt = _check_tokens(prompt, self.config)
        B, T = prompt.shape
        max_new_tokens, temperature, seed = check_generate_args(self.config, T, max_new_tokens, temperature, seed)
        gen = torch.Generator(device=prompt.device).manual_seed(seed)
        out = torch.empty((B, T + max_new_tokens), dtype=torch.long, device=prompt.device)
        out[:, :T] = prompt
        if max_new_tokens > 0:
            cache = self.new_cache(B, max_seq_len=T + max_new_tokens)
            logits = self.forward(prompt, cache)[:, -1]
            for step in range(max_new_tokens):
                if temperature == 0.0:
                    nxt = logits.argmax(dim=-1)
                else:
                    probs = torch.softmax(logits.double() / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
                out[:, T + step] = nxt
                if step + 1 < max_new_tokens:
                    logits = self.forward(out[:, T + step : T + step + 1], cache)[:, -1]
        return out[0] if squeeze else out


# ----------------------------------------------------------------------------------------------------------
# MiniLM
# ----------------------------------------------------------------------------------------------------------


def minilm_forward(
    params: dict[str, Any],
    config: MiniLMConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    return_hidden_states: bool = False,
    linear: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """BERT encoder forward pass in PyTorch; same math and outputs as ``reference.minilm_forward``.

    ``params`` may hold NumPy arrays (wrapped without copying) or tensors. Uses ``F.linear`` (weights
    stay ``[out, in]``), ``F.layer_norm``, exact ``F.gelu`` and fused scaled-dot-product attention with a
    boolean key mask. Runs on ``input_ids``'s device; call it under ``torch.no_grad()`` for inference.
    ``linear`` is the same per-layer hook as in the reference (``linear(name, x, weight, bias) -> y``).
    """
    check_minilm_config(config)
    _check_tensor("input_ids", input_ids)
    _check_tensor("attention_mask", attention_mask)
    _check_minilm_inputs(input_ids, attention_mask, config, allow_torch=True)
    _check_minilm_params(params, config)
    return_hidden_states = check_bool("return_hidden_states", return_hidden_states)
    _check_linear_hook(linear)
    device = input_ids.device
    eps = config.layer_norm_eps
    B, T = input_ids.shape
    h, d_k = config.num_attention_heads, config.head_dim

    def w(name: str) -> torch.Tensor:
        return torch.as_tensor(params[name], device=device)

    def dense(x: torch.Tensor, name: str) -> torch.Tensor:
        if linear is None:
            return F.linear(x, w(name + ".weight"), w(name + ".bias"))
        return linear(name, x, w(name + ".weight"), w(name + ".bias"))

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), w(name + ".weight"), w(name + ".bias"), eps)

    ids = input_ids.long()
    x = F.embedding(ids, w("embeddings.word_embeddings.weight"))
    x = x + w("embeddings.position_embeddings.weight")[:T] + w("embeddings.token_type_embeddings.weight")[0]
    x = ln(x, "embeddings.LayerNorm")
    hidden_states = [x]
    keep = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, h, d_k).transpose(1, 2)

    for i in range(config.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        q = heads(dense(x, pre + "attention.self.query"))
        k = heads(dense(x, pre + "attention.self.key"))
        v = heads(dense(x, pre + "attention.self.value"))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(B, T, h * d_k)
        x = ln(x + dense(ctx, pre + "attention.output.dense"), pre + "attention.output.LayerNorm")
        ffn = dense(F.gelu(dense(x, pre + "intermediate.dense")), pre + "output.dense")
        x = ln(x + ffn, pre + "output.LayerNorm")
        hidden_states.append(x)
    return (x, hidden_states) if return_hidden_states else x


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean over tokens, then L2 normalization (``F.normalize``); ``[B, H]``."""
    _check_tensor("hidden", hidden, ndim=3, dtype_kind="f")
    _check_tensor("attention_mask", attention_mask, ndim=2)
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"attention_mask must have shape {tuple(hidden.shape[:2])} (hidden's [B, T]), got {tuple(attention_mask.shape)}"
        )
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    mean = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)
    return F.normalize(mean, p=2.0, dim=-1, eps=1e-12)
