"""Memory accounting for Transformer inference: weights and the KV cache (chapter 1, section 01.1).

Two things must sit in accelerator memory while a decoder generates text:

* the **weights**: ``n_params * bytes_per_param``;
* the **KV cache**: for every layer, every key/value head and every token already seen, one key vector
  and one value vector of ``head_dim`` numbers, so

  ``kv_bytes = 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem``

  (the leading 2 is "K and V"). Multi-query attention (MQA, Shazeer 2019) uses ``n_kv_heads = 1``;
  grouped-query attention (GQA, Ainslie et al. 2023) uses ``1 < n_kv_heads < n_heads``.

Conventions used throughout this module:

* Byte counts are exact Python ``int`` (never float, never a fixed-width NumPy integer that could
  overflow: a 500B-class KV cache is ~6e12 bytes, far beyond int32).
* Sub-byte formats (int4 is 0.5 byte per element) are handled with exact fractions; when a count of
  elements times a fractional byte size is not a whole number the result is **rounded up** (a partly
  used byte still has to be stored).
* Parameter counts computed by :meth:`ModelShape.params` cover the matrices (attention q/k/v/o, the MLP,
  the embedding table and an untied output head when there is one). Biases, norm scales and learned
  position embeddings are left out: they are below 0.5% of every preset here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np

from effx_lab._validate import check_bool, check_int, describe

__all__ = [
    "DTYPE_BYTES",
    "dtype_bytes",
    "param_bytes",
    "kv_cache_bytes",
    "ModelShape",
    "PRESETS",
    "get_preset",
    "memory_report",
    "max_batch_size",
    "pope_example",
    "with_kv_heads",
    "kv_crossover_tokens",
]

#: Bytes per element of the number formats discussed in the course. Keys are lower-case names;
#: :func:`dtype_bytes` also understands NumPy and torch dtypes and a few aliases.
DTYPE_BYTES: dict[str, float] = {
    "fp64": 8,
    "float64": 8,
    "double": 8,
    "int64": 8,
    "fp32": 4,
    "float32": 4,
    "float": 4,
    "tf32": 4,  # stored as 32 bits; only the tensor-core math uses a 10-bit mantissa
    "int32": 4,
    "fp16": 2,
    "float16": 2,
    "half": 2,
    "bf16": 2,
    "bfloat16": 2,
    "int16": 2,
    "fp8": 1,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "int8": 1,
    "uint8": 1,
    "int4": 0.5,
    "uint4": 0.5,
    "fp4": 0.5,
    "nf4": 0.5,
}


def dtype_bytes(dtype: Any) -> float:
    """Bytes per element of ``dtype``.

    Accepts a name from :data:`DTYPE_BYTES` (case-insensitive, e.g. ``"bf16"``, ``"int4"``), a NumPy
    dtype or scalar type (``np.float16``), a torch dtype (``torch.bfloat16``) or its string
    ``"torch.bfloat16"``. Returns an ``int`` for whole-byte formats and ``0.5`` for 4-bit formats.
    """
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        if key.startswith("torch."):
            key = key[len("torch."):]
        if key in DTYPE_BYTES:
            return DTYPE_BYTES[key]
        try:  # NumPy spellings such as "f4" or "<i2"
            np_dtype = np.dtype(key)
        except TypeError:
            np_dtype = None
        if np_dtype is not None and np_dtype.kind in "biufc":
            return int(np_dtype.itemsize)
        raise ValueError(
            f"dtype must be one of {', '.join(sorted(DTYPE_BYTES))} (or a NumPy/torch dtype); got {dtype!r}"
        )
    module = type(dtype).__module__
    if module.startswith("torch"):
        import torch

        if isinstance(dtype, torch.dtype):
            return int(dtype.itemsize)
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        np_dtype = None
    if np_dtype is not None and dtype is not None and np_dtype.kind in "biufc":
        return int(np_dtype.itemsize)
    raise TypeError(f"dtype must be a dtype name, a NumPy dtype or a torch dtype, got {describe(dtype)}")


def _whole_number(name: str, value: Any, *, min_value: int = 0) -> int:
    """Accept an int, or a float holding a whole number (``540e9``), and return it as an exact int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an int (or a float holding a whole number), got {describe(value)}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        as_float = float(value)
        if not math.isfinite(as_float) or as_float != math.floor(as_float):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        out = int(as_float)
    if out < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {out}")
    return out


def _bytes_per_elem(name: str, value: Any) -> Fraction:
    """Validate a byte size (a positive real number such as 2, 1 or 0.5) and return it exactly."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number of bytes (e.g. 2, 1, 0.5), got {describe(value)}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float <= 0:
        raise ValueError(f"{name} must be a positive finite number of bytes (e.g. 2, 1, 0.5), got {value!r}")
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    # the shortest decimal that round-trips (0.1 -> 1/10, not the binary 0.1000000000000000055...)
    return Fraction(repr(as_float))


def _ceil_bytes(n_elems: int, bytes_per_elem: Fraction) -> int:
    """``ceil(n_elems * bytes_per_elem)`` computed exactly with integers."""
    total = n_elems * bytes_per_elem
    return -((-total.numerator) // total.denominator)


def _resolve_bytes(name: str, dtype: Any) -> Fraction:
    """A dtype (name, NumPy, torch) or a plain number of bytes -> exact bytes per element."""
    if isinstance(dtype, numbers.Real) and not isinstance(dtype, (bool, np.bool_)):
        return _bytes_per_elem(name, dtype)
    if isinstance(dtype, (bool, np.bool_)) or dtype is None:
        raise TypeError(f"{name} must be a dtype or a number of bytes, got {describe(dtype)}")
    try:
        return _bytes_per_elem(name, dtype_bytes(dtype))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


def param_bytes(n_params: int | float, dtype: Any) -> int:
    """Bytes needed to store ``n_params`` weights in ``dtype`` (rounded up for sub-byte formats).

    ``dtype`` may be a name/NumPy/torch dtype (see :func:`dtype_bytes`) or directly a number of bytes
    per parameter (``2``, ``0.5``). Example: ``param_bytes(7e9, "bf16") == 14_000_000_000``.
    """
    n = _whole_number("n_params", n_params)
    return _ceil_bytes(n, _resolve_bytes("dtype", dtype))


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch_size: int,
    bytes_per_elem: float = 2,
) -> int:
    """Size in bytes of the KV cache: ``2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes``.

    The 2 counts keys and values. Use ``n_kv_heads = n_heads`` for multi-head attention, ``1`` for
    multi-query attention and the number of KV groups for grouped-query attention. The count is exact
    (Python int, no overflow); with a fractional ``bytes_per_elem`` (0.5 for int4) it is rounded up to a
    whole byte.
    """
    n_layers = check_int("n_layers", n_layers, min_value=1)
    n_kv_heads = check_int("n_kv_heads", n_kv_heads, min_value=1)
    head_dim = check_int("head_dim", head_dim, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=0)
    batch_size = check_int("batch_size", batch_size, min_value=0)
    per = _bytes_per_elem("bytes_per_elem", bytes_per_elem)
    n_elems = 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size
    return _ceil_bytes(n_elems, per)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-style Transformer, enough to count its parameters, FLOPs and KV cache.

    ``n_params`` is the published parameter count when given (it wins over the computed one in
    :meth:`params`); ``gated_mlp`` marks a SwiGLU/GeGLU MLP with three ``d_model x d_ff`` matrices
    (gate, up, down) instead of two; ``tie_embeddings`` says whether the output head reuses the input
    embedding table (otherwise it is a second ``vocab_size x d_model`` matrix).
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    n_params: int | None = None
    source: str = ""
    gated_mlp: bool = False
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {describe(self.name)}")
        if not isinstance(self.source, str):
            raise TypeError(f"source must be a str, got {describe(self.source)}")
        for attr in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size"):
            object.__setattr__(self, attr, check_int(attr, getattr(self, attr), min_value=1))
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_kv_heads must divide n_heads (1 for MQA, n_heads for MHA), got n_kv_heads="
                f"{self.n_kv_heads} with n_heads={self.n_heads}"
            )
        if self.n_params is not None:
            object.__setattr__(self, "n_params", _whole_number("n_params", self.n_params, min_value=1))
        object.__setattr__(self, "gated_mlp", check_bool("gated_mlp", self.gated_mlp))
        object.__setattr__(self, "tie_embeddings", check_bool("tie_embeddings", self.tie_embeddings))

    # -- parameter counts ------------------------------------------------------------------------
    def attention_params_per_layer(self) -> int:
        """``W_q`` (d x H*Dh) + ``W_k``, ``W_v`` (d x Hkv*Dh each) + ``W_o`` (H*Dh x d)."""
        q_width = self.n_heads * self.head_dim
        kv_width = self.n_kv_heads * self.head_dim
        return self.d_model * q_width * 2 + self.d_model * kv_width * 2

    def mlp_params_per_layer(self) -> int:
        """Two ``d x d_ff`` matrices (up, down), or three with a gated MLP (gate, up, down)."""
        return (3 if self.gated_mlp else 2) * self.d_model * self.d_ff

    def embedding_params(self) -> int:
        """The input embedding table, plus an untied output head of the same size if there is one."""
        return (1 if self.tie_embeddings else 2) * self.vocab_size * self.d_model

    def computed_params(self) -> int:
        """Matrix parameters counted from the shape (biases, norms, position tables excluded)."""
        per_layer = self.attention_params_per_layer() + self.mlp_params_per_layer()
        return self.n_layers * per_layer + self.embedding_params()

    def params(self) -> int:
        """The published ``n_params`` when given, else :meth:`computed_params`."""
        return self.n_params if self.n_params is not None else self.computed_params()

    # -- KV cache ----------------------------------------------------------------------------------
    def kv_bytes_per_token(self, bytes_per_elem: float = 2) -> int:
        """KV-cache bytes one token adds: ``2 * n_layers * n_kv_heads * head_dim * bytes_per_elem``."""
        return kv_cache_bytes(self.n_layers, self.n_kv_heads, self.head_dim, 1, 1, bytes_per_elem)

    def kv_bytes(self, seq_len: int, batch_size: int, bytes_per_elem: float = 2) -> int:
        """KV-cache bytes for ``batch_size`` sequences of ``seq_len`` tokens."""
        return kv_cache_bytes(self.n_layers, self.n_kv_heads, self.head_dim, seq_len, batch_size, bytes_per_elem)


PRESETS: dict[str, ModelShape] = {
    "palm-540b": ModelShape(
        name="palm-540b",
        n_layers=118,
        d_model=18432,
        n_heads=48,
        n_kv_heads=1,
        head_dim=256,
        d_ff=73728,
        vocab_size=256000,
        n_params=540_000_000_000,
        gated_mlp=True,
        tie_embeddings=True,
        source="Chowdhery et al. 2022, 'PaLM: Scaling Language Modeling with Pathways', Table 1: "
        "118 layers, d_model 18432, 48 heads of 256, d_ff = 4 d_model, SwiGLU, vocab 256k, shared "
        "input/output embeddings, multi-query attention (one K/V head); 540B parameters as published.",
    ),
    "palm-540b-mha": ModelShape(
        name="palm-540b-mha",
        n_layers=118,
        d_model=18432,
        n_heads=48,
        n_kv_heads=48,
        head_dim=256,
        d_ff=73728,
        vocab_size=256000,
        n_params=540_000_000_000,
        gated_mlp=True,
        tie_embeddings=True,
        source="PaLM-540B's shape with multi-head attention (48 K/V heads of 256), the variant Pope et al. "
        "2022, 'Efficiently Scaling Transformer Inference', discuss. n_params keeps the published 540B; "
        "the shape itself counts ~593B because full-width K/V projections add ~52B.",
    ),
    "gpt3-175b": ModelShape(
        name="gpt3-175b",
        n_layers=96,
        d_model=12288,
        n_heads=96,
        n_kv_heads=96,
        head_dim=128,
        d_ff=49152,
        vocab_size=50257,
        n_params=175_000_000_000,
        gated_mlp=False,
        tie_embeddings=True,
        source="Brown et al. 2020, 'Language Models are Few-Shot Learners', Table 2.1: 96 layers, "
        "d_model 12288, 96 heads of 128, d_ff = 4 d_model, GPT-2 vocabulary of 50257; 175B as published.",
    ),
    "llama2-7b": ModelShape(
        name="llama2-7b",
        n_layers=32,
        d_model=4096,
        n_heads=32,
        n_kv_heads=32,
        head_dim=128,
        d_ff=11008,
        vocab_size=32000,
        n_params=None,
        gated_mlp=True,
        tie_embeddings=False,
        source="Touvron et al. 2023, 'Llama 2', and the released config.json: 32 layers, hidden 4096, "
        "32 heads of 128, SwiGLU intermediate 11008, vocab 32000, untied output head (6.74B).",
    ),
    "llama2-70b": ModelShape(
        name="llama2-70b",
        n_layers=80,
        d_model=8192,
        n_heads=64,
        n_kv_heads=8,
        head_dim=128,
        d_ff=28672,
        vocab_size=32000,
        n_params=None,
        gated_mlp=True,
        tie_embeddings=False,
        source="Touvron et al. 2023, 'Llama 2', and the released config.json: 80 layers, hidden 8192, "
        "64 query heads and 8 K/V heads of 128 (grouped-query attention), SwiGLU 28672, vocab 32000 (69B).",
    ),
    "minilm-l6": ModelShape(
        name="minilm-l6",
        n_layers=6,
        d_model=384,
        n_heads=12,
        n_kv_heads=12,
        head_dim=32,
        d_ff=1536,
        vocab_size=30522,
        n_params=22_713_728,
        gated_mlp=False,
        tie_embeddings=True,
        source="sentence-transformers/all-MiniLM-L6-v2 config.json (a BERT encoder: 6 layers, hidden 384, "
        "12 heads of 32, intermediate 1536, vocab 30522); n_params counted from the shipped safetensors "
        "(22,713,728 incl. position/type embeddings, biases, norms and the pooler).",
    ),
}


def get_preset(name: str) -> ModelShape:
    """Return the :data:`PRESETS` entry called ``name`` (raises ``ValueError`` listing the choices)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    if name not in PRESETS:
        raise ValueError(f"name must be one of {', '.join(map(repr, PRESETS))}; got {name!r}")
    return PRESETS[name]


def _check_shape(shape: Any) -> ModelShape:
    if isinstance(shape, str):
        return get_preset(shape)
    if not isinstance(shape, ModelShape):
        raise TypeError(f"shape must be a ModelShape (or a preset name), got {describe(shape)}")
    return shape


def with_kv_heads(shape: ModelShape | str, n_kv_heads: int, *, keep_n_params: bool = True, name: str | None = None) -> ModelShape:
    """The same model with ``n_kv_heads`` key/value heads: MHA (``n_heads``), GQA (a divisor) or MQA (``1``).

    Multi-query attention (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need") shares
    one K/V head among all query heads; grouped-query attention (Ainslie et al. 2023, "GQA: Training
    Generalized Multi-Query Transformer Models from Multi-Head Checkpoints") shares each of ``n_kv_heads``
    K/V heads among ``n_heads / n_kv_heads`` query heads. Only the K/V projections and the KV cache change.

    With ``keep_n_params=True`` (the default) the variant keeps the original's parameter count
    (:meth:`ModelShape.params`), so a comparison of caches is not blurred by the (small) change of the
    K/V projection weights; with ``False`` the count is recomputed from the new shape
    (:meth:`ModelShape.computed_params`). ``name`` defaults to the original name plus ``-mha``,
    ``-gqa<n>`` or ``-mqa``. ``shape`` may be a :data:`PRESETS` name.
    """
    shape = _check_shape(shape)
    n_kv_heads = check_int("n_kv_heads", n_kv_heads, min_value=1, max_value=shape.n_heads)
    if shape.n_heads % n_kv_heads != 0:
        raise ValueError(
            f"n_kv_heads must divide n_heads={shape.n_heads} (1 for MQA, {shape.n_heads} for MHA), got {n_kv_heads}"
        )
    keep_n_params = check_bool("keep_n_params", keep_n_params)
    if name is None:
        kind = "mha" if n_kv_heads == shape.n_heads else ("mqa" if n_kv_heads == 1 else f"gqa{n_kv_heads}")
        name = f"{shape.name}-{kind}"
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str or None, got {describe(name)}")
    note = f"{shape.source} [with_kv_heads: {n_kv_heads} K/V heads instead of {shape.n_kv_heads}"
    note += ", parameter count kept]" if keep_n_params else ", parameters recounted from the shape]"
    return replace(
        shape,
        name=name,
        n_kv_heads=n_kv_heads,
        n_params=shape.params() if keep_n_params else None,
        source=note,
    )


def kv_crossover_tokens(shape: ModelShape | str, *, weight_dtype: Any = "bf16", kv_dtype: Any = "bf16") -> int:
    """Smallest number of cached tokens at which the KV cache is at least as large as the weights.

    "Tokens" are summed over the batch (``seq_len * batch_size``): the KV cache only depends on that
    product. With ``p = 2 * n_layers * n_kv_heads * head_dim * kv_bytes`` bytes per token and ``W`` weight
    bytes, the answer is the smallest ``n`` with ``kv_cache_bytes(..., n tokens ...) >= W``, computed
    exactly: ``floor((W - 1) / p) + 1`` (the cache's byte count is rounded up, as in
    :func:`kv_cache_bytes`). For a batch of ``b`` sequences the cache overtakes the weights from
    context length ``ceil(n / b)`` on; for a context of ``s`` tokens, from batch ``ceil(n / s)`` on.
    """
    shape = _check_shape(shape)
    w_frac = _resolve_bytes("weight_dtype", weight_dtype)
    kv_frac = _resolve_bytes("kv_dtype", kv_dtype)
    weights = _ceil_bytes(shape.params(), w_frac)
    per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * kv_frac
    return int((weights - 1) // per_token) + 1


def memory_report(
    shape: ModelShape | str,
    *,
    batch_size: int,
    seq_len: int,
    weight_dtype: Any = "bf16",
    kv_dtype: Any = "bf16",
) -> dict:
    """Weights vs KV cache for ``batch_size`` sequences of ``seq_len`` tokens.

    Returns a dict of plain Python numbers: ``n_params``, ``weight_bytes``, ``kv_bytes``,
    ``kv_bytes_per_token`` (one token of one sequence), ``total_bytes``, ``kv_to_weights`` (ratio) and
    the inputs. ``weight_dtype``/``kv_dtype`` accept anything :func:`dtype_bytes` does, or a number of bytes.
    """
    shape = _check_shape(shape)
    batch_size = check_int("batch_size", batch_size, min_value=0)
    seq_len = check_int("seq_len", seq_len, min_value=0)
    w_frac = _resolve_bytes("weight_dtype", weight_dtype)
    kv_frac = _resolve_bytes("kv_dtype", kv_dtype)
    w_per = float(w_frac)
    kv_per = float(kv_frac)
    n_params = shape.params()
    weight_b = _ceil_bytes(n_params, w_frac)
    kv_b = shape.kv_bytes(seq_len, batch_size, kv_per)
    return {
        "model": shape.name,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "weight_bytes_per_param": float(w_per),
        "kv_bytes_per_elem": float(kv_per),
        "n_params": n_params,
        "weight_bytes": weight_b,
        "kv_bytes": kv_b,
        "kv_bytes_per_token": shape.kv_bytes_per_token(kv_per),
        "total_bytes": weight_b + kv_b,
        "kv_to_weights": kv_b / weight_b,
    }


def max_batch_size(
    memory_bytes: int | float,
    shape: ModelShape,
    seq_len: int,
    weight_bytes_per_param: float,
    kv_bytes_per_elem: float,
) -> int:
    """Largest batch of ``seq_len``-token sequences whose weights plus KV cache fit in ``memory_bytes``.

    ``weights = param_bytes(shape.params(), weight_bytes_per_param)``; each sequence needs
    ``shape.kv_bytes(seq_len, 1, kv_bytes_per_elem)``. The answer is
    ``floor((memory_bytes - weights) / kv_per_sequence)`` computed exactly, and ``0`` when even the
    weights do not fit. (Activations, fragmentation and the framework's own memory are ignored: real
    servers reserve some headroom.)
    """
    memory = _whole_number("memory_bytes", memory_bytes)
    shape = _check_shape(shape)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    w_per = _bytes_per_elem("weight_bytes_per_param", weight_bytes_per_param)
    kv_per = _bytes_per_elem("kv_bytes_per_elem", kv_bytes_per_elem)
    weights = _ceil_bytes(shape.params(), w_per)
    if weights > memory:
        return 0
    kv_elems_per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len
    # batch b fits iff ceil(b * elems * kv_per) <= memory - weights iff b * elems * kv_per <= memory - weights
    free = Fraction(memory - weights)
    return int(free // (kv_elems_per_seq * kv_per))


def pope_example(batch_size: int = 512, seq_len: int = 2048) -> dict:
    """Recompute the survey's claim "KV cache ~3 TB, ~3x the weights" with every assumption explicit.

    The survey (Weng 2023) quotes Pope et al. 2022: a 500B+ model with multi-head attention at batch
    512 and context 2048 has a ~3 TB KV cache, ~3x the model. This function evaluates
    ``kv_cache_bytes`` on PaLM-540B's published shape under several assumptions and returns, per
    variant, the K/V width per layer (``n_kv_heads * head_dim``), the bytes per element, the KV bytes,
    and the ratio to the weights in bf16 (1.08 TB) and in int8 (0.54 TB). Three readings come from
    published facts (PaLM's shape, a 1-byte cache, PaLM as built); one is reverse-engineered:

    * ``mha_bf16``: PaLM's shape with 48 K/V heads of 256 in bf16 -> ~6.1 TB, ~5.6x bf16 weights;
    * ``mha_int8``: the same cache stored in 1 byte per element -> ~3.0 TB;
    * ``width_6144_bf16``: reverse-engineered, the K/V width per layer (6144, half of 48 x 256) that
      lands on 3 TB in bf16; no published model is claimed to have it, it shows what the quote requires;
    * ``mqa_bf16``: what PaLM actually uses, one K/V head (multi-query attention) -> ~0.13 TB.

    ``claim`` holds the quoted numbers so a notebook can set them side by side.
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    mha = PRESETS["palm-540b-mha"]
    mqa = PRESETS["palm-540b"]
    weights_bf16 = param_bytes(mha.params(), 2)
    weights_int8 = param_bytes(mha.params(), 1)
    variants = {
        "mha_bf16": (mha.n_layers, mha.n_kv_heads, mha.head_dim, 2, "PaLM-540B shape, multi-head K/V (48 x 256), bf16"),
        "mha_int8": (mha.n_layers, mha.n_kv_heads, mha.head_dim, 1, "PaLM-540B shape, multi-head K/V, 1 byte/element"),
        "width_6144_bf16": (mha.n_layers, 24, mha.head_dim, 2, "reverse-engineered: K/V width 6144 (24 x 256), bf16"),
        "mqa_bf16": (mqa.n_layers, mqa.n_kv_heads, mqa.head_dim, 2, "PaLM-540B as built: multi-query (1 x 256), bf16"),
    }
    out: dict[str, Any] = {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "n_layers": mha.n_layers,
        "n_params": mha.params(),
        "n_params_computed_mha": mha.computed_params(),
        "weight_bytes_bf16": weights_bf16,
        "weight_bytes_int8": weights_int8,
        "claim": {"kv_bytes": 3e12, "kv_to_weights": 3.0, "source": "Pope et al. 2022, quoted by Weng 2023"},
        "variants": {},
    }
    for key, (layers, kv_heads, head_dim, per, label) in variants.items():
        kv = kv_cache_bytes(layers, kv_heads, head_dim, seq_len, batch_size, per)
        out["variants"][key] = {
            "label": label,
            "kv_width_per_layer": kv_heads * head_dim,
            "bytes_per_elem": per,
            "kv_bytes": kv,
            "kv_to_weights_bf16": kv / weights_bf16,
            "kv_to_weights_int8": kv / weights_int8,
        }
    return out
