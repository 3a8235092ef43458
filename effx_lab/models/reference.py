"""The course's models in plain NumPy, written to be read.

* **TinyLM**, a GPT-2-style decoder-only language model with a KV cache: learned token and absolute
  position embeddings, pre-LayerNorm blocks of causal multi-head attention (optionally grouped-query)
  and a GELU MLP, a final LayerNorm, and an output head tied to the token embedding.
* **MiniLM** (all-MiniLM-L6-v2), a 6-layer post-LayerNorm BERT encoder, and the sentence-transformers
  pooling that turns its last hidden state into a sentence embedding.

Names follow the papers: ``Q, K, V, W^Q, W^K, W^V, W^O`` and ``softmax(Q K^T / sqrt(d_k)) V`` from
"Attention Is All You Need" (Vaswani et al. 2017, eq. 1-2); the BERT layer from "BERT: Pre-training of
Deep Bidirectional Transformers for Language Understanding" (Devlin et al. 2019).
:mod:`effx_lab.models.torch_ops` exports the same names for PyTorch tensors; tests check the two agree.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

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


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis (Ba et al. 2016): ``(x - mean) / sqrt(var + eps) * weight + bias``.

    ``var`` is the biased variance (divided by the width), as in ``torch.nn.LayerNorm``.
    """
    check_array("x", x, dtype_kind="f")
    check_array("weight", weight, ndim=1, dtype_kind="f")
    check_array("bias", bias, ndim=1, dtype_kind="f")
    if x.ndim == 0 or weight.shape[0] != x.shape[-1] or bias.shape != weight.shape:
        raise ValueError(
            f"weight and bias must have shape ({x.shape[-1] if x.ndim else '?'},) to match x's last axis, got "
            f"x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    eps = check_float("eps", eps, min_value=0.0, min_inclusive=False)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(x.dtype, copy=False)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation used by GPT-2 (Hendrycks & Gimpel 2016, section 2):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    check_array("x", x, dtype_kind="f")
    c = np.sqrt(2.0 / np.pi).astype(x.dtype)
    return (0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype, copy=False)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf(x) by Abramowitz & Stegun formula 7.1.26 (absolute error < 1.5e-7), computed in float64.

    NumPy has no erf and the course does not depend on SciPy; this error is far below float32's
    resolution of GELU's outputs.
    """
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-z * z))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))`` (Hendrycks & Gimpel 2016), as in BERT."""
    check_array("x", x, dtype_kind="f")
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))).astype(x.dtype, copy=False)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtract the max before ``exp`` (``-inf`` entries get weight 0)."""
    check_array("x", x, dtype_kind="f")
    axis = check_int("axis", axis, min_value=-max(x.ndim, 1), max_value=max(x.ndim, 1) - 1)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# TinyLM
# ----------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer, preallocated for ``max_seq_len`` positions.

    ``k[layer]`` and ``v[layer]`` have shape ``[batch, kv_heads, max_seq_len, head_dim]``; positions
    ``0 .. length-1`` are filled. Its size is the chapter-1 formula
    ``2 * n_layers * kv_heads * head_dim * max_seq_len * batch * bytes_per_element`` (:attr:`nbytes`).
    Every sequence of the batch has the same length (no padding).
    """

    def __init__(
        self,
        config: TinyLMConfig,
        batch_size: int,
        *,
        max_seq_len: int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        check_tinylm_config(config)
        batch_size = check_int("batch_size", batch_size, min_value=1)
        if max_seq_len is None:
            max_seq_len = config.max_seq_len
        max_seq_len = check_int("max_seq_len", max_seq_len, min_value=1, max_value=config.max_seq_len)
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype must be a float dtype, got {dtype}")
        self.config = config
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.dtype = dtype
        shape = (batch_size, config.kv_heads, max_seq_len, config.head_dim)
        check_alloc(
            f"KVCache(batch_size={batch_size}, max_seq_len={max_seq_len}) for {config}",
            2 * config.n_layers * batch_size * config.kv_heads * max_seq_len * config.head_dim * dtype.itemsize,
        )
        self.k = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [np.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated keys and values of all layers."""
        return int(sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v))

    def reset(self) -> None:
        """Forget the cached positions (the memory stays allocated)."""
        self.length = 0

    def __repr__(self) -> str:
        return (
            f"KVCache(batch_size={self.batch_size}, length={self.length}/{self.max_seq_len}, "
            f"layers={self.config.n_layers}, kv_heads={self.config.kv_heads}, head_dim={self.config.head_dim}, "
            f"dtype={self.dtype}, nbytes={self.nbytes})"
        )


def _check_tokens(tokens: Any, config: TinyLMConfig) -> np.ndarray:
    check_array("tokens", tokens, ndim=2, dtype_kind="iu")
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must have shape [batch, seq] with batch >= 1 and seq >= 1, got {tokens.shape}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(
            f"tokens must be in [0, {config.vocab_size - 1}] (vocab_size={config.vocab_size}), got values in [{lo}, {hi}]"
        )
    return tokens.astype(np.int64, copy=False)


def _check_cache(cache: Any, config: TinyLMConfig, batch: int, seq: int) -> None:
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a reference.KVCache (from model.new_cache), got {describe(cache)}")
    if cache.config != config:
        raise ValueError(f"cache was built for {cache.config}, but the model has {config}")
    if cache.batch_size != batch:
        raise ValueError(f"tokens has batch size {batch}, but the cache holds batch_size={cache.batch_size}")
    if cache.length + seq > cache.max_seq_len:
        raise ValueError(
            f"tokens of length {seq} do not fit in the cache: cache.length={cache.length} + {seq} > "
            f"max_seq_len={cache.max_seq_len}"
        )


class TinyLM:
    """TinyLM in NumPy: ``TinyLM(params, config)``, with ``params`` as described in :mod:`.config`.

    One block (pre-LN, as in GPT-2)::

        x = x + MultiHeadAttention(LayerNorm_1(x))      # causal, Vaswani et al. eq. 1-2
        x = x + W_2 GELU(W_1 LayerNorm_2(x) + b_1) + b_2

    and ``logits = LayerNorm_f(x) @ tok_emb.T``. Computations run in float32.
    """

    def __init__(self, params: dict[str, np.ndarray], config: TinyLMConfig) -> None:
        check_tinylm_config(config)
        self.config = config
        self.params = check_tinylm_params(params, config)

    @classmethod
    def from_params(cls, params: dict[str, np.ndarray], config: TinyLMConfig) -> "TinyLM":
        """Same as ``TinyLM(params, config)`` (mirrors ``torch_ops.TinyLM.from_params``)."""
        return cls(params, config)

    @classmethod
    def from_config(cls, config: TinyLMConfig, seed: int = 0) -> "TinyLM":
        """A freshly initialised model (:func:`init_tinylm_params` with ``seed``)."""
        return cls(init_tinylm_params(config, seed), config)

    def to_params(self) -> dict[str, np.ndarray]:
        """A copy of the weights as a float32 parameter dict."""
        return {k: v.copy() for k, v in self.params.items()}

    def new_cache(self, batch_size: int, *, max_seq_len: int | None = None) -> KVCache:
        """An empty float32 :class:`KVCache` for ``batch_size`` sequences."""
        return KVCache(self.config, batch_size, max_seq_len=max_seq_len, dtype=np.float32)

    # -- the two sub-layers ------------------------------------------------------------------------------
    def _attention(self, i: int, x: np.ndarray, start: int, cache: KVCache | None) -> np.ndarray:
        """Causal multi-head attention of layer ``i`` on ``x`` [B, T, d_model] at positions start..start+T-1."""
        cfg, p = self.config, self.params
        pre = f"layers.{i}.attn."
        B, T, _ = x.shape
        h, h_kv, d_k = cfg.n_heads, cfg.kv_heads, cfg.head_dim

        # Q = X W^Q, K = X W^K, V = X W^V, split into heads: [B, heads, T, d_k]
        Q = (x @ p[pre + "wq"] + p[pre + "bq"]).reshape(B, T, h, d_k).transpose(0, 2, 1, 3)
        K = (x @ p[pre + "wk"] + p[pre + "bk"]).reshape(B, T, h_kv, d_k).transpose(0, 2, 1, 3)
        V = (x @ p[pre + "wv"] + p[pre + "bv"]).reshape(B, T, h_kv, d_k).transpose(0, 2, 1, 3)

        if cache is not None:  # append this step's keys/values, then attend to everything cached so far
            cache.k[i][:, :, start : start + T] = K
            cache.v[i][:, :, start : start + T] = V
            K = cache.k[i][:, :, : start + T]
            V = cache.v[i][:, :, : start + T]

        # Grouped-query attention: query head j reads key/value head j // (h / h_kv).
        group = h // h_kv
        K = np.repeat(K, group, axis=1)
        V = np.repeat(V, group, axis=1)

        # scores = Q K^T / sqrt(d_k); query at absolute position start+t sees keys at positions <= start+t
        scores = np.einsum("bhtd,bhsd->bhts", Q, K) / np.sqrt(d_k).astype(np.float32)
        q_pos = start + np.arange(T)[:, None]
        k_pos = np.arange(K.shape[2])[None, :]
        scores = np.where(k_pos <= q_pos, scores, -np.inf)
        A = softmax(scores, axis=-1)
        heads = np.einsum("bhts,bhsd->bhtd", A, V)  # [B, h, T, d_k]

        concat = heads.transpose(0, 2, 1, 3).reshape(B, T, h * d_k)  # Concat(head_1, ..., head_h)
        return (concat @ p[pre + "wo"] + p[pre + "bo"]).astype(np.float32, copy=False)

    def _mlp(self, i: int, x: np.ndarray) -> np.ndarray:
        p, pre = self.params, f"layers.{i}.mlp."
        hidden = gelu_tanh(x @ p[pre + "w1"] + p[pre + "b1"])
        return hidden @ p[pre + "w2"] + p[pre + "b2"]

    def forward(self, tokens: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
        """Logits ``[B, T, vocab_size]`` (float32) for integer ``tokens`` ``[B, T]``.

        Without a cache the tokens sit at positions ``0..T-1``. With a cache they sit at positions
        ``cache.length .. cache.length+T-1``: their keys/values are appended to the cache, they attend to
        every cached position and causally to each other, and ``cache.length`` grows by ``T``.
        """
        cfg, p = self.config, self.params
        tokens = _check_tokens(tokens, cfg)
        B, T = tokens.shape
        if cache is None:
            start = 0
            if T > cfg.max_seq_len:
                raise ValueError(f"tokens has length {T}, more than max_seq_len={cfg.max_seq_len}")
        else:
            _check_cache(cache, cfg, B, T)
            start = cache.length

        x = p["tok_emb"][tokens] + p["pos_emb"][start : start + T]  # [B, T, d_model]
        for i in range(cfg.n_layers):
            pre = f"layers.{i}."
            x = x + self._attention(i, layer_norm(x, p[pre + "ln1.weight"], p[pre + "ln1.bias"], cfg.norm_eps), start, cache)
            x = x + self._mlp(i, layer_norm(x, p[pre + "ln2.weight"], p[pre + "ln2.bias"], cfg.norm_eps))
        x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], cfg.norm_eps)
        if cache is not None:
            cache.length = start + T
        return x @ p["tok_emb"].T  # output head tied to the token embedding

    __call__ = forward

    def generate(
        self, prompt_tokens: np.ndarray, max_new_tokens: int, temperature: float = 0.0, seed: int = 0
    ) -> np.ndarray:
        """Continue ``prompt_tokens`` ([B, T] or [T]) by ``max_new_tokens`` tokens using the KV cache.

        The prompt is run once (prefill), then one token per step (decode), each step attending to the
        cache. ``temperature == 0`` picks the most likely token (greedy); otherwise tokens are sampled from
        ``softmax(logits / temperature)`` with ``numpy.random.default_rng(seed)``. Returns the prompt
        followed by the new tokens, with the prompt's rank.
        """
        check_array("prompt_tokens", prompt_tokens, ndim=(1, 2), dtype_kind="iu")
        squeeze = prompt_tokens.ndim == 1
        prompt = prompt_tokens[None, :] if squeeze else prompt_tokens
        prompt = _check_tokens(prompt, self.config)
        B, T = prompt.shape
        max_new_tokens, temperature, seed = check_generate_args(self.config, T, max_new_tokens, temperature, seed)
        rng = np.random.default_rng(seed)
        out = np.empty((B, T + max_new_tokens), dtype=np.int64)
        out[:, :T] = prompt
        if max_new_tokens > 0:
            cache = self.new_cache(B, max_seq_len=T + max_new_tokens)
            logits = self.forward(prompt, cache)[:, -1]  # prefill
            for step in range(max_new_tokens):
                if temperature == 0.0:
                    nxt = logits.argmax(axis=-1)
                else:
                    probs = softmax(logits.astype(np.float64) / temperature, axis=-1)
                    u = rng.random(B)[:, None]
                    nxt = np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), self.config.vocab_size - 1)
                out[:, T + step] = nxt
                if step + 1 < max_new_tokens:
                    logits = self.forward(out[:, T + step : T + step + 1], cache)[:, -1]  # decode
        return out[0] if squeeze else out


# ----------------------------------------------------------------------------------------------------------
# MiniLM (BERT encoder) and sentence-transformers pooling
# ----------------------------------------------------------------------------------------------------------


def _check_minilm_inputs(input_ids: Any, attention_mask: Any, config: MiniLMConfig, allow_torch: bool) -> None:
    check_minilm_config(config)
    check_array("input_ids", input_ids, ndim=2, dtype_kind="iu", allow_torch=allow_torch)
    check_array("attention_mask", attention_mask, ndim=2, dtype_kind="iub", allow_torch=allow_torch)
    if tuple(input_ids.shape) != tuple(attention_mask.shape):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    B, T = input_ids.shape
    if B < 1 or T < 1:
        raise ValueError(f"input_ids must have shape [batch, seq] with batch, seq >= 1, got {tuple(input_ids.shape)}")
    if T > config.max_position_embeddings:
        raise ValueError(f"input_ids has length {T}, more than max_position_embeddings={config.max_position_embeddings}")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(f"input_ids must be in [0, {config.vocab_size - 1}], got values in [{lo}, {hi}]")
    m = attention_mask.astype(np.int64) if isinstance(attention_mask, np.ndarray) else attention_mask.long()
    if int(((m != 0) & (m != 1)).sum()) > 0:
        raise ValueError("attention_mask must contain only 0 and 1")
    if int((m.sum(1) == 0).sum()) > 0:
        raise ValueError("attention_mask has a row of zeros: every sequence needs at least one real token")


def _check_minilm_params(params: Any, config: MiniLMConfig) -> None:
    check_minilm_config(config)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict (from load_minilm), got {describe(params)}")
    needed = ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight"]
    needed += [f"encoder.layer.{i}.output.LayerNorm.bias" for i in range(config.num_hidden_layers)]
    missing = [k for k in needed if k not in params]
    if missing:
        raise ValueError(f"params is missing keys {missing}: pass the dict returned by load_minilm()")
    shape = tuple(params["embeddings.word_embeddings.weight"].shape)
    if shape != (config.vocab_size, config.hidden_size):
        raise ValueError(
            f"params['embeddings.word_embeddings.weight'] must have shape {(config.vocab_size, config.hidden_size)}, got {shape}"
        )


def _check_linear_hook(linear: Any) -> None:
    if linear is not None and not callable(linear):
        raise TypeError(f"linear must be None or a callable linear(name, x, weight, bias) -> y, got {describe(linear)}")


def minilm_forward(
    params: dict[str, np.ndarray],
    config: MiniLMConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    *,
    return_hidden_states: bool = False,
    linear: Callable[[str, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
    """BERT encoder (Devlin et al. 2019) in NumPy; returns the last hidden state ``[B, T, hidden]``.

    Embeddings: ``LayerNorm(word[input_ids] + position[0..T-1] + token_type[0])``. Each of the
    ``num_hidden_layers`` post-LN layers::

        A = LayerNorm(X + MultiHead(X) W_O + b_O)        # padded keys masked out of the softmax
        X = LayerNorm(A + GELU(A W_1^T + b_1) W_2^T + b_2)

    Weights keep the checkpoint's (PyTorch) layout ``[out, in]``, hence the transposes. With
    ``return_hidden_states=True`` also returns the list of ``num_hidden_layers + 1`` hidden states
    (embedding output, then every layer's output), like Hugging Face's ``output_hidden_states``.

    ``linear``, if given, replaces every linear layer: it is called as ``linear(name, x, weight, bias)``
    with the layer's checkpoint name (e.g. ``"encoder.layer.0.intermediate.dense"``), its input ``x``
    ``[B, T, in]`` and the weight ``[out, in]`` and bias, and returns ``[B, T, out]``. Chapter 2 uses it
    to quantize weights and activations, or to record what flows into each layer.
    """
    _check_minilm_inputs(input_ids, attention_mask, config, allow_torch=False)
    _check_minilm_params(params, config)
    return_hidden_states = check_bool("return_hidden_states", return_hidden_states)
    _check_linear_hook(linear)
    p, eps = params, config.layer_norm_eps
    B, T = input_ids.shape
    h, d_k = config.num_attention_heads, config.head_dim

    def dense(x: np.ndarray, name: str) -> np.ndarray:
        if linear is None:
            return x @ p[name + ".weight"].T + p[name + ".bias"]
        return linear(name, x, p[name + ".weight"], p[name + ".bias"])

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, p[name + ".weight"], p[name + ".bias"], eps)

    x = (
        p["embeddings.word_embeddings.weight"][input_ids]
        + p["embeddings.position_embeddings.weight"][:T]
        + p["embeddings.token_type_embeddings.weight"][0]
    )
    x = ln(x.astype(np.float32), "embeddings.LayerNorm")
    hidden_states = [x]
    keep = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, T_keys]

    for i in range(config.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        Q = dense(x, pre + "attention.self.query").reshape(B, T, h, d_k).transpose(0, 2, 1, 3)
        K = dense(x, pre + "attention.self.key").reshape(B, T, h, d_k).transpose(0, 2, 1, 3)
        V = dense(x, pre + "attention.self.value").reshape(B, T, h, d_k).transpose(0, 2, 1, 3)
        scores = np.einsum("bhtd,bhsd->bhts", Q, K) / np.float32(np.sqrt(d_k))
        A = softmax(np.where(keep, scores, -np.inf), axis=-1)
        heads = np.einsum("bhts,bhsd->bhtd", A, V).transpose(0, 2, 1, 3).reshape(B, T, h * d_k)
        x = ln(x + dense(heads, pre + "attention.output.dense"), pre + "attention.output.LayerNorm")
        ffn = dense(gelu_erf(dense(x, pre + "intermediate.dense")), pre + "output.dense")
        x = ln(x + ffn, pre + "output.LayerNorm").astype(np.float32, copy=False)
        hidden_states.append(x)
    return (x, hidden_states) if return_hidden_states else x


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embedding of sentence-transformers: mask-weighted mean over tokens, then L2 normalize.

    ``e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9)``, then ``e_b / max(||e_b||, 1e-12)``. Returns ``[B, H]``.
    """
    check_array("hidden", hidden, ndim=3, dtype_kind="f")
    check_array("attention_mask", attention_mask, ndim=2, dtype_kind="iubf")
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"attention_mask must have shape {tuple(hidden.shape[:2])} (hidden's [B, T]), got {tuple(attention_mask.shape)}"
        )
    m = attention_mask.astype(hidden.dtype)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    mean = summed / counts
    norm = np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    return (mean / norm).astype(hidden.dtype, copy=False)
