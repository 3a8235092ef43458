"""Chapter 7 benchmarks: ``python -m effx_lab.bench flash`` (or ``ch07``), or the pieces from a notebook.

Hua, Dai, Liu and Le, "Transformer Quality in Linear Time" (ICML 2022). The chapter's claim is about time:
FLASH's cost grows linearly with the sequence length ``n`` while softmax attention (and FLASH-Quad) grow
quadratically, so that FLASH wins by a wide margin on long sequences. Everything here measures that on the
reader's device, side by side (:func:`effx_lab.bench.compare`: all candidates at one length are timed in
one run, interleaved round by round, so their ratios survive a busy machine):

* :func:`mixing_fns`: the token-mixing operators alone, on pre-made inputs: softmax attention (ours and
  PyTorch's fused SDPA), FLASH-Quad's ``relu^2`` attention and FLASH's mixed chunk attention.
* :func:`layer_fns`: whole models of about the same parameter count: one Transformer layer (MHA + FFN,
  ``12 d^2`` weights; also with SDPA for the attention, :func:`transformer_layer_sdpa`) against two GAU
  layers (FLASH-Quad) and two FLASH layers (about ``6 d^2`` each).
* :func:`time_vs_length`: either set over a list of lengths, one :class:`~effx_lab.bench.Comparison` per
  length.
* :func:`numpy_vs_torch`: the NumPy reference FLASH layer against the PyTorch one.
* :func:`triton_vs_torch`: on a CUDA GPU, the Triton kernel of mixed chunk attention against the PyTorch
  version (and against flash-linear-attention's chunked linear attention when ``fla`` is installed).
* :func:`run`: all of it with the chapter's goals as computed ratios, each ``{"value", "goal", "met"}``.

Every public function returns plain JSON-able values (converted by :func:`effx_lab.bench.to_jsonable`).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import check_bool, check_choice, check_float, check_int, describe
from effx_lab.bench import check_threads, goal, limit_threads
from effx_lab.device import resolve_torch_device

__all__ = [
    "LAYER_KINDS",
    "MIXING_KINDS",
    "MODEL_KINDS",
    "RUN_CONFIG",
    "layer_fns",
    "make_inputs",
    "mixing_fns",
    "model_fns",
    "numpy_vs_torch",
    "run",
    "time_vs_length",
    "transformer_layer_sdpa",
    "triton_vs_torch",
]

#: token-mixing operators timed by :func:`mixing_fns`
MIXING_KINDS = ("softmax", "sdpa", "gau_quad", "flash")
#: models of equal parameter budget timed by :func:`layer_fns`
LAYER_KINDS = ("transformer", "transformer_sdpa", "flash_quad", "flash")
#: whole language models (embedding, layers, head) timed by :func:`model_fns`
MODEL_KINDS = ("transformer", "flash_quad", "flash")
#: for each level, the quadratic softmax baseline, the SDPA version of it, FLASH-Quad and FLASH
_ROLES = {
    "mixing": {"softmax": "softmax", "sdpa": "sdpa", "quad": "gau_quad", "flash": "flash"},
    "layer": {"softmax": "transformer", "sdpa": "transformer_sdpa", "quad": "flash_quad", "flash": "flash"},
}


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------


def _dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype such as torch.float32, got {describe(dtype)}")
    return dtype


def _shape_args(
    n: Any, d_model: Any, n_heads: Any, expansion: Any, s: Any, chunk_size: Any, causal: Any, seed: Any, batch: Any
) -> tuple[int, int, int, int, int, int, bool, int, int]:
    n = check_int("n", n, min_value=1)
    d_model = check_int("d_model", d_model, min_value=1)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model = {d_model}, got n_heads = {n_heads}")
    expansion = check_int("expansion", expansion, min_value=1)
    s = check_int("s", s, min_value=1)
    chunk_size = check_int("chunk_size", chunk_size, min_value=1)
    causal = check_bool("causal", causal)
    seed = check_int("seed", seed, min_value=0)
    batch = check_int("batch", batch, min_value=1)
    return n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch


def _kinds(kinds: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``None`` -> all of ``allowed``; else a non-empty list/tuple of distinct names from ``allowed``."""
    if kinds is None:
        return allowed
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not isinstance(kinds, (list, tuple)) or len(kinds) == 0:
        raise TypeError(f"kinds must be None or a non-empty list of names from {list(allowed)}, got {describe(kinds)}")
    for k in kinds:
        check_choice("kinds", k, allowed)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must not repeat a name, got {list(kinds)}")
    return tuple(kinds)


def _randn(gen: torch.Generator, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, scale: float = 1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _inference(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A zero-argument callable running ``fn(*args, **kwargs)`` under ``torch.inference_mode()``."""

    def call() -> Any:
        with torch.inference_mode():
            return fn(*args, **kwargs)

    call.__name__ = getattr(fn, "__name__", "fn")
    return call


# ----------------------------------------------------------------------------------------------------------
# inputs and the operators to time
# ----------------------------------------------------------------------------------------------------------
def make_inputs(
    n: int, d_model: int = 256, *, batch: int = 1, seed: int = 0, device: Any = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A ``(batch, n, d_model)`` tensor of standard normal activations (seeded), on ``device``."""
    n = check_int("n", n, min_value=1)
    d_model = check_int("d_model", d_model, min_value=1)
    batch = check_int("batch", batch, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    dev = resolve_torch_device(device)
    dtype = _dtype(dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return _randn(gen, (batch, n, d_model), dev, dtype)


def transformer_layer_sdpa(
    x: torch.Tensor, params: Mapping[str, torch.Tensor], n_heads: int, causal: bool = False
) -> torch.Tensor:
    """:func:`effx_lab.attention.torch_ops.transformer_layer` with PyTorch's fused attention.

    The same pre-LayerNorm layer, ``h = x + MHA(LN1(x))``, ``out = h + FFN(LN2(h))`` with a tanh-GELU FFN, on
    the same parameter dict (``wq, bq, ..., wo, bo, ln1_g, ..., w2, b2``; weights ``(in, out)``), except that
    ``softmax(Q K^T / sqrt(d_h)) V`` is ``torch.nn.functional.scaled_dot_product_attention``, which picks a
    fused kernel (FlashAttention-style on a GPU; on CPU a blocked kernel that never holds the whole ``n x n``
    matrix). Still ``O(n^2)`` work: this is the strongest quadratic baseline. ``x``: ``(..., n, d_model)``.
    """
    from effx_lab.attention import torch_ops as AT

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    # the same validation, projections, norms and FFN as transformer_layer: only the core differs
    return AT.transformer_layer_with_core(x, params, n_heads, causal, core=sdpa)


def mixing_fns(
    n: int,
    *,
    d_model: int = 256,
    n_heads: int = 4,
    expansion: int = 2,
    s: int = 128,
    chunk_size: int = 256,
    causal: bool = True,
    device: Any = None,
    seed: int = 0,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    kinds: Sequence[str] | None = None,
) -> dict[str, Callable[[], torch.Tensor]]:
    """The token-mixing operators alone, as zero-argument callables on pre-made random inputs (seeded).

    * ``"softmax"``: :func:`effx_lab.attention.torch_ops.softmax_attention` on ``q, k, v`` of shape
      ``(batch, n_heads, n, d_model / n_heads)``: builds the ``n x n`` scores per head.
    * ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` on the same inputs (``is_causal``).
    * ``"gau_quad"``: FLASH-Quad's mixing, ``relu2_attention(q, k, bias, causal) @ v`` (eq. 3-5) with
      ``q, k`` of width ``s``, ``v`` of width ``e = expansion * d_model`` and the ``n x n`` relative position
      bias made beforehand.
    * ``"flash"``: :func:`effx_lab.flash.torch_ops.mixed_chunk_attention` (eq. 6-8) with ``s``-wide
      queries/keys, ``e``-wide values, chunks of ``chunk_size`` and the relative position bias inside chunks.

    Each call returns the output tensor and runs under ``torch.inference_mode()``. ``kinds`` picks a subset
    of :data:`MIXING_KINDS` (default all), so that skipped operators cost no memory.
    """
    from effx_lab.attention import torch_ops as AT
    from effx_lab.flash import torch_ops as FT

    n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch = _shape_args(
        n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch
    )
    dev = resolve_torch_device(device)
    dtype = _dtype(dtype)
    kinds = _kinds(kinds, MIXING_KINDS)
    e, dh = expansion * d_model, d_model // n_heads
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rel = _randn(gen, (2 * 127 + 1,), dev, dtype, 0.02)
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    if "softmax" in kinds or "sdpa" in kinds:
        q, k, v = (_randn(gen, (batch, n_heads, n, dh), dev, dtype) for _ in range(3))
        if "softmax" in kinds:
            fns["softmax"] = _inference(AT.softmax_attention, q, k, v, causal=causal)
        if "sdpa" in kinds:
            fns["sdpa"] = _inference(F.scaled_dot_product_attention, q, k, v, is_causal=causal)
    v_e = _randn(gen, (batch, n, e), dev, dtype)
    if "gau_quad" in kinds:
        qg, kg = (_randn(gen, (batch, n, s), dev, dtype) for _ in range(2))
        bias = FT.rel_pos_bias(n, rel)

        def gau_quad() -> torch.Tensor:
            with torch.inference_mode():
                return FT.relu2_attention(qg, kg, bias, causal) @ v_e

        fns["gau_quad"] = gau_quad
    if "flash" in kinds:
        qq, kq, ql, kl = (_randn(gen, (batch, n, s), dev, dtype) for _ in range(4))
        fns["flash"] = _inference(
            FT.mixed_chunk_attention, qq, kq, ql, kl, v_e, chunk_size, causal=causal, rel_bias=rel
        )
    return {k: fns[k] for k in kinds}


def _layer_params(kind: str, d_model: int, n_heads: int, expansion: int, s: int, seed: int, device, dtype):
    """The parameter dicts (torch) of one model of ``kind``: one Transformer layer or two GAU/FLASH layers."""
    from effx_lab.attention.params import init_transformer_layer_params
    from effx_lab.flash.params import init_flash_params, init_gau_params, to_torch

    if kind in ("transformer", "transformer_sdpa"):
        return [to_torch(init_transformer_layer_params(d_model, n_heads, seed=seed), device=device, dtype=dtype)]
    init = init_gau_params if kind == "flash_quad" else init_flash_params
    return [to_torch(init(d_model, expansion, s, seed=seed + i), device=device, dtype=dtype) for i in range(2)]


def layer_fns(
    n: int,
    *,
    d_model: int = 256,
    n_heads: int = 4,
    expansion: int = 2,
    s: int = 128,
    chunk_size: int = 256,
    causal: bool = True,
    device: Any = None,
    seed: int = 0,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    kinds: Sequence[str] | None = None,
) -> dict[str, Callable[[], torch.Tensor]]:
    """Whole models of about equal parameter count, as zero-argument callables on one ``(batch, n, d)`` input.

    * ``"transformer"``: one pre-LN Transformer layer (MHA with ``n_heads`` heads + GELU FFN of ``4 d``,
      ``12 d^2`` weights), :func:`effx_lab.attention.torch_ops.transformer_layer`;
    * ``"transformer_sdpa"``: the same weights through :func:`transformer_layer_sdpa` (fused attention);
    * ``"flash_quad"``: two GAU layers (:func:`effx_lab.flash.torch_ops.gau`, about ``6 d^2`` each);
    * ``"flash"``: two FLASH layers (:func:`effx_lab.flash.torch_ops.flash_layer`, chunks of ``chunk_size``).

    The paper compares ``N`` Transformer layers with ``2N`` GAU layers for this reason (section 2.2). Weights
    are the course's initialisation (:mod:`effx_lab.attention.params`, :mod:`effx_lab.flash.params`) from
    ``seed``; the input comes from :func:`make_inputs`. Calls run under ``torch.inference_mode()``.
    """
    from effx_lab.attention import torch_ops as AT
    from effx_lab.flash import torch_ops as FT

    n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch = _shape_args(
        n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch
    )
    dev = resolve_torch_device(device)
    dtype = _dtype(dtype)
    kinds = _kinds(kinds, LAYER_KINDS)
    x = make_inputs(n, d_model, batch=batch, seed=seed, device=dev, dtype=dtype)
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for kind in kinds:
        layers = _layer_params(kind, d_model, n_heads, expansion, s, seed, dev, dtype)
        if kind == "transformer":
            fns[kind] = _inference(AT.transformer_layer, x, layers[0], n_heads, causal)
        elif kind == "transformer_sdpa":
            fns[kind] = _inference(transformer_layer_sdpa, x, layers[0], n_heads, causal)
        else:

            def model(layers=layers, kind=kind) -> torch.Tensor:
                with torch.inference_mode():
                    h = x
                    for p in layers:
                        h = FT.gau(h, p, causal) if kind == "flash_quad" else FT.flash_layer(h, p, chunk_size, causal)
                    return h

            fns[kind] = model
    return fns


def model_fns(
    n: int,
    *,
    d_model: int = 256,
    n_heads: int = 4,
    expansion: int = 2,
    s: int = 128,
    chunk_size: int = 256,
    causal: bool = True,
    device: Any = None,
    seed: int = 0,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    kinds: Sequence[str] | None = None,
) -> dict[str, Callable[[], torch.Tensor]]:
    """Whole language models, as zero-argument callables: the forward pass of chapter 7's
    :class:`effx_lab.flash.models.LanguageModel` on ``(batch, n)`` random byte tokens.

    Each kind of :data:`MODEL_KINDS` is ``build_lm(LMConfig(kind, d_model=d_model,
    n_layers=1, ...), seed)`` with ``max_len = n``: token and position embeddings, one
    Transformer layer (``n_heads`` heads, FFN ``4 d``) or two GAU / FLASH layers
    (``expansion``, ``s``, chunks of ``chunk_size``), the final LayerNorm and the tied
    head over 256 byte values. The same arguments as :func:`layer_fns`, so
    :func:`time_vs_length` times them with ``level="model"``. Calls run under
    ``torch.inference_mode()`` and return the logits.
    """
    from effx_lab.flash.models import LMConfig, build_lm

    n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch = _shape_args(
        n, d_model, n_heads, expansion, s, chunk_size, causal, seed, batch
    )
    dev = resolve_torch_device(device)
    dtype = _dtype(dtype)
    kinds = _kinds(kinds, MODEL_KINDS)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, 256, (batch, n), generator=gen).to(dev)
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for kind in kinds:
        options: dict[str, Any] = {"n_heads": n_heads} if kind == "transformer" else {
            "expansion": expansion, "s": s,
        }  # fmt: skip
        if kind == "flash":
            options["chunk_size"] = chunk_size
        config = LMConfig(
            kind=kind, vocab_size=256, d_model=d_model, n_layers=1, max_len=n,
            causal=causal, **options,
        )  # fmt: skip
        model = build_lm(config, seed=seed).to(device=dev, dtype=dtype).eval()
        fns[kind] = _inference(model, tokens)
    return fns


def _layer_param_counts(d_model: int, n_heads: int, expansion: int, s: int) -> dict[str, int]:
    from effx_lab.attention.params import count_params

    return {
        kind: sum(count_params(p) for p in _layer_params(kind, d_model, n_heads, expansion, s, 0, "cpu", None))
        for kind in LAYER_KINDS
    }


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------
def _lengths(lengths: Any) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, (list, tuple, np.ndarray)) or len(lengths) == 0:
        raise TypeError(f"lengths must be a non-empty list of positive ints, got {describe(lengths)}")
    out = [check_int(f"lengths[{i}]", n, min_value=1) for i, n in enumerate(lengths)]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"lengths must be strictly increasing (skipping a slow kind relies on it), got {out}")
    return out


def time_vs_length(
    lengths: Sequence[int],
    *,
    level: str = "layer",
    kinds: Sequence[str] | None = None,
    min_run_time: float = 0.1,
    rounds: int | Sequence[int] = 2,
    threads: int | None = None,
    max_seconds_per_call: float | None = None,
    device: Any = None,
    **shape_kwargs: Any,
) -> dict[str, Any]:
    """Median time of each kind at each length, all kinds timed side by side at one length.

    ``level="mixing"`` times :func:`mixing_fns`, ``level="layer"`` times :func:`layer_fns`,
    ``level="model"`` times :func:`model_fns` (whole language models); ``kinds`` picks
    a subset (default all). At each length one :func:`effx_lab.bench.compare` run interleaves every kind
    still in the race (``rounds`` rounds of at least ``min_run_time`` seconds each, where ``rounds`` is an
    int or one int per length, e.g. fewer rounds at the long lengths where one call takes seconds;
    baseline ``"flash"`` when timed). ``threads`` sets
    ``torch.set_num_threads`` for the sweep and restores it afterwards. With ``max_seconds_per_call``, a kind
    whose median call took longer than that is skipped at every larger length (``None`` in its times), so a
    sweep can reach long sequences without waiting on the quadratic baselines. Other keyword arguments
    (``d_model``, ``n_heads``, ``expansion``, ``s``, ``chunk_size``, ``causal``, ``seed``, ``batch``,
    ``dtype``) go to the function that builds the operators.

    Returns ``{"lengths", "times_s": {kind: [seconds or None]}, "comparisons": {str(n): Comparison dict},
    "skipped_from": {kind: first length skipped}, "device", "settings"}``.
    """
    from effx_lab.bench import compare, device_name, to_jsonable

    lengths = _lengths(lengths)
    check_choice("level", level, ("mixing", "layer", "model"))
    allowed = {"mixing": MIXING_KINDS, "layer": LAYER_KINDS, "model": MODEL_KINDS}[level]
    kinds = _kinds(kinds, allowed)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    if isinstance(rounds, (list, tuple)):
        if len(rounds) != len(lengths):
            raise ValueError(f"rounds must be an int or one int per length ({len(lengths)}), got {list(rounds)}")
        rounds_at = [check_int(f"rounds[{i}]", r, min_value=1) for i, r in enumerate(rounds)]
    else:
        rounds_at = [check_int("rounds", rounds, min_value=1)] * len(lengths)
    threads = check_threads(threads)
    if max_seconds_per_call is not None:
        max_seconds_per_call = check_float(
            "max_seconds_per_call", max_seconds_per_call, min_value=0.0, min_inclusive=False
        )
    known = {"d_model", "n_heads", "expansion", "s", "chunk_size", "causal", "seed", "batch", "dtype"}
    unknown = sorted(set(shape_kwargs) - known)
    if unknown:
        raise TypeError(
            f"time_vs_length got unexpected keyword arguments {unknown}; shape arguments are {sorted(known)}"
        )
    dev = resolve_torch_device(device)
    build = {"mixing": mixing_fns, "layer": layer_fns, "model": model_fns}[level]
    build(lengths[0], device=dev, kinds=kinds, **shape_kwargs)  # validate the shape arguments before timing

    times: dict[str, list[float | None]] = {k: [] for k in kinds}
    comparisons: dict[str, Any] = {}
    skipped_from: dict[str, int] = {}
    with limit_threads(threads, blas=False) as applied:
        used_threads = applied.torch
        for n, n_rounds in zip(lengths, rounds_at):
            active = [k for k in kinds if k not in skipped_from]
            for k in kinds:
                if k in skipped_from:
                    times[k].append(None)
            if not active:
                continue
            fns = build(n, device=dev, kinds=active, **shape_kwargs)
            baseline = "flash" if "flash" in fns else active[0]
            comp = compare(fns, baseline=baseline, min_run_time=min_run_time, rounds=n_rounds, device=dev.type)
            del fns
            comparisons[str(n)] = comp.to_dict()
            for k in active:
                t = comp.timings[k].median_s
                times[k].append(t)
                if max_seconds_per_call is not None and t > max_seconds_per_call:
                    skipped_from[k] = next((m for m in lengths if m > n), None)
    skipped_from = {k: m for k, m in skipped_from.items() if m is not None}
    settings = {
        "level": level,
        "kinds": list(kinds),
        "min_run_time": min_run_time,
        "rounds": rounds_at,
        "threads": used_threads,
        "max_seconds_per_call": max_seconds_per_call,
        "torch_device": str(dev),
        **{k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in shape_kwargs.items()},
    }
    return to_jsonable(
        {
            "lengths": lengths,
            "times_s": times,
            "comparisons": comparisons,
            "skipped_from": skipped_from,
            "device": device_name(),
            "settings": settings,
        }
    )


def numpy_vs_torch(
    n: int = 2048,
    d_model: int = 256,
    chunk_size: int = 256,
    s: int = 128,
    causal: bool = True,
    *,
    expansion: int = 2,
    min_run_time: float = 0.1,
    rounds: int = 2,
    threads: int | None = None,
    device: Any = None,
    seed: int = 0,
    std: float = 0.1,
) -> dict[str, Any]:
    """The NumPy reference FLASH layer against the PyTorch one, on the same float32 weights and input.

    :func:`effx_lab.flash.reference.flash_layer` (NumPy, CPU) and :func:`effx_lab.flash.torch_ops.flash_layer`
    (on ``device``, default the course's device) on one ``(1, n, d_model)`` input, timed side by side.
    Correctness first: ``max_abs_diff`` between the two outputs is reported next to the times. The weights
    are drawn with ``std`` (default 0.1, not the course's 0.02: at 0.02 the layer's update is about ``1e-6``
    of the residual ``x``, below float32 resolution, and the check would compare ``x`` with itself; the
    time does not depend on the values). ``threads`` sets ``torch.set_num_threads`` for the measurement (NumPy's
    BLAS keeps its own thread count).

    Returns ``{"numpy_s", "torch_s", "speedup" (numpy / torch), "max_abs_diff", "max_abs_update" (the largest
    ``|layer(x) - x|``, the scale the difference is to be read against), "torch_device", "config",
    "comparison"}``.
    """
    from effx_lab.bench import compare, to_jsonable
    from effx_lab.flash import reference as R
    from effx_lab.flash import torch_ops as FT
    from effx_lab.flash.params import init_flash_params, to_torch

    n = check_int("n", n, min_value=1)
    d_model = check_int("d_model", d_model, min_value=1)
    chunk_size = check_int("chunk_size", chunk_size, min_value=1)
    s = check_int("s", s, min_value=1)
    causal = check_bool("causal", causal)
    expansion = check_int("expansion", expansion, min_value=1)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    dev = resolve_torch_device(device)
    seed = check_int("seed", seed, min_value=0)
    std = check_float("std", std, min_value=0.0, min_inclusive=False)
    threads = check_threads(threads)

    params = init_flash_params(d_model, expansion, s, seed=seed, std=std)
    x = np.random.default_rng(seed).standard_normal((1, n, d_model)).astype(np.float32)
    tparams = to_torch(params, device=dev)
    xt = torch.from_numpy(x).to(dev)
    with torch.inference_mode():
        ref = R.flash_layer(x, params, chunk_size, causal)
        got = FT.flash_layer(xt, tparams, chunk_size, causal).cpu().numpy()
    diff = float(np.abs(ref - got).max())
    update = float(np.abs(ref - x).max())  # size of the layer's own contribution (the rest is the residual)
    with limit_threads(threads, blas=False) as applied:
        used_threads = applied.torch
        comp = compare(
            {
                "numpy": lambda: R.flash_layer(x, params, chunk_size, causal),
                "torch": _inference(FT.flash_layer, xt, tparams, chunk_size, causal),
            },
            baseline="numpy",
            min_run_time=min_run_time,
            rounds=rounds,
            device=dev.type,
        )
    return to_jsonable(
        {
            "numpy_s": comp.timings["numpy"].median_s,
            "torch_s": comp.timings["torch"].median_s,
            "speedup": comp.speedup("torch"),
            "max_abs_diff": diff,
            "max_abs_update": update,
            "torch_device": str(dev),
            "config": {
                "n": n,
                "d_model": d_model,
                "expansion": expansion,
                "s": s,
                "chunk_size": chunk_size,
                "causal": causal,
                "dtype": "float32",
                "weights_std": std,
                "threads": used_threads,
            },
            "comparison": comp,
        }
    )


def _fla_chunk_linear_attn() -> tuple[Callable[..., Any] | None, str | None]:
    """flash-linear-attention's chunked linear attention, or ``(None, why not)``."""
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError as exc:
        return None, f"flash-linear-attention is not installed (pip install flash-linear-attention): {exc}"
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop the benchmark
        return None, f"flash-linear-attention failed to import: {type(exc).__name__}: {exc}"
    return chunk_linear_attn, None


def triton_vs_torch(
    n: int = 4096,
    *,
    batch: int = 4,
    d_model: int = 256,
    expansion: int = 2,
    s: int = 128,
    chunk_size: int = 256,
    causal: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    min_run_time: float = 0.1,
    rounds: int = 3,
    seed: int = 0,
    device: Any = None,
) -> dict[str, Any]:
    """On a CUDA GPU: the Triton kernel of mixed chunk attention against the PyTorch version.

    Times, side by side on ``(batch, n, s)`` queries/keys and ``(batch, n, e)`` values in ``dtype``:
    ``"torch"`` (:func:`effx_lab.flash.torch_ops.mixed_chunk_attention`), ``"triton"``
    (:func:`effx_lab.flash.kernels.mixed_chunk_attention_triton`), ``"triton_global"`` (the kernel's linear
    part alone, ``mode="global"``) and, when flash-linear-attention is installed and ``causal``, ``"fla"``:
    its ``chunk_linear_attn`` (causal linear attention without normalisation, scale ``1 / c``), the state of
    the art for the linear part alone, to compare with ``"triton_global"``. ``max_abs_diff`` checks the
    kernel against torch first. With ``device=None`` and no GPU returns ``{"skipped": reason}``: Triton's CPU
    interpreter is far too slow to time. ``device="cpu"`` runs it there anyway, to test this code path on
    tiny sizes (the times then mean nothing). The kernel needs ``chunk_size`` and ``s`` powers of two >= 16.
    """
    from effx_lab.bench import compare, to_jsonable
    from effx_lab.device import has_cuda

    n = check_int("n", n, min_value=1)
    batch = check_int("batch", batch, min_value=1)
    d_model = check_int("d_model", d_model, min_value=1)
    expansion = check_int("expansion", expansion, min_value=1)
    s = check_int("s", s, min_value=1)
    chunk_size = check_int("chunk_size", chunk_size, min_value=1)
    causal = check_bool("causal", causal)
    dtype = _dtype(dtype)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    if device is None and not has_cuda():
        return {"skipped": "no CUDA GPU: the Triton kernel only runs in the (slow) CPU interpreter here"}
    dev = resolve_torch_device(device)
    from effx_lab.flash import kernels
    from effx_lab.flash import torch_ops as FT

    if not kernels.available():
        return {"skipped": f"the Triton kernel cannot run: {kernels.why_unavailable()}"}

    e = expansion * d_model
    gen = torch.Generator(device="cpu").manual_seed(seed)
    qq, kq, ql, kl = (_randn(gen, (batch, n, s), dev, dtype) for _ in range(4))
    v = _randn(gen, (batch, n, e), dev, dtype)
    rel = _randn(gen, (2 * 127 + 1,), dev, torch.float32, 0.02)
    args = (qq, kq, ql, kl, v, chunk_size)
    with torch.inference_mode():
        ref = FT.mixed_chunk_attention(*args, causal=causal, rel_bias=rel.to(dtype)).float()
        got = kernels.mixed_chunk_attention_triton(*args, causal=causal, rel_bias=rel).float()
    diff = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    fns = {
        "torch": _inference(FT.mixed_chunk_attention, *args, causal=causal, rel_bias=rel.to(dtype)),
        "triton": _inference(kernels.mixed_chunk_attention_triton, *args, causal=causal, rel_bias=rel),
        "triton_global": _inference(kernels.mixed_chunk_attention_triton, *args, causal=causal, mode="global"),
    }
    fla_fn, fla_note = _fla_chunk_linear_attn()
    if fla_fn is not None and not causal:
        fla_fn, fla_note = None, "fla's chunk_linear_attn is causal only; not timed for causal=False"
    if fla_fn is not None:
        extra = {"head_first": False} if "head_first" in inspect.signature(fla_fn).parameters else {}
        qf, kf, vf = ql.unsqueeze(2), kl.unsqueeze(2), v.unsqueeze(2)  # [B, T, H=1, K]

        def fla_call() -> Any:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fla_fn(qf, kf, vf, scale=1.0 / chunk_size, normalize=False, **extra)

        try:
            fla_call()
            fns["fla"] = fla_call
            fla_note = (
                "fla.ops.linear_attn.chunk_linear_attn: causal linear attention only (compare with triton_global)"
            )
        except Exception as exc:  # noqa: BLE001 - an fla version with another API must not stop the benchmark
            fla_note = f"fla.ops.linear_attn.chunk_linear_attn failed: {type(exc).__name__}: {exc}"
    comp = compare(fns, baseline="torch", min_run_time=min_run_time, rounds=rounds, device=dev.type)
    return to_jsonable(
        {
            "config": {
                "n": n,
                "batch": batch,
                "s": s,
                "e": e,
                "chunk_size": chunk_size,
                "causal": causal,
                "dtype": str(dtype).replace("torch.", ""),
            },
            "torch_device": str(dev),
            "triton_mode": "compiled (CUDA)" if dev.type == "cuda" else "CPU interpreter (times mean nothing)",
            "max_abs_diff": diff,
            "max_abs_torch": scale,
            "times_s": {k: t.median_s for k, t in comp.timings.items()},
            "speedup_triton_over_torch": comp.speedup("triton"),
            "fla": fla_note,
            "comparison": comp,
        }
    )


# ----------------------------------------------------------------------------------------------------------
# the chapter's run
# ----------------------------------------------------------------------------------------------------------
def _at(sweep: dict[str, Any], kind: str, n: int) -> float | None:
    """Time of ``kind`` at length ``n`` in a :func:`time_vs_length` result; None if not timed there."""
    if kind not in sweep["times_s"] or n not in sweep["lengths"]:
        return None
    return sweep["times_s"][kind][sweep["lengths"].index(n)]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _goals(sweep: dict[str, Any], level: str, lo: int, hi: int) -> dict[str, Any]:
    """The chapter's goals at one level: growth of FLASH and of softmax from ``lo`` to ``hi``, and their ratio.

    The targets are set for ``hi / lo = 8`` (8192 over 1024): FLASH within 10 (linear is 8), softmax at least
    40 (quadratic is 64). For another length ratio ``r`` they are rescaled to ``1.25 r`` and ``0.625 r^2``.
    """
    roles = _ROLES[level]
    r = hi / lo
    flash, soft = roles["flash"], roles["softmax"]
    return {
        f"{flash}_growth_{hi}_over_{lo}": goal(
            _ratio(_at(sweep, flash, hi), _at(sweep, flash, lo)), 1.25 * r, op="<="
        ),
        f"{soft}_growth_{hi}_over_{lo}": goal(
            _ratio(_at(sweep, soft, hi), _at(sweep, soft, lo)), 0.625 * r * r, op=">="
        ),
        f"{soft}_over_{flash}_at_{hi}": goal(
            _ratio(_at(sweep, soft, hi), _at(sweep, flash, hi)), 5.0, op=">="
        ),
    }


def _ratios_at(sweep: dict[str, Any], level: str, n: int) -> dict[str, float | None]:
    roles = _ROLES[level]
    flash = roles["flash"]
    return {
        f"{roles[r]}_over_{flash}_at_{n}": _ratio(_at(sweep, roles[r], n), _at(sweep, flash, n))
        for r in ("softmax", "sdpa", "quad")
    }


def _exponents(sweep: dict[str, Any]) -> dict[str, float | None]:
    """Fitted growth exponent ``p`` of ``t = a n^p`` per kind (:func:`effx_lab.flash.analysis.scaling_exponent`)."""
    from effx_lab.flash.analysis import scaling_exponent

    out = {}
    for kind, times in sweep["times_s"].items():
        pts = [(n, t) for n, t in zip(sweep["lengths"], times) if t is not None and t > 0]
        out[kind] = scaling_exponent(*map(list, zip(*pts))) if len(pts) >= 2 and len({p[0] for p in pts}) >= 2 else None
    return out


#: sizes and timing of :func:`run`, full and quick (``rounds``: one per length; a single round where one
#: call takes seconds). ``goal_lengths``: the (short, long) pair the growth goals are measured between.
#: ``cpu_threads``: torch threads for the CPU timings (``None``: PyTorch's default). One thread, because on a
#: machine whose cores also serve other programs, every multi-threaded operator waits at its barrier for a
#: descheduled thread (a scheduler time slice, milliseconds): measured on a busy 2-core machine, FLASH's
#: mixing then took ~350 ms at every length from 512 to 8192 with 2 threads, and 20-300 ms growing linearly
#: with one. One thread measures the work. A GPU run ignores it.
RUN_CONFIG: dict[bool, dict[str, Any]] = {
    False: {
        "lengths": [512, 1024, 2048, 4096, 8192],
        "rounds": [2, 2, 2, 1, 1],
        "min_run_time": 0.1,
        "goal_lengths": (1024, 8192),
        "shape": {"d_model": 256, "n_heads": 4, "expansion": 2, "s": 128, "chunk_size": 256, "causal": True},
        "numpy_n": 2048,
        "triton_n": 4096,
        "cpu_threads": 1,
    },
    True: {
        "lengths": [256, 512, 1024],
        "rounds": [1, 1, 1],
        "min_run_time": 0.05,
        "goal_lengths": (256, 1024),
        "shape": {"d_model": 256, "n_heads": 4, "expansion": 2, "s": 128, "chunk_size": 128, "causal": True},
        "numpy_n": 512,
        "triton_n": 1024,
        "cpu_threads": 1,
    },
}


def run(quick: bool = False, *, triton_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Run the chapter 7 benchmarks and return plain dicts (sizes in :data:`RUN_CONFIG`).

    1. :func:`time_vs_length` at both levels (``"mixing"`` and ``"layer"``) for ``n`` = 512 ... 8192
       (quick: 256, 512, 1024), ``d_model = 256``, 4 heads, ``e = 512``, ``s = 128``, chunks of 256 (quick:
       128), causal, batch 1, float32, with the fitted growth exponent of each kind. On CPU with one torch
       thread (see :data:`RUN_CONFIG`).
    2. The chapter's goals as computed ratios, ``{"value", "goal", "met"}`` (never asserted): FLASH's time
       grows at most 10x from ``n`` = 1024 to 8192, softmax's at least 40x, and softmax is at least 5x slower
       than FLASH at 8192; at both levels. Quick mode uses 1024 over 256 with the growth targets rescaled
       (``goals["note"]`` says so). Also the SDPA and FLASH-Quad ratios to FLASH at the longest length.
    3. :func:`numpy_vs_torch` at ``n`` = 2048 (quick: 512); goal: torch at least 10x faster.
    4. :func:`triton_vs_torch` on a CUDA GPU (skipped on CPU), in ``triton_dtype`` (``None``: its default,
       bfloat16; :mod:`effx_lab.gpu_check` passes float16 on a GPU without native bfloat16, e.g. a T4).
    """
    quick = check_bool("quick", quick)
    triton_kw = {} if triton_dtype is None else {"dtype": _dtype(triton_dtype)}
    from effx_lab import device as dev
    from effx_lab.bench import to_jsonable

    cfg = RUN_CONFIG[quick]
    shape = dict(cfg["shape"])
    lo, hi = cfg["goal_lengths"]
    cuda = dev.torch_device().type == "cuda"
    threads = None if cuda else cfg["cpu_threads"]
    timing = {"min_run_time": cfg["min_run_time"], "rounds": list(cfg["rounds"]), "threads": threads}
    sweeps = {level: time_vs_length(cfg["lengths"], level=level, **timing, **shape) for level in ("mixing", "layer")}
    goals: dict[str, Any] = {level: _goals(sweeps[level], level, lo, hi) for level in sweeps}
    r = hi / lo
    goals["note"] = (
        f"growth from n={lo} to n={hi} (x{r:g}): linear would be {r:g}, quadratic {r * r:g}"
        + ("" if r == 8 else "; the goals (set for x8: <= 10 and >= 40) are rescaled to <= 1.25 r and >= 0.625 r^2")
        + (" (quick mode)" if quick else "")
    )
    nvt = numpy_vs_torch(
        cfg["numpy_n"], shape["d_model"], shape["chunk_size"], shape["s"], shape["causal"],
        expansion=shape["expansion"], min_run_time=cfg["min_run_time"], rounds=2, threads=threads,
    )  # fmt: skip
    goals["torch_over_numpy_flash_layer"] = goal(nvt["speedup"], 10.0, op=">=")
    triton_shape = {k: shape[k] for k in ("d_model", "expansion", "s", "chunk_size", "causal")}
    return to_jsonable(
        {
            "chapter": "ch07",
            "quick": quick,
            "device": dev.summary(),
            "torch_threads": torch.get_num_threads() if threads is None else threads,
            "shape": dict(shape, batch=1, dtype="float32"),
            "params_per_model": _layer_param_counts(shape["d_model"], shape["n_heads"], shape["expansion"], shape["s"]),
            "goals": goals,
            "ratios_at_longest": {level: _ratios_at(sweeps[level], level, cfg["lengths"][-1]) for level in sweeps},
            "growth_exponents": {level: _exponents(sweeps[level]) for level in sweeps},
            "mixing": sweeps["mixing"],
            "layer": sweeps["layer"],
            "numpy_vs_torch": nvt,
            "triton_vs_torch": triton_vs_torch(cfg["triton_n"], **triton_shape, **triton_kw),
        }
    )
