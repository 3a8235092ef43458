"""Chapter 7.4's training experiments, run by a script whose results ship with the course.

``python -m effx_lab.flash.experiments --out results.json`` (``--quick`` for a run of a few
seconds) trains tiny models on a 2-core CPU and writes what they measured, with the
device, the date and the command, to a JSON file; notebook 07.4 reads the shipped copy
(:data:`RESULTS_PATH`, :func:`load_results`) because the runs take minutes, far more
than a notebook's 90 s. Three experiments, every model of one experiment trained for the
same number of steps on the same batches:

* ``"mqar"``: recall where FLASH is faster. Multi-Query Associative Recall
  (:func:`effx_lab.data.mqar`, Arora et al. 2023) at a window of 512 tokens: a key-value
  context, then the keys again far later; the model must recall the value. The
  Transformer (softmax), FLASH-Quad (GAU layers, quadratic) and FLASH (mixed chunk
  attention: quadratic inside chunks, a linear state across them) of about equal
  parameters, trained on fresh MQAR batches (:func:`mqar_loss`), scored by
  :func:`mqar_eval` on held-out examples; also the training step time of each.
* ``"heads"``: the paper's single-head claim (Hua et al. 2022, section 2: GAU needs one
  head). GAU layers with 1, 2 and 4 heads (:func:`gau_heads_mixer`: the same weights,
  the shared ``Z`` split into per-head query/key slices and ``V`` into per-head groups),
  next-token loss on the course's corpus.
* ``"ffn"``: the comparison behind GAU (section 2.1): MHSA + FFN (the pre-LN
  Transformer layer, GELU), MHSA + GLU (:func:`glu_ffn`, Shazeer 2020, hidden width
  chosen for equal parameters) and two GAU layers, next-token loss on the corpus.

Importing this module registers the FFN ``"glu"`` (:func:`glu_ffn`) and the mixer
``"gau_heads"`` (:func:`gau_heads_mixer`) with :mod:`effx_lab.models.lm`.

The scale is tiny (``d_model`` 64, a few hundred steps, minutes of CPU): the results say
which way small models lean on these tasks, not what the paper's models reach.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import (
    check_bool,
    check_choice,
    check_int,
    describe,
)
from effx_lab.attention.shapes import linear, tensor_params
from effx_lab.bench import limit_threads, load_checked_results, write_json
from effx_lab.data import IGNORE_INDEX, mqar, mqar_accuracy
from effx_lab.data.pools import token_splits
from effx_lab.models.lm import (
    LM,
    LMSpec,
    Sublayer,
    ffns,
    mixers,
    register_ffn,
    register_mixer,
)
from effx_lab.models.training import evaluate, train

from . import torch_ops as flash_ops
from .models import _gau_params  # the "gau" mixer's initialisation (rel_bias_init)
from .params import init_gau_params
from .shapes import glu_param_shapes

__all__ = [
    "EXPERIMENTS",
    "RESULTS_PATH",
    "SETTINGS",
    "attention_scales",
    "build_model",
    "equal_glu_width",
    "gau_heads",
    "gau_heads_mixer",
    "glu_ffn",
    "load_results",
    "main",
    "merge_results",
    "mqar_eval",
    "mqar_loss",
    "run_experiments",
    "check_results",
    "crossover_length",
]

#: the experiments :func:`run_experiments` knows, in the order it runs them
EXPERIMENTS = ("timing", "mqar", "heads", "ffn")
#: the results the course ships (made by ``python -m effx_lab.flash.experiments``)
RESULTS_PATH = Path(__file__).with_name("data") / "experiments_07_4.json"

_LN_EPS = 1e-5


# --------------------------------------------------------------------------------------
# the sublayers: a GLU FFN and a GAU with heads
# --------------------------------------------------------------------------------------


def equal_glu_width(d_model: int, d_ff: int) -> int:
    """The largest GLU hidden width ``e`` whose weights do not outnumber a GELU FFN's.

    A GELU FFN of width ``d_ff`` holds ``W1, b1, W2, b2``: ``2 d d_ff + d_ff + d``
    weights; a GLU of width ``e`` holds ``W_u, b_u, W_v, b_v, W_o, b_o``: ``3 d e + 2 e
    + d``. Returns the largest ``e >= 1`` with the second at most the first (about ``2
    d_ff / 3``: the width Shazeer 2020 uses to keep GLU variants at equal parameters).
    """
    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    budget = 2 * d_model * d_ff + d_ff  # both sides hold the output bias d
    return max(1, budget // (3 * d_model + 2))


def _glu_apply(x: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    t = tensor_params(p, ("ln2_g", "ln2_b"), x)
    h = F.layer_norm(x, (x.shape[-1],), t["ln2_g"], t["ln2_b"], eps=_LN_EPS)
    glu_keys = ("w_u", "b_u", "w_v", "b_v", "w_o", "b_o")
    return x + flash_ops.glu(h, {k: p[k] for k in glu_keys})


def glu_ffn(
    d_model: int, *, seed: int, causal: bool, d_ff: int | None = None
) -> Sublayer:
    """The ``"glu"`` FFN: ``x + GLU(LN(x))``, ``GLU(h) = (swish(h W_u + b_u) *
    swish(h W_v + b_v)) W_o + b_o`` (:func:`effx_lab.flash.torch_ops.glu`) of hidden
    width ``d_ff``; default :func:`equal_glu_width` ``(d_model, 4 d_model)``, the
    parameters of the ``"gelu"`` FFN. Weights ``N(0, 0.02)`` from ``seed``, biases 0."""
    check_bool("causal", causal)
    d_model = check_int("d_model", d_model, min_value=1)
    if d_ff is None:
        d_ff = equal_glu_width(d_model, 4 * d_model)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    rng = np.random.default_rng(check_int("seed", seed, min_value=0))
    params: dict[str, np.ndarray] = {
        "ln2_g": np.ones(d_model, dtype=np.float32),
        "ln2_b": np.zeros(d_model, dtype=np.float32),
    }
    for key, shape in glu_param_shapes(d_model, d_ff).items():
        if key.startswith("w_"):
            params[key] = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        else:
            params[key] = np.zeros(shape, dtype=np.float32)
    return Sublayer(params, _glu_apply)


def gau_heads(
    x: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    n_heads: int,
    causal: bool = False,
) -> torch.Tensor:
    """A GAU layer with ``n_heads`` heads, on the weights of one GAU layer.

    As :func:`effx_lab.flash.torch_ops.gau` (``U, V, Z`` from ``LN(x)``, ``Q, K = Z *
    gamma + beta``), except that the width ``s`` of ``Q`` and ``K`` is cut into
    ``n_heads`` slices of ``s / h`` and ``V``'s width ``e`` into ``n_heads`` groups:
    head ``j`` computes ``A_j = relu(Q_j K_j^T / n + b)^2`` from its slices (the
    relative bias ``b`` is shared) and mixes its group of ``V``. The parameters are
    those of one GAU layer whatever ``n_heads``; the ``n x n`` matrices are ``n_heads``
    times more. ``n_heads = 1`` is :func:`~effx_lab.flash.torch_ops.gau` exactly.
    """
    n_heads = check_int("n_heads", n_heads, min_value=1)
    causal = check_bool("causal", causal)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise TypeError(f"x must be a torch tensor of shape (..., n, d), got {describe(x)}")
    s = params["gamma"].shape[-1]
    e = params["w_o"].shape[0]
    if s % n_heads or e % n_heads:
        raise ValueError(
            f"n_heads must divide s = {s} and e = {e}, got n_heads = {n_heads}"
        )
    if n_heads == 1:
        return flash_ops.gau(x, params, causal)
    p = tensor_params(params, tuple(params), x)
    h = F.layer_norm(x, (x.shape[-1],), p["ln_g"], p["ln_b"], eps=_LN_EPS)
    uvz = F.silu(linear(h, p["w_uvz"], p["b_uvz"]))
    u, v, z = uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]
    q = z * p["gamma"][0] + p["beta"][0]
    k = z * p["gamma"][1] + p["beta"][1]
    n = x.shape[-2]

    def heads(t: torch.Tensor) -> torch.Tensor:  # (..., n, w) -> (..., h, n, w / h)
        return t.unflatten(-1, (n_heads, -1)).transpose(-3, -2)

    bias = flash_ops.rel_pos_bias(n, p["rel_bias"])
    logits = torch.matmul(heads(q), heads(k).transpose(-1, -2)) / n + bias
    a = torch.relu(logits).square()
    if causal:
        keep = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        a = a.masked_fill(~keep, 0.0)
    mixed = torch.matmul(a, heads(v)).transpose(-3, -2).flatten(-2)
    return x + linear(u * mixed, p["w_o"], p["b_o"])


def _gau_heads_apply(
    x: torch.Tensor, p: Mapping[str, torch.Tensor], *, n_heads: int, causal: bool
) -> torch.Tensor:
    return gau_heads(x, p, n_heads, causal)


def gau_heads_mixer(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    n_heads: int = 1,
    expansion: int = 2,
    s: int = 128,
    max_rel: int = 127,
    rel_bias_init: float = 0.0,
) -> Sublayer:
    """The ``"gau_heads"`` mixer: one GAU layer with ``n_heads`` heads
    (:func:`gau_heads`), the weights of :func:`effx_lab.flash.params.init_gau_params`
    for ``seed`` (relative bias ``rel_bias_init``): with ``n_heads=1`` the ``"gau"``
    mixer of :mod:`effx_lab.flash.models`, weight for weight."""
    causal = check_bool("causal", causal)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    expansion = check_int("expansion", expansion, min_value=1)
    s = check_int("s", s, min_value=1)
    if s % n_heads or (expansion * d_model) % n_heads:
        raise ValueError(
            f"n_heads must divide s = {s} and e = {expansion * d_model}, "
            f"got n_heads = {n_heads}"
        )
    params = _gau_params(
        init_gau_params, d_model, expansion, s, max_rel, rel_bias_init, seed
    )  # the "gau" mixer's weights, weight for weight
    apply = functools.partial(_gau_heads_apply, n_heads=n_heads, causal=causal)
    return Sublayer(params, apply, no_decay=("gamma", "beta"))


if "glu" not in ffns():
    register_ffn("glu", glu_ffn)
if "gau_heads" not in mixers():
    register_mixer("gau_heads", gau_heads_mixer)


def crossover_length(lengths: Any, t_quad: Any, t_flash: Any) -> float:
    """The length where two fitted power laws meet: FLASH-Quad's and FLASH's times.

    Fits ``t = a n^p`` to each kind by least squares in log-log
    (:func:`effx_lab.flash.analysis.scaling_exponent` for ``p``, ``log a = mean(log t) -
    p mean(log n)``) and returns ``n* = exp((log a_flash - log a_quad) / (p_quad -
    p_flash))``, the length beyond which the fitted FLASH is the faster. ``inf`` when
    ``p_quad <= p_flash`` (FLASH-Quad's fit does not grow faster: no crossing ahead).
    ``lengths``, ``t_quad``, ``t_flash``: one positive value per measurement each.
    """
    from .analysis import scaling_exponent

    fits = []
    for name, times in (("t_quad", t_quad), ("t_flash", t_flash)):
        p = scaling_exponent(lengths, times)
        try:
            log_n = np.log(np.asarray(lengths, dtype=np.float64))
            log_t = np.log(np.asarray(times, dtype=np.float64))
        except (TypeError, ValueError) as exc:  # checked by scaling_exponent already
            raise ValueError(f"{name} must be positive numbers, got {describe(times)}") from exc
        fits.append((p, float(log_t.mean() - p * log_n.mean())))
    (p_q, log_a_q), (p_f, log_a_f) = fits
    if p_q <= p_f:
        return math.inf
    return float(math.exp((log_a_f - log_a_q) / (p_q - p_f)))


# --------------------------------------------------------------------------------------
# the models of the experiments
# --------------------------------------------------------------------------------------

#: model shapes and budgets, full run and quick run (the test's)
SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "d_model": 64,
        "n_layers": 2,
        "s": 32,
        "chunk_size": 64,
        "max_rel": 63,
        "rel_bias_init": 0.1,
        "lr": 3e-3,
        "mqar": {"seq_len": 512, "num_kv_pairs": 4, "vocab_size": 32, "batch_size": 8,
                 "steps": 200, "eval_examples": 256},
        "corpus": {"seq_len": 128, "batch_size": 8, "steps": 200, "eval_batches": 8},
        "timing": {"lengths": [512, 1024, 2048, 4096, 8192], "d_model": 256, "s": 128,
                   "chunk_size": 256, "max_seconds_per_call": 5.0, "min_run_time": 0.05},
        "heads": (1, 2, 4),
        "threads": 1,
    },
    True: {
        "d_model": 16,
        "n_layers": 1,
        "s": 8,
        "chunk_size": 16,
        "max_rel": 7,
        "rel_bias_init": 0.1,
        "lr": 3e-3,
        "mqar": {"seq_len": 64, "num_kv_pairs": 4, "vocab_size": 32, "batch_size": 4,
                 "steps": 3, "eval_examples": 16},
        "corpus": {"seq_len": 32, "batch_size": 4, "steps": 3, "eval_batches": 2},
        "timing": {"lengths": [64, 128], "d_model": 32, "s": 16, "chunk_size": 16,
                   "max_seconds_per_call": 1.0, "min_run_time": 0.01},
        "heads": (1, 2),
        "threads": 1,
    },
}  # fmt: skip

#: the models each experiment compares (names used as keys of the results)
MODELS = {
    "mqar": ("transformer", "flash_quad", "flash"),
    "ffn": ("mhsa_ffn", "mhsa_glu", "gau"),
}


def build_model(
    name: str,
    *,
    d_model: int,
    n_layers: int,
    vocab_size: int,
    max_len: int,
    s: int,
    chunk_size: int,
    max_rel: int,
    rel_bias_init: float,
    n_heads: int = 4,
    glu_width: int | None = None,
    seed: int = 0,
) -> LM:
    """One model of the experiments, a :class:`effx_lab.models.lm.LM`.

    ``name``: ``"transformer"`` / ``"mhsa_ffn"`` (``n_layers`` softmax attention + GELU
    FFN layers, ``n_heads`` heads), ``"mhsa_glu"`` (the same with the ``"glu"`` FFN),
    ``"flash_quad"`` / ``"gau"`` (``2 n_layers`` GAU layers), ``"flash"`` (``2
    n_layers`` FLASH layers, chunks of ``chunk_size``) or ``"gau_h<k>"`` (``2 n_layers``
    GAU layers with ``k`` heads, :func:`gau_heads_mixer`). GAU-family layers use
    ``expansion=2``, width ``s`` and relative bias ``rel_bias_init``. ``glu_width``:
    the hidden width of ``"mhsa_glu"``'s GLU (default :func:`equal_glu_width` ``(d,
    4 d)``, the GELU FFN's parameters).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    common = dict(vocab_size=vocab_size, d_model=d_model, max_len=max_len, causal=True)
    gau_opts = dict(expansion=2, s=s, max_rel=max_rel, rel_bias_init=rel_bias_init)
    if name in ("transformer", "mhsa_ffn", "mhsa_glu"):
        ffn = "glu" if name == "mhsa_glu" else "gelu"
        ffn_options = {}
        if glu_width is not None:
            if name != "mhsa_glu":
                raise ValueError(f"glu_width applies to 'mhsa_glu' only, got name={name!r}")
            ffn_options["d_ff"] = check_int("glu_width", glu_width, min_value=1)
        spec = LMSpec(
            mixer="softmax", mixer_options={"n_heads": n_heads}, ffn=ffn,
            ffn_options=ffn_options, n_layers=n_layers, **common,
        )  # fmt: skip
    elif name in ("flash_quad", "gau"):
        spec = LMSpec(mixer="gau", mixer_options=gau_opts, ffn=None,
                      n_layers=2 * n_layers, **common)  # fmt: skip
    elif name == "flash":
        opts = dict(gau_opts, chunk_size=chunk_size, mode="mixed")
        spec = LMSpec(mixer="flash", mixer_options=opts, ffn=None,
                      n_layers=2 * n_layers, **common)  # fmt: skip
    elif name.startswith("gau_h") and name[5:].isdigit():
        opts = dict(gau_opts, n_heads=int(name[5:]))
        spec = LMSpec(mixer="gau_heads", mixer_options=opts, ffn=None,
                      n_layers=2 * n_layers, **common)  # fmt: skip
    else:
        raise ValueError(
            "name must be one of 'transformer', 'mhsa_ffn', 'mhsa_glu', 'flash_quad', "
            f"'gau', 'flash' or 'gau_h<k>', got {name!r}"
        )
    return LM(spec, seed=check_int("seed", seed, min_value=0))


# --------------------------------------------------------------------------------------
# MQAR: a loss that draws its own batches, and the held-out accuracy
# --------------------------------------------------------------------------------------


def mqar_loss(
    batch_size: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    *,
    seed: int = 0,
) -> Any:
    """A ``loss_fn(model, x, y)`` for :func:`effx_lab.models.training.train` that trains
    on MQAR.

    The training loop draws windows of a token stream; MQAR examples are made, not cut
    from a stream, so this loss ignores the loop's ``x, y`` (give the loop any stream,
    e.g. zeros) and draws a fresh batch of ``batch_size`` examples from
    :func:`effx_lab.data.mqar` at each call (seeds ``seed * 1_000_003 + call``, so the
    sequence of batches is fixed by ``seed``). The loss is the cross-entropy at the
    query positions only (the other targets are ``-100``, ignored).
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, min_value=1)
    vocab_size = check_int("vocab_size", vocab_size, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    mqar(1, seq_len, num_kv_pairs, vocab_size, seed=0)  # validates the sizes now
    calls = [0]

    def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = mqar(
            batch_size, seq_len, num_kv_pairs, vocab_size,
            seed=seed * 1_000_003 + calls[0],
        )  # fmt: skip
        calls[0] += 1
        inputs, targets = (t.to(x.device) for t in batch.to_torch())
        logits = model(inputs)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )  # fmt: skip

    return loss_fn


def mqar_eval(
    model: torch.nn.Module,
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    *,
    seed: int = 99,
    batch_size: int = 32,
) -> float:
    """Accuracy of ``model`` at the query positions of ``num_examples`` held-out MQAR
    examples (:func:`effx_lab.data.mqar_accuracy`; chance is about ``2 / vocab_size``).
    The default ``seed`` differs from every training batch's of :func:`mqar_loss`
    (``seed * 1_000_003 + call`` for small seeds)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    num_examples = check_int("num_examples", num_examples, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    batch = mqar(num_examples, seq_len, num_kv_pairs, vocab_size, seed=seed)
    inputs, targets = batch.to_torch()
    preds = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, num_examples, batch_size):
                preds.append(model(inputs[i : i + batch_size]).argmax(-1))
    finally:
        model.train(was_training)
    return mqar_accuracy(torch.cat(preds), targets)


# --------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------


def _model_kwargs(cfg: Mapping[str, Any], vocab: int, max_len: int) -> dict[str, Any]:
    keys = ("d_model", "n_layers", "s", "chunk_size", "max_rel", "rel_bias_init")
    return dict({k: cfg[k] for k in keys}, vocab_size=vocab, max_len=max_len)


def _curve(losses: list[float], points: int = 20) -> list[list[float]]:
    """``[step, mean loss of the steps since the previous point]`` at ``points`` steps."""
    n = len(losses)
    edges = sorted({max(1, round(n * (i + 1) / points)) for i in range(points)})
    out, start = [], 0
    for end in edges:
        out.append([end, float(np.mean(losses[start:end]))])
        start = end
    return out


def _run_mqar(cfg: Mapping[str, Any], seed: int, progress: bool | None) -> dict[str, Any]:
    m = cfg["mqar"]
    L, K, V = m["seq_len"], m["num_kv_pairs"], m["vocab_size"]
    out: dict[str, Any] = {"task": dict(m), "models": {}}
    for name in MODELS["mqar"]:
        model = build_model(name, seed=seed, **_model_kwargs(cfg, V, L))
        hist = train(
            model, np.zeros(L + 1, dtype=np.int64), steps=m["steps"],
            batch_size=1, seq_len=L, lr=cfg["lr"], warmup=0.1 * m["steps"],
            weight_decay=0.1, seed=seed,
            loss_fn=mqar_loss(m["batch_size"], L, K, V, seed=seed),
            progress=progress, desc=f"MQAR {name}",
        )  # fmt: skip
        out["models"][name] = {
            "n_params": model.num_params(),
            "accuracy": mqar_eval(model, m["eval_examples"], L, K, V),
            "final_train_loss": float(np.mean(hist.losses[-max(1, len(hist.losses) // 10):])),
            "step_s": hist.time_s / max(1, hist.steps),
            "curve": _curve(hist.losses),
        }
    out["chance"] = 2.0 / V
    return out


def attention_scales(model: LM, tokens: np.ndarray) -> dict[str, float]:
    """How much of a trained GAU model's attention logits ``q k^T / n + b`` comes
    from the content term ``q k^T / n`` and how much from the relative bias ``b``.

    Runs ``tokens`` (one window, 1-D) through ``model`` (GAU-family layers with
    ``gamma``, ``beta``, ``rel_bias``) and returns the standard deviation of the
    content term, averaged over layers, and that of the bias term over the same
    ``n x n`` causal positions: ``{"content_std", "bias_std"}``.
    """
    if not isinstance(model, LM):
        raise TypeError(f"model must be an effx_lab.models.lm.LM, got {describe(model)}")
    x = torch.from_numpy(np.array(tokens, dtype=np.int64))[None]
    n = x.shape[1]
    heads = int(model.spec.mixer_options.get("n_heads", 1))
    content, bias = [], []
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    with torch.no_grad():
        h = model.tok_emb[x] + model.pos_emb[:n]
        for i, layer in enumerate(model.layers):
            if "gamma" not in layer:
                raise ValueError(f"layer {i} is not a GAU-family layer (no 'gamma')")
            p = {k: v for k, v in layer.items()}
            e = p["w_o"].shape[0]
            hn = F.layer_norm(h, (h.shape[-1],), p["ln_g"], p["ln_b"], eps=_LN_EPS)
            z = F.silu(linear(hn, p["w_uvz"], p["b_uvz"]))[..., 2 * e :]
            q, k = z * p["gamma"][0] + p["beta"][0], z * p["gamma"][1] + p["beta"][1]
            qk = (q @ k.transpose(-1, -2))[0] / n
            b = flash_ops.rel_pos_bias(n, p["rel_bias"])
            content.append(float(qk[keep].std()))
            bias.append(float(b[keep].std()))
            h = gau_heads(h, p, heads, causal=True)
    return {"content_std": float(np.mean(content)), "bias_std": float(np.mean(bias))}


def _run_corpus(
    names: list[str], cfg: Mapping[str, Any], seed: int, progress: bool | None
) -> dict[str, Any]:
    c = cfg["corpus"]
    train_tokens, val_tokens = token_splits()
    out: dict[str, Any] = {"task": dict(c), "models": {}}
    for name in names:
        model = build_model(name, seed=seed, **_model_kwargs(cfg, 256, c["seq_len"]))
        hist = train(
            model, train_tokens, steps=c["steps"], batch_size=c["batch_size"],
            seq_len=c["seq_len"], lr=cfg["lr"], warmup=0.1 * c["steps"],
            weight_decay=0.1, seed=seed, progress=progress, desc=f"corpus {name}",
        )  # fmt: skip
        val = evaluate(
            model, val_tokens, seq_len=c["seq_len"], batch_size=c["batch_size"],
            max_batches=c["eval_batches"], seed=1234,
        )  # fmt: skip
        out["models"][name] = {
            "n_params": model.num_params(),
            "val_loss": float(val),
            "step_s": hist.time_s / max(1, hist.steps),
            "curve": _curve(hist.losses),
        }
        if name.startswith("gau"):
            window = val_tokens[: c["seq_len"]]
            out["models"][name]["attention"] = attention_scales(model, window)
    return out


def _run_timing(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from effx_lab.flash.analysis import scaling_exponent
    from effx_lab.flash.bench import time_vs_length

    t = dict(cfg["timing"])
    lengths = t.pop("lengths")
    sweep = time_vs_length(
        lengths, level="model", rounds=1, threads=cfg["threads"], n_heads=4,
        expansion=2, causal=True, **t,
    )  # fmt: skip
    exponents = {}
    for kind, times in sweep["times_s"].items():
        pts = [(n, x) for n, x in zip(lengths, times) if x is not None]
        exponents[kind] = (
            scaling_exponent([p[0] for p in pts], [p[1] for p in pts])
            if len(pts) >= 2 else None
        )  # fmt: skip
    return {
        "lengths": lengths,
        "times_s": sweep["times_s"],
        "skipped_from": sweep["skipped_from"],
        "exponents": exponents,
        "settings": sweep["settings"],
    }


def run_experiments(
    experiments: tuple[str, ...] | list[str] = EXPERIMENTS,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``experiments`` (names from :data:`EXPERIMENTS`) with :data:`SETTINGS`
    ``[quick]`` and return the results (the schema :func:`check_results` checks).

    Every model of an experiment is trained from ``seed`` for the same number of steps
    on the same batches, with one torch thread (:func:`effx_lab.bench.limit_threads`).
    """
    quick = check_bool("quick", quick)
    seed = check_int("seed", seed, min_value=0)
    if isinstance(experiments, str) or not isinstance(experiments, (list, tuple)):
        raise TypeError(
            f"experiments must be a list of names from {list(EXPERIMENTS)}, "
            f"got {describe(experiments)}"
        )
    for name in experiments:
        check_choice("experiments", name, EXPERIMENTS)
    cfg = SETTINGS[quick]
    results: dict[str, Any] = {
        "settings": _settings_for(cfg, experiments),
        "seed": seed,
        "quick": quick,
        "device": _device_line(),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "experiments": {},
    }
    if "heads" in results["settings"]:
        results["settings"]["heads"] = list(cfg["heads"])
    t0 = time.perf_counter()
    with limit_threads(cfg["threads"], blas=False):
        for name in experiments:
            if name == "mqar":
                res = _run_mqar(cfg, seed, progress)
            elif name == "timing":
                res = _run_timing(cfg)
            elif name == "heads":
                names = [f"gau_h{h}" for h in cfg["heads"]]
                res = _run_corpus(names, cfg, seed, progress)
            else:
                res = _run_corpus(list(MODELS["ffn"]), cfg, seed, progress)
            results["experiments"][name] = res
    results["total_s"] = time.perf_counter() - t0
    return results


def _device_line() -> str:
    from effx_lab.bench import device_name

    return f"{device_name()}, {platform.machine()}"


# --------------------------------------------------------------------------------------
# the shipped results
# --------------------------------------------------------------------------------------


def check_results(results: Any) -> dict[str, Any]:
    """Check the schema of :func:`run_experiments`' results; return them unchanged.

    Raises ``ValueError`` naming the first missing or malformed entry: each experiment
    present has its models with a positive ``n_params`` and ``step_s``, a finite
    accuracy in ``[0, 1]`` (``"mqar"``) or a finite positive ``val_loss``, and a loss
    curve of ``[step, loss]`` pairs.
    """
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {describe(results)}")
    for key in ("settings", "device", "date", "experiments", "command"):
        if key not in results:
            raise ValueError(f"results lack the entry {key!r}")
    exps = results["experiments"]
    if not isinstance(exps, dict) or not exps:
        raise ValueError(f"results['experiments'] must be a non-empty dict, got {describe(exps)}")
    for name, exp in exps.items():
        check_choice("experiment", name, EXPERIMENTS)
        if name == "timing":
            _check_timing(exp)
            continue
        models = exp.get("models") if isinstance(exp, dict) else None
        if not isinstance(models, dict) or not models:
            raise ValueError(f"results['experiments'][{name!r}] has no 'models' dict")
        expected = (
            MODELS[name]
            if name in MODELS
            else [f"gau_h{h}" for h in results["settings"]["heads"]]
        )
        if sorted(models) != sorted(expected):
            raise ValueError(
                f"experiment {name!r} must hold models {sorted(expected)}, got {sorted(models)}"
            )
        for model, r in models.items():
            where = f"results['experiments'][{name!r}]['models'][{model!r}]"
            if not (isinstance(r.get("n_params"), int) and r["n_params"] > 0):
                raise ValueError(f"{where}['n_params'] must be a positive int")
            if not (isinstance(r.get("step_s"), float) and r["step_s"] > 0):
                raise ValueError(f"{where}['step_s'] must be a positive float")
            metric = "accuracy" if name == "mqar" else "val_loss"
            v = r.get(metric)
            ok = isinstance(v, float) and math.isfinite(v)
            ok = ok and (0.0 <= v <= 1.0 if metric == "accuracy" else v > 0)
            if not ok:
                raise ValueError(f"{where}[{metric!r}] is malformed: {v!r}")
            curve = r.get("curve")
            if not (isinstance(curve, list) and curve and all(
                isinstance(p, list) and len(p) == 2 and math.isfinite(p[1]) for p in curve
            )):  # fmt: skip
                raise ValueError(f"{where}['curve'] must be a list of [step, loss] pairs")
            if name == "heads":
                att = r.get("attention")
                if not (isinstance(att, dict) and all(
                    isinstance(att.get(k), float) and att[k] >= 0
                    for k in ("content_std", "bias_std")
                )):  # fmt: skip
                    raise ValueError(f"{where}['attention'] must hold content_std, bias_std")
    return results


def _check_timing(exp: Any) -> None:
    from effx_lab.flash.bench import MODEL_KINDS

    if not isinstance(exp, dict) or not isinstance(exp.get("lengths"), list):
        raise ValueError("results['experiments']['timing'] must hold a 'lengths' list")
    times = exp.get("times_s")
    if not isinstance(times, dict) or sorted(times) != sorted(MODEL_KINDS):
        raise ValueError(f"timing 'times_s' must hold the kinds {sorted(MODEL_KINDS)}")
    for kind, ts in times.items():
        if len(ts) != len(exp["lengths"]) or not all(
            t is None or (isinstance(t, float) and t > 0) for t in ts
        ):
            raise ValueError(f"timing 'times_s'[{kind!r}] must hold one time or None per length")
        if ts[0] is None:
            raise ValueError(f"timing 'times_s'[{kind!r}] must be timed at the first length")
    if not isinstance(exp.get("exponents"), dict):
        raise ValueError("timing must hold the fitted 'exponents'")


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The results shipped with the course (:data:`RESULTS_PATH`), or those at ``path``,
    checked by :func:`check_results`."""
    return load_checked_results(
        path, RESULTS_PATH, "effx_lab.flash.experiments", check_results
    )


#: the entries of :data:`SETTINGS` each experiment reads (the others are common)
_OWN_SETTINGS = {
    "timing": ("timing",), "mqar": ("mqar",), "heads": ("corpus", "heads"),
    "ffn": ("corpus",),
}  # fmt: skip


def _settings_for(settings: Mapping[str, Any], names: Any) -> dict[str, Any]:
    """``settings`` without the entries of experiments not in ``names``."""
    own = {k for ks in _OWN_SETTINGS.values() for k in ks}
    keep = {k for name in names for k in _OWN_SETTINGS[name]}
    return {k: v for k, v in settings.items() if k not in own or k in keep}


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of different experiments (``--only``) with the same seed
    and mode: their experiments together, each part's settings restricted to what its
    experiments read (the common model settings and their own entries), ``total_s``
    summed, the commands joined. Raises ``ValueError`` when two parts disagree on a
    setting they both read or an experiment appears twice."""
    if not isinstance(parts, list) or not parts:
        raise TypeError(f"parts must be a non-empty list of results, got {describe(parts)}")
    first = parts[0]
    merged = {k: v for k, v in first.items() if k != "experiments"}
    merged["experiments"] = {}
    merged["settings"] = {}
    for i, part in enumerate(parts):
        for key in ("seed", "quick"):
            if part.get(key) != first.get(key):
                raise ValueError(f"parts[{i}] has other {key!r} than parts[0]")
        settings = _settings_for(part["settings"], part["experiments"])
        for key, value in settings.items():
            if merged["settings"].setdefault(key, value) != value:
                raise ValueError(f"parts[{i}] has other settings[{key!r}] than an earlier part")
        for name, exp in part["experiments"].items():
            if name in merged["experiments"]:
                raise ValueError(f"experiment {name!r} appears in two parts")
            merged["experiments"][name] = exp
    merged["total_s"] = float(sum(p.get("total_s", 0.0) for p in parts))
    merged["command"] = " ; ".join(p["command"] for p in parts)
    merged["date"] = max(p["date"] for p in parts)
    return merged


def main(argv: list[str] | None = None) -> int:
    """``python -m effx_lab.flash.experiments [--quick] [--only NAME ...] --out FILE``,
    or ``--merge FILE ... --out FILE`` to join runs of different experiments."""
    parser = argparse.ArgumentParser(prog="python -m effx_lab.flash.experiments")
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps")
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", nargs="+", help="result files to join into --out")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        results = check_results(merge_results(parts))
    else:
        results = run_experiments(tuple(args.only), quick=args.quick, seed=args.seed)
        argv_text = " ".join(sys.argv[1:] if argv is None else argv)
        results["command"] = f"python -m effx_lab.flash.experiments {argv_text}".strip()
        check_results(results)
    write_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
