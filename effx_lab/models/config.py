"""Configurations of the course's two models, and the initial weights of TinyLM.

``TinyLMConfig`` describes the tiny decoder-only language model that every chapter compresses
(built twice: :mod:`effx_lab.models.reference` in NumPy, :mod:`effx_lab.models.torch_ops` in PyTorch).
``MiniLMConfig`` describes the real pretrained encoder all-MiniLM-L6-v2 (a 6-layer BERT).

TinyLM parameter dictionary
---------------------------
Both backends share one weight format, a ``dict[str, np.ndarray]`` of float32 arrays. Linear weights are
stored ``[in_features, out_features]`` so that a layer reads as in the papers, ``y = x W + b``
(e.g. ``Q = X W^Q`` in "Attention Is All You Need", eq. 1). Every linear layer has a bias (as in GPT-2).

=============================  ==============================  =========================================
key                            shape                           role
=============================  ==============================  =========================================
``tok_emb``                    ``[vocab_size, d_model]``       token embedding, also the output head (tied)
``pos_emb``                    ``[max_seq_len, d_model]``      learned absolute position embedding
``layers.{i}.ln1.weight/bias`` ``[d_model]``                   LayerNorm before attention (pre-LN)
``layers.{i}.attn.wq`` / bq    ``[d_model, n_heads*head_dim]`` query projection ``W^Q``
``layers.{i}.attn.wk`` / bk    ``[d_model, kv_heads*head_dim]`` key projection ``W^K`` (fewer heads: GQA)
``layers.{i}.attn.wv`` / bv    ``[d_model, kv_heads*head_dim]`` value projection ``W^V``
``layers.{i}.attn.wo`` / bo    ``[n_heads*head_dim, d_model]`` output projection ``W^O``
``layers.{i}.ln2.weight/bias`` ``[d_model]``                   LayerNorm before the MLP
``layers.{i}.mlp.w1`` / b1     ``[d_model, ffn_dim]``          first MLP layer (then GELU)
``layers.{i}.mlp.w2`` / b2     ``[ffn_dim, d_model]``          second MLP layer
``ln_f.weight/bias``           ``[d_model]``                   final LayerNorm
=============================  ==============================  =========================================

The logits are ``LayerNorm(x) @ tok_emb.T`` (no separate output matrix, no output bias).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from effx_lab._validate import check_alloc, check_float, check_instance, check_int, describe

__all__ = [
    "TinyLMConfig",
    "tinylm_param_shapes",
    "init_tinylm_params",
    "check_tinylm_params",
    "check_tinylm_config",
    "check_generate_args",
    "MiniLMConfig",
    "check_minilm_config",
]


@dataclass(frozen=True)
class TinyLMConfig:
    """Hyper-parameters of TinyLM.

    ``n_kv_heads=None`` means ``n_heads`` (ordinary multi-head attention); a smaller value that divides
    ``n_heads`` gives grouped-query attention (GQA, Ainslie et al. 2023), ``1`` gives multi-query
    attention (MQA, Shazeer 2019). ``d_ff=None`` means ``4 * d_model`` (as in the original Transformer).
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, min_value=1)
        check_int("d_model", self.d_model, min_value=1)
        check_int("n_layers", self.n_layers, min_value=1)
        check_int("n_heads", self.n_heads, min_value=1)
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={self.d_model} and n_heads={self.n_heads}"
            )
        if self.n_kv_heads is not None:
            check_int("n_kv_heads", self.n_kv_heads, min_value=1, max_value=self.n_heads)
            if self.n_heads % self.n_kv_heads != 0:
                raise ValueError(
                    f"n_kv_heads must divide n_heads={self.n_heads}, got n_kv_heads={self.n_kv_heads}"
                )
        if self.d_ff is not None:
            check_int("d_ff", self.d_ff, min_value=1)
        check_int("max_seq_len", self.max_seq_len, min_value=1)
        check_float("norm_eps", self.norm_eps, min_value=0.0, min_inclusive=False)
        # store plain Python numbers (NumPy integers would not survive json.dumps in checkpoints)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        object.__setattr__(self, "norm_eps", float(self.norm_eps))

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model / n_heads``."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (``n_heads`` unless GQA/MQA is configured)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the MLP (``4 * d_model`` unless ``d_ff`` is set)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def n_params(self) -> int:
        """Exact number of parameters (the tied output head is counted once, with the embedding).

        Per layer: two LayerNorms (``2 * 2d``), the projections ``W^Q, W^O`` (``d * d`` each), ``W^K, W^V``
        (``d * kv_heads * head_dim`` each), the MLP (``2 * d * d_ff``), and one bias per output unit.
        """
        d, kv = self.d_model, self.kv_heads * self.head_dim
        attn = (d * d + d) + 2 * (d * kv + kv) + (d * d + d)
        mlp = (d * self.ffn_dim + self.ffn_dim) + (self.ffn_dim * d + d)
        layer = attn + mlp + 2 * (2 * d)
        return self.vocab_size * d + self.max_seq_len * d + self.n_layers * layer + 2 * d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TinyLMConfig":
        """Build a config from a dict such as ``to_dict()``'s (unknown keys are an error)."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {describe(data)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"data has unknown TinyLMConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


def check_tinylm_config(config: Any, name: str = "config") -> TinyLMConfig:
    """Return ``config`` if it is a :class:`TinyLMConfig`, else raise ``TypeError`` naming ``name``."""
    return check_instance(name, config, TinyLMConfig)


def check_minilm_config(config: Any, name: str = "config") -> "MiniLMConfig":
    """Return ``config`` if it is a :class:`MiniLMConfig`, else raise ``TypeError`` naming ``name``."""
    return check_instance(name, config, MiniLMConfig)


def tinylm_param_shapes(config: TinyLMConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every TinyLM parameter, in a fixed order (see the module docstring)."""
    check_tinylm_config(config)
    d, f = config.d_model, config.ffn_dim
    q, kv = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb": (config.vocab_size, d),
        "pos_emb": (config.max_seq_len, d),
    }
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "ln1.weight": (d,),
                p + "ln1.bias": (d,),
                p + "attn.wq": (d, q),
                p + "attn.bq": (q,),
                p + "attn.wk": (d, kv),
                p + "attn.bk": (kv,),
                p + "attn.wv": (d, kv),
                p + "attn.bv": (kv,),
                p + "attn.wo": (q, d),
                p + "attn.bo": (d,),
                p + "ln2.weight": (d,),
                p + "ln2.bias": (d,),
                p + "mlp.w1": (d, f),
                p + "mlp.b1": (f,),
                p + "mlp.w2": (f, d),
                p + "mlp.b2": (d,),
            }
        )
    shapes["ln_f.weight"] = (d,)
    shapes["ln_f.bias"] = (d,)
    return shapes


def init_tinylm_params(config: TinyLMConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 TinyLM weights, initialised as in GPT-2 (Radford et al. 2019).

    Weights ~ N(0, 0.02²); the two projections that write into the residual stream (``attn.wo`` and
    ``mlp.w2``) are scaled down by ``1/sqrt(2 * n_layers)`` so the residual's variance does not grow with
    depth; the position embedding uses std 0.01; biases are 0; LayerNorm gains are 1.
    """
    shapes = tinylm_param_shapes(config)
    seed = check_int("seed", seed, min_value=0)
    # float32 weights, plus the float64 draw of the largest one before its cast
    check_alloc(f"init_tinylm_params({config})", 4 * config.n_params() + 8 * max(math.prod(v) for v in shapes.values()))
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / np.sqrt(2 * config.n_layers)
    params: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
            value = np.ones(shape)
        elif len(shape) == 1:
            value = np.zeros(shape)
        elif name == "pos_emb":
            value = rng.normal(0.0, 0.01, size=shape)
        elif name.endswith("attn.wo") or name.endswith("mlp.w2"):
            value = rng.normal(0.0, residual_std, size=shape)
        else:
            value = rng.normal(0.0, 0.02, size=shape)
        params[name] = value.astype(np.float32)
    return params


def check_generate_args(
    config: TinyLMConfig, prompt_len: int, max_new_tokens: Any, temperature: Any, seed: Any
) -> tuple[int, float, int]:
    """Validate ``TinyLM.generate``'s arguments (shared by both backends); return them normalised."""
    check_tinylm_config(config)
    prompt_len = check_int("prompt_len", prompt_len, min_value=1)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min_value=0)
    temperature = check_float("temperature", temperature, min_value=0.0)
    seed = check_int("seed", seed, min_value=0)
    if prompt_len + max_new_tokens > config.max_seq_len:
        raise ValueError(
            f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds max_seq_len={config.max_seq_len}"
        )
    return max_new_tokens, temperature, seed


def check_tinylm_params(params: Any, config: TinyLMConfig) -> dict[str, np.ndarray]:
    """Validate a TinyLM parameter dict and return a float32 copy of it.

    Raises ``TypeError``/``ValueError`` naming the key that is missing, unexpected, of the wrong shape,
    or not finite.
    """
    shapes = tinylm_param_shapes(config)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of NumPy arrays, got {describe(params)}")
    missing = [k for k in shapes if k not in params]
    if missing:
        raise ValueError(f"params is missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} for {config}")
    extra = sorted(k for k in params if k not in shapes)
    if extra:
        raise ValueError(f"params has unexpected keys {extra[:5]}; expected the keys of tinylm_param_shapes(config)")
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        value = params[name]
        if not isinstance(value, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a NumPy array, got {describe(value)}")
        if value.dtype.kind != "f":
            raise TypeError(f"params[{name!r}] must have a float dtype, got {value.dtype}")
        if tuple(value.shape) != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}, got {tuple(value.shape)}")
        if not np.isfinite(value).all():
            raise ValueError(f"params[{name!r}] must contain only finite values (no NaN/inf)")
        out[name] = np.ascontiguousarray(value, dtype=np.float32).copy()
    return out


@dataclass(frozen=True)
class MiniLMConfig:
    """The BERT hyper-parameters of all-MiniLM-L6-v2 (read from its ``config.json``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            check_int(name, getattr(self, name), min_value=1)
        check_int("pad_token_id", self.pad_token_id, min_value=0, max_value=self.vocab_size - 1)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size must be divisible by num_attention_heads, got {self.hidden_size} and "
                f"{self.num_attention_heads}"
            )
        check_float("layer_norm_eps", self.layer_norm_eps, min_value=0.0, min_inclusive=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str | Path) -> "MiniLMConfig":
        """Read a Hugging Face BERT ``config.json``; only ``hidden_act == "gelu"`` (exact erf) is supported."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, got {describe(path)}")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        act = data.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"config.json hidden_act must be 'gelu' (exact erf GELU), got {act!r}")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                "config.json position_embedding_type must be 'absolute', got "
                f"{data.get('position_embedding_type')!r}"
            )
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
