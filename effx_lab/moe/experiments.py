"""Chapter 5's training experiments (notebooks 05.1 and 05.2), run by a script whose
results ship with the course, and the trained tiny MoE language model the notebooks
analyse.

``python -m effx_lab.moe.experiments --out results.json [--model-out tiny.npz]``
(``--quick``: a run of a few seconds; ``--only capacity|quality``: one experiment)
trains small language models (:class:`effx_lab.models.lm.LM`: softmax attention and the
``"moe"`` FFN of :mod:`effx_lab.moe.layers` in every layer, or a GELU FFN for the dense
anchors) on the course's offline corpus (:func:`effx_lab.data.pools.token_splits`) with
one torch thread, and writes what they measured, with the device, the date, the command
and the settings, to a JSON file. Notebooks read the shipped copy (:data:`RESULTS_PATH`,
:func:`load_results`) and the shipped model (:data:`TINY_MOE_PATH`,
:func:`load_tiny_moe`). The course's files were made by::

    python -m effx_lab.moe.experiments --out effx_lab/moe/data/experiments_05.json \\
        --model-out effx_lab/moe/data/tiny_moe.npz

Every model trains for the same number of optimizer steps on the same batches for a
given seed (the seed fixes the initialisation and the batches), with the loss of
:func:`effx_lab.moe.layers.moe_loss` (cross-entropy plus the Switch load-balancing loss
and the router z-loss; the dense anchors have neither), and is scored by
:func:`effx_lab.models.training.evaluate` on the same fixed windows of the validation
split (the MoE layers route with the capacity they trained with; a batch of eval
windows is one routing group).

* ``"capacity"`` (05.2; Riquelme et al. 2021, V-MoE): top-1 routing trained at each
  capacity factor ``C`` of :data:`SETTINGS` ``["capacities"]`` (0.25, 0.5, 1.0) with
  vanilla routing (buffers filled in token order) and with Batch Priority Routing
  (``"bpr_max"``: tokens in the order of their top router probability); the training
  losses record the share of tokens dropped at every step.
* ``"quality"`` (05.1; Fedus et al. 2022, Switch, and Du et al. 2022, GLaM): top-1
  (Switch: the gate is the router probability, not renormalised) against top-2 (GLaM:
  the two gates renormalised to sum to 1) with the same experts (same ``E`` and ``f``:
  equal total parameters) at ``C = 1.25``, and dense GELU FFNs of width ``f`` (the
  active width of top-1) and ``2 f`` (that of top-2) as anchors; each arm reports its
  FFN FLOPs per token (:func:`ffn_flops_per_token`). Then the top-1 models, trained at
  ``C = 1.25`` with vanilla routing, are evaluated at every ``C`` of
  ``SETTINGS["sweep"]`` with vanilla routing and with BPR, without retraining
  (:func:`effx_lab.moe.layers.set_routing`), recording the loss, the share of (token,
  choice) pairs dropped and the share of buffer rows left as padding, on the router
  outputs of the eval windows (05.1's capacity claim and V-MoE's BPR at inference).
  With ``--model-out`` the top-1 model of seed 0 is saved as the course's tiny MoE
  (float16 weights, its :class:`~effx_lab.models.lm.LMSpec` and its eval loss).

The decision rules (:data:`RULE`) are fixed here, before any run, and stored with the
results. One torch thread (:func:`effx_lab.bench.limit_threads`), as in chapters 3 and
4: on the shared 2-core machine it is faster than two and gives the same numbers on
every run. The scale is small (``d_model`` 64, two layers, 8 experts, a few hundred
steps of 8 windows of 64 tokens): the results say which way small models lean, not
what the papers' networks reach; either outcome is reported as it comes.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effx_lab._validate import check_bool, check_choice, check_int, describe
from effx_lab.bench import (
    check_seed_spread,
    compare_arms,
    experiments_main,
    limit_threads,
    load_average,
    load_checked_results,
    run_record,
    seed_spread,
    write_json,
)
from effx_lab.data.pools import token_splits
from effx_lab.models.lm import LM, LMSpec
from effx_lab.models.training import evaluate, train

__all__ = [
    "EXPERIMENTS",
    "MIN_DIFFERENCE",
    "MIN_SHARE_CHANGE",
    "QUALITY_ARMS",
    "RESULTS_PATH",
    "RULE",
    "SETTINGS",
    "TINY_MOE_PATH",
    "bpr_verdict",
    "capacity_verdict",
    "check_results",
    "ffn_flops_per_token",
    "inference_bpr_verdict",
    "load_results",
    "load_tiny_moe",
    "main",
    "quality_verdict",
    "run_experiments",
    "save_tiny_moe",
    "sweep_summary",
]

#: the experiments :func:`run_experiments` knows, in the order it runs them
EXPERIMENTS = ("capacity", "quality")
#: the results the course ships (made by ``python -m effx_lab.moe.experiments``)
RESULTS_PATH = Path(__file__).with_name("data") / "experiments_05.json"
#: the trained tiny MoE the notebooks analyse (made by the same run, ``--model-out``)
TINY_MOE_PATH = Path(__file__).with_name("data") / "tiny_moe.npz"

#: the smallest difference of mean eval losses (nats) the rules count as one
MIN_DIFFERENCE = 0.002

#: the decision rules, fixed before any run and stored with the results
RULE = (
    "Eval losses of the seeds per arm; spread = max - min over the seeds. For arms a "
    "and b, tol = the larger of the two spreads: a 'beats' b when mean_a < mean_b - "
    "tol, 'matches' b when |mean_a - mean_b| <= tol, and is 'worse' otherwise. "
    "(1) 'BPR beats vanilla routing when C <= 0.5' (trained): at each C <= 0.5 of the "
    "capacity experiment, bpr_max against vanilla; it holds when bpr_max beats "
    "vanilla at every such C, holds weakly when at every such C the mean of bpr_max "
    "is lower by more than 0.002 nats (smaller differences count as none) without "
    "beating at all of them, and does not hold otherwise. The same claim at "
    "inference, on the top-1 models trained at C = 1.25 with vanilla routing: per "
    "seed, the loss with BPR minus the loss with vanilla routing at the same C; it "
    "holds when that paired difference is below -0.002 for every seed at every C <= "
    "0.5 of the sweep, and does not hold otherwise. (2) 'top-2 buys quality for "
    "FLOPs': top2 against top1 (equal total parameters, more FLOPs per token); it "
    "holds when top2 beats top1, holds weakly when its mean is lower by more than "
    "0.002 but not beyond tol, and does not hold otherwise. (3) 'a larger C drops "
    "fewer tokens but adds padding': on the sweep with vanilla routing, mean over "
    "seeds and MoE layers; it holds when the dropped share never rises and the "
    "padded share never falls as C grows, and the dropped share at the smallest C "
    "exceeds that at the largest by more than 0.05 and the padded share at the "
    "largest C exceeds that at the smallest by more than 0.05; it does not hold "
    "otherwise."
)

SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64, "batch_size": 8,
        "steps": 300, "lr": 3e-3, "warmup": 0.05, "min_ratio": 0.1,
        "weight_decay": 0.1, "threads": 1, "seeds": [0, 1, 2],
        "n_experts": 8, "d_ff": 64, "aux_weight": 1e-2, "z_weight": 1e-3,
        "capacities": [0.25, 0.5, 1.0], "policies": ["vanilla", "bpr_max"],
        "quality_capacity": 1.25,
        "sweep": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
        "eval": {"batch_size": 16, "batches": 16, "seed": 1234},
        "curve_every": 20,
    },
    True: {
        "d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16, "batch_size": 4,
        "steps": 6, "lr": 3e-3, "warmup": 0.05, "min_ratio": 0.1,
        "weight_decay": 0.1, "threads": 1, "seeds": [0, 1],
        "n_experts": 4, "d_ff": 16, "aux_weight": 1e-2, "z_weight": 1e-3,
        "capacities": [0.25, 1.0], "policies": ["vanilla", "bpr_max"],
        "quality_capacity": 1.25,
        "sweep": [0.25, 1.0, 2.0],
        "eval": {"batch_size": 4, "batches": 2, "seed": 1234},
        "curve_every": 2,
    },
}  # fmt: skip

#: the arms of the quality experiment, in the order they run
QUALITY_ARMS = ("dense_f", "dense_2f", "top1", "top2")


# --------------------------------------------------------------------------------------
# summaries and the rules
# --------------------------------------------------------------------------------------


def _check_summary(name: str, arm: Any) -> None:
    if not isinstance(arm, Mapping) or not {"mean", "spread"} <= set(arm):
        raise TypeError(
            f"{name} must be a seed_spread() summary with 'mean' and 'spread', got "
            f"{describe(arm)}"
        )


def bpr_verdict(pairs: Any) -> str:
    """Rule (1), trained: ``pairs`` is a list of ``(bpr, vanilla)``
    :func:`~effx_lab.bench.seed_spread` summaries, one per capacity factor ``C <= 0.5``;
    ``"holds"``, ``"holds weakly"`` or ``"does not hold"``."""
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise TypeError(
            "pairs must be a non-empty list of (bpr, vanilla) summaries, got "
            f"{describe(pairs)}"
        )
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(
                f"pairs[{i}] must be a (bpr, vanilla) pair, got {describe(pair)}"
            )
        _check_summary(f"pairs[{i}][0]", pair[0])
        _check_summary(f"pairs[{i}][1]", pair[1])
    if all(compare_arms(b, v) == "beats" for b, v in pairs):
        return "holds"
    if all(b["mean"] < v["mean"] - MIN_DIFFERENCE for b, v in pairs):
        return "holds weakly"
    return "does not hold"


def inference_bpr_verdict(differences: Any) -> str:
    """Rule (1) at inference: ``differences`` lists, per ``C <= 0.5``, the per-seed
    losses with BPR minus those with vanilla routing; ``"holds"`` or ``"does not
    hold"``."""
    if not isinstance(differences, (list, tuple)) or not differences or not all(
        isinstance(d, (list, tuple)) and d for d in differences
    ):
        raise TypeError(
            "differences must be a non-empty list of non-empty lists of floats, got "
            f"{describe(differences)}"
        )
    ok = all(float(x) < -MIN_DIFFERENCE for d in differences for x in d)
    return "holds" if ok else "does not hold"


def quality_verdict(top2: Mapping[str, Any], top1: Mapping[str, Any]) -> str:
    """Rule (2): top-2 against top-1, :func:`~effx_lab.bench.seed_spread` summaries of
    their eval losses."""
    c = compare_arms(top2, top1)
    if c == "beats":
        return "holds"
    if c == "matches" and top2["mean"] < top1["mean"] - MIN_DIFFERENCE:
        return "holds weakly"
    return "does not hold"


#: the smallest change of the dropped and padded shares across the sweep rule (3) needs
MIN_SHARE_CHANGE = 0.05


def capacity_verdict(dropped: Any, padded: Any) -> str:
    """Rule (3): ``dropped`` and ``padded`` are the shares (in [0, 1]) at the sweep's
    capacity factors, in increasing order of ``C``; ``"holds"`` or ``"does not
    hold"``."""
    for name, v in (("dropped", dropped), ("padded", padded)):
        if not isinstance(v, (list, tuple)) or len(v) < 2:
            raise TypeError(
                f"{name} must be a list of at least two shares, got {describe(v)}"
            )
    if len(dropped) != len(padded):
        raise ValueError(
            "dropped and padded must have one share per C, got "
            f"{len(dropped)} and {len(padded)}"
        )
    d = [float(x) for x in dropped]
    p = [float(x) for x in padded]
    eps = 1e-12  # equal shares are not a rise
    monotone = all(b <= a + eps for a, b in zip(d, d[1:])) and all(
        b >= a - eps for a, b in zip(p, p[1:])
    )
    wide = d[0] - d[-1] > MIN_SHARE_CHANGE and p[-1] - p[0] > MIN_SHARE_CHANGE
    return "holds" if monotone and wide else "does not hold"


def ffn_flops_per_token(
    d_model: int, d_ff: int, *, k: int | None = None, n_experts: int | None = None
) -> int:
    """FLOPs per token of one FFN sublayer's matrix products (a multiply-add counts
    2): a dense GELU FFN of width ``d_ff`` (``k=None``) does ``2 * 2 * d_model *
    d_ff``; an MoE FFN whose ``k`` active experts have width ``d_ff`` does ``k`` times
    that plus its router, ``2 * d_model * n_experts`` (biases, norms and the gating
    arithmetic left out)."""
    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    if (k is None) != (n_experts is None):
        raise ValueError(
            "give both k and n_experts (an MoE FFN) or neither (a dense FFN), got "
            f"k={k!r} and n_experts={n_experts!r}"
        )
    if k is None:
        return 4 * d_model * d_ff
    n_experts = check_int("n_experts", n_experts, min_value=1)
    k = check_int("k", k, min_value=1, max_value=n_experts)
    return k * 4 * d_model * d_ff + 2 * d_model * n_experts


# --------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------


def _layers():  # P4's module, imported late: it registers the "moe" FFN
    from . import layers

    return layers


def _spec(cfg: Mapping[str, Any], arm: Mapping[str, Any]) -> LMSpec:
    base = dict(
        mixer="softmax", vocab_size=256, d_model=cfg["d_model"],
        n_layers=cfg["n_layers"], max_len=cfg["seq_len"],
        mixer_options={"n_heads": cfg["n_heads"]},
    )  # fmt: skip
    if arm["kind"] == "dense":
        return LMSpec(ffn="gelu", ffn_options={"d_ff": arm["d_ff"]}, **base)
    _layers()
    options = {
        "n_experts": cfg["n_experts"], "k": arm["k"], "d_ff": cfg["d_ff"],
        "capacity_factor": arm["capacity_factor"], "policy": arm["policy"],
        "renormalize": arm["k"] > 1,
    }  # fmt: skip
    return LMSpec(ffn="moe", ffn_options=options, **base)


def _arms(name: str, cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The arms of experiment ``name``: what each trains."""
    if name == "capacity":
        return {
            f"{policy}_c{c:g}": {
                "kind": "moe", "k": 1, "capacity_factor": c, "policy": policy
            }
            for c in cfg["capacities"]
            for policy in cfg["policies"]
        }  # fmt: skip
    c = cfg["quality_capacity"]
    return {
        "dense_f": {"kind": "dense", "d_ff": cfg["d_ff"]},
        "dense_2f": {"kind": "dense", "d_ff": 2 * cfg["d_ff"]},
        "top1": {"kind": "moe", "k": 1, "capacity_factor": c, "policy": "vanilla"},
        "top2": {"kind": "moe", "k": 2, "capacity_factor": c, "policy": "vanilla"},
    }


def _flops(cfg: Mapping[str, Any], arm: Mapping[str, Any]) -> int:
    if arm["kind"] == "dense":
        return ffn_flops_per_token(cfg["d_model"], arm["d_ff"])
    return ffn_flops_per_token(
        cfg["d_model"], cfg["d_ff"], k=arm["k"], n_experts=cfg["n_experts"]
    )


def _eval(model: torch.nn.Module, val: np.ndarray, cfg: Mapping[str, Any]) -> float:
    e = cfg["eval"]
    return float(
        evaluate(
            model, val, seq_len=cfg["seq_len"], batch_size=e["batch_size"],
            max_batches=e["batches"], seed=e["seed"],
        )  # fmt: skip
    )


def _curve(values: list[float], every: int) -> list[list[float]]:
    """Per-step values averaged over windows of ``every`` steps: ``[[step, mean]]``."""
    out = []
    for i in range(0, len(values), every):
        chunk = values[i : i + every]
        out.append([i + len(chunk), float(statistics.fmean(chunk))])
    return out


def _eval_batch(val: np.ndarray, cfg: Mapping[str, Any]) -> torch.Tensor:
    """The first batch of the eval windows (the routing group the sweep measures)."""
    from effx_lab.data import get_batch

    e = cfg["eval"]
    x, _ = get_batch(val, e["batch_size"], cfg["seq_len"],
                     np.random.default_rng(e["seed"]))  # fmt: skip
    return torch.from_numpy(np.asarray(x, dtype=np.int64))


def _routing_stats(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, Any]:
    """Dropped and padded shares and tokens per expert of each MoE layer on
    ``tokens``, and their means over the layers."""
    from . import reference as R

    records = _layers().router_records(model, tokens)
    layers = []
    for rec in records:
        r = rec["routing"]
        counts = R.expert_counts(r.experts, r.n_experts)
        layers.append({
            "layer": int(rec["layer"]),
            "dropped": float(R.dropped_fraction(r)),
            "padded": float(R.padding_fraction(r)),
            "counts": [int(c) for c in np.asarray(counts).reshape(-1)],
            "capacity": int(r.capacity),
        })  # fmt: skip
    return {
        "layers": layers,
        "dropped": float(statistics.fmean(x["dropped"] for x in layers)),
        "padded": float(statistics.fmean(x["padded"] for x in layers)),
    }


def _train(model, tr, cfg, seed, loss_fn, progress, desc):
    return train(
        model, tr, steps=cfg["steps"], seed=seed, loss_fn=loss_fn,
        batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], lr=cfg["lr"],
        warmup=cfg["warmup"] * cfg["steps"], min_ratio=cfg["min_ratio"],
        weight_decay=cfg["weight_decay"], progress=progress, desc=desc,
    )  # fmt: skip


def _run_arm(name, arm, cfg, data, seed, progress) -> tuple[dict[str, Any], LM]:
    tr, val = data
    model = LM(_spec(cfg, arm), seed=seed)
    loss_fn = None
    if arm["kind"] == "moe":
        loss_fn = _layers().moe_loss(
            aux_weight=cfg["aux_weight"], z_weight=cfg["z_weight"]
        )
    t0 = time.perf_counter()
    hist = _train(model, tr, cfg, seed, loss_fn, progress, f"{name} seed {seed}")
    every = cfg["curve_every"]
    rec: dict[str, Any] = {
        "val_loss": _eval(model, val, cfg),
        "loss_curve": _curve(hist.losses, every),
        "params": model.num_params(),
        "ffn_flops_per_token": _flops(cfg, arm),
        "step_s": hist.time_s / hist.steps,
    }
    rec["perplexity"] = math.exp(rec["val_loss"])
    if arm["kind"] == "moe":
        for key in ("ce", "aux", "z", "dropped"):
            if key in hist.metrics:
                rec[f"{key}_curve"] = _curve(hist.metrics[key], every)
        rec["eval_routing"] = _routing_stats(model, _eval_batch(val, cfg))
    rec["wall_s"] = time.perf_counter() - t0
    return rec, model


def _sweep(model: LM, arm, cfg, val) -> dict[str, Any]:
    """The trained ``model`` evaluated at every C of the sweep, vanilla and BPR."""
    L = _layers()
    tokens = _eval_batch(val, cfg)
    out: dict[str, Any] = {}
    try:
        for policy in cfg["policies"]:
            rows = []
            for c in cfg["sweep"]:
                L.set_routing(model, capacity_factor=c, policy=policy)
                stats = _routing_stats(model, tokens)
                rows.append({
                    "capacity_factor": c, "val_loss": _eval(model, val, cfg),
                    "dropped": stats["dropped"], "padded": stats["padded"],
                })  # fmt: skip
            out[policy] = rows
    finally:
        L.set_routing(model, capacity_factor=arm["capacity_factor"],
                      policy=arm["policy"])  # fmt: skip
    return out


def _summaries(runs: Mapping[str, Any], seeds: list[int]) -> dict[str, Any]:
    return seed_spread([runs[str(s)]["val_loss"] for s in seeds])


#: the quality arms compared (a against b)
_QUALITY_PAIRS = (
    ("top2", "top1"), ("top1", "dense_f"), ("top2", "dense_2f"),
    ("dense_2f", "dense_f"),
)  # fmt: skip


def _verdicts(results: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    exps = results["experiments"]
    if "capacity" in exps:
        arms = exps["capacity"]["arms"]
        per_c = {}
        pairs = []
        for c in cfg["capacities"]:
            b = arms[f"bpr_max_c{c:g}"]["val_loss"]
            v = arms[f"vanilla_c{c:g}"]["val_loss"]
            per_c[f"{c:g}"] = {
                "bpr_vs_vanilla": compare_arms(b, v),
                "difference": b["mean"] - v["mean"],
                "tol": max(b["spread"], v["spread"]),
                "paired": seed_spread(
                    [x - y for x, y in zip(b["values"], v["values"])]
                ),
            }
            if c <= 0.5:
                pairs.append((b, v))
        out["bpr_trained"] = {
            "verdict": bpr_verdict(pairs) if pairs else "not measured",
            "per_c": per_c,
        }
    if "quality" in exps:
        q = exps["quality"]
        arms = q["arms"]
        t2, t1 = arms["top2"]["val_loss"], arms["top1"]["val_loss"]
        out["quality"] = {
            "verdict": quality_verdict(t2, t1),
            "difference": t2["mean"] - t1["mean"],
            "tol": max(t2["spread"], t1["spread"]),
            "comparisons": {
                f"{a}_vs_{b}": compare_arms(arms[a]["val_loss"], arms[b]["val_loss"])
                for a, b in _QUALITY_PAIRS
            },
            # per seed a - b: the seed fixes the batches and the initialisation, which
            # move every arm together; reported beside the rule, not part of it
            "paired": {
                f"{a}_minus_{b}": seed_spread([
                    x - y for x, y in zip(arms[a]["val_loss"]["values"],
                                          arms[b]["val_loss"]["values"])
                ])
                for a, b in _QUALITY_PAIRS
            },
        }  # fmt: skip
        sweep = q["sweep"]
        cs = cfg["sweep"]
        van = {s: sweep[s]["vanilla"] for s in sweep}
        bpr = {s: sweep[s]["bpr_max"] for s in sweep}
        diffs = [
            [bpr[s][i]["val_loss"] - van[s][i]["val_loss"] for s in sorted(sweep)]
            for i, c in enumerate(cs)
            if c <= 0.5
        ]
        out["bpr_inference"] = {
            "verdict": inference_bpr_verdict(diffs) if diffs else "not measured",
            "differences": {
                f"{c:g}": [bpr[s][i]["val_loss"] - van[s][i]["val_loss"]
                           for s in sorted(sweep)]
                for i, c in enumerate(cs)
            },  # fmt: skip
        }
        dropped = [statistics.fmean(van[s][i]["dropped"] for s in van)
                   for i in range(len(cs))]  # fmt: skip
        padded = [statistics.fmean(van[s][i]["padded"] for s in van)
                  for i in range(len(cs))]  # fmt: skip
        out["capacity_sweep"] = {
            "verdict": capacity_verdict(dropped, padded),
            "capacity_factors": list(cs),
            "dropped": dropped,
            "padded": padded,
        }
    return out


def run_experiments(
    experiments: tuple[str, ...] | list[str] = EXPERIMENTS,
    *,
    quick: bool = False,
    progress: bool | None = None,
    model_out: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``experiments`` (names from :data:`EXPERIMENTS`) for every seed of
    :data:`SETTINGS` ``[quick]`` on one torch thread; return the results (the schema
    :func:`check_results` checks). ``model_out``: where to save the top-1 model of the
    first seed of the quality experiment (:func:`save_tiny_moe`)."""
    quick = check_bool("quick", quick)
    experiments = _check_names(experiments)
    if model_out is not None and not isinstance(model_out, (str, Path)):
        raise TypeError(f"model_out must be a path or None, got {describe(model_out)}")
    if model_out is not None and "quality" not in experiments:
        raise ValueError(
            "model_out needs the 'quality' experiment (it saves its top-1 model), "
            f"got experiments {list(experiments)}"
        )
    cfg = SETTINGS[quick]
    results: dict[str, Any] = {
        "settings": json.loads(json.dumps(cfg)),
        "quick": quick,
        "rule": RULE,
        **run_record(),
        "experiments": {},
    }
    data = token_splits()
    seeds = cfg["seeds"]
    t0 = time.perf_counter()
    with limit_threads(cfg["threads"], blas=False) as applied:
        results["threads"] = applied.torch
        for name in experiments:
            exp: dict[str, Any] = {"arms": {}}
            kept: dict[str, LM] = {}
            for arm_name, arm in _arms(name, cfg).items():
                runs = {}
                for seed in seeds:
                    rec, model = _run_arm(arm_name, arm, cfg, data, seed, progress)
                    runs[str(seed)] = rec
                    if name == "quality" and arm_name == "top1":
                        kept[str(seed)] = model
                exp["arms"][arm_name] = {
                    "spec": dict(arm, flops=_flops(cfg, arm)),
                    "runs": runs,
                    "val_loss": _summaries(runs, seeds),
                }
            if name == "quality":
                top1 = _arms(name, cfg)["top1"]
                if model_out is not None:
                    first = str(seeds[0])
                    saved = save_tiny_moe(
                        kept[first], model_out, meta={
                            "settings": results["settings"], "seed": seeds[0],
                            "device": results["device"], "date": results["date"],
                            "torch": results["torch"],
                            "trained_val_loss": exp["arms"]["top1"]["runs"][first][
                                "val_loss"],
                        },
                    )  # fmt: skip
                    results["tiny_moe"] = {
                        "file": Path(model_out).name,
                        "seed": seeds[0],
                        "val_loss": saved,
                    }
                exp["sweep"] = {
                    s: _sweep(m, top1, cfg, data[1]) for s, m in kept.items()
                }
            results["experiments"][name] = exp
    results["verdicts"] = _verdicts(results, cfg)
    results["total_s"] = time.perf_counter() - t0
    results["load_average_after"] = load_average()
    return results


def _check_names(names: Any) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(
            f"experiments must be a list of names from {list(EXPERIMENTS)}, got "
            f"{describe(names)}"
        )
    if not names:
        raise ValueError("experiments must name at least one experiment, got []")
    for name in names:
        check_choice("experiments", name, EXPERIMENTS)
    return tuple(n for n in EXPERIMENTS if n in names)  # the fixed order


def sweep_summary(results: Any) -> dict[str, Any]:
    """The inference sweep of checked ``results`` (:func:`load_results`) averaged over
    the seeds: ``{"capacity_factors": [...], "seeds": n, policy: {"val_loss",
    "dropped", "padded": one mean per C}}`` for each routing policy (``"vanilla"``,
    ``"bpr_max"``); what 05.1 and 05.2 plot."""
    if not isinstance(results, dict) or "quality" not in results.get(
        "experiments", {}
    ):
        raise ValueError(
            "results must be the checked results of a run with the 'quality' "
            f"experiment (load_results()), got {describe(results)}"
        )
    cfg = results["settings"]
    sweep = results["experiments"]["quality"]["sweep"]
    out: dict[str, Any] = {
        "capacity_factors": list(cfg["sweep"]), "seeds": len(sweep)
    }
    for policy in cfg["policies"]:
        out[policy] = {
            key: [
                float(statistics.fmean(sweep[s][policy][i][key] for s in sweep))
                for i in range(len(cfg["sweep"]))
            ]
            for key in ("val_loss", "dropped", "padded")
        }
    return out


# --------------------------------------------------------------------------------------
# the tiny MoE the notebooks analyse
# --------------------------------------------------------------------------------------


def save_tiny_moe(
    model: LM, path: str | Path, *, meta: Mapping[str, Any] | None = None
) -> float:
    """Write ``model`` (an :class:`~effx_lab.models.lm.LM`) to a compressed ``.npz``:
    its parameters as float16 (one array per ``state_dict`` name), its
    :class:`~effx_lab.models.lm.LMSpec` and seed as JSON under ``__spec__``, and
    ``meta`` plus the eval loss of the stored (float16) weights under ``__meta__``.
    Returns that eval loss (the number :func:`load_tiny_moe`'s model reproduces)."""
    if not isinstance(model, LM):
        raise TypeError(
            f"model must be an effx_lab.models.lm.LM, got {describe(model)}"
        )
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {describe(path)}")
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict or None, got {describe(meta)}")
    meta = dict(meta or {})
    cfg = meta.get("settings", SETTINGS[False])
    arrays = {
        k: v.detach().cpu().numpy().astype(np.float16)
        for k, v in model.state_dict().items()
    }
    spec = {"spec": model.spec.to_dict(), "seed": model.seed}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = _from_arrays(spec, arrays)
    meta["val_loss"] = _eval(rounded, token_splits()[1], cfg)
    meta["eval"] = {"seq_len": cfg["seq_len"], **cfg["eval"]}
    arrays_out: dict[str, np.ndarray] = dict(arrays)
    arrays_out["__spec__"] = np.array(json.dumps(spec))
    arrays_out["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays_out)
    return float(meta["val_loss"])


def _from_arrays(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> LM:
    _layers()
    model = LM(LMSpec.from_dict(dict(spec["spec"])), seed=int(spec["seed"]))
    want = model.state_dict()
    if set(arrays) != set(want):
        raise ValueError(
            "the checkpoint's parameters do not fit its spec: missing "
            f"{sorted(set(want) - set(arrays))}, unexpected "
            f"{sorted(set(arrays) - set(want))}"
        )
    state = {}
    for key, ref in want.items():
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"the checkpoint's {key!r} has shape {tuple(value.shape)}, its spec "
                f"needs {tuple(ref.shape)}"
            )
        state[key] = torch.from_numpy(value.astype(np.float32))
    model.load_state_dict(state)
    return model.eval()


def load_tiny_moe(path: str | Path | None = None) -> LM:
    """The tiny MoE language model the course ships (:data:`TINY_MOE_PATH`), or the one
    :func:`save_tiny_moe` wrote at ``path``: an :class:`~effx_lab.models.lm.LM` with
    float32 weights in eval mode, its checkpoint's metadata as ``model.meta`` (the
    settings it trained with, its seed, and ``val_loss``: the eval loss of these
    weights on the windows ``meta["eval"]`` names)."""
    if path is not None and not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str, a Path or None, got {describe(path)}")
    file = TINY_MOE_PATH if path is None else Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"no tiny MoE at {file}: run `python -m {_MODULE} --out results.json "
            f"--model-out {file}`"
        )
    with np.load(file, allow_pickle=False) as data:
        if "__spec__" not in data.files:
            raise ValueError(f"{file} is not a tiny MoE checkpoint (no __spec__ entry)")
        spec = json.loads(str(data["__spec__"]))
        meta = json.loads(str(data["__meta__"])) if "__meta__" in data.files else {}
        arrays = {k: data[k] for k in data.files if not k.startswith("__")}
    model = _from_arrays(spec, arrays)
    model.meta = meta
    return model


# --------------------------------------------------------------------------------------
# the shipped results
# --------------------------------------------------------------------------------------


def _finite_loss(where: str, v: Any) -> None:
    if not (isinstance(v, float) and math.isfinite(v) and v > 0):
        raise ValueError(f"{where} must be a finite positive float, got {v!r}")


def _share(where: str, v: Any) -> None:
    if not (isinstance(v, float) and 0.0 <= v <= 1.0):
        raise ValueError(f"{where} must be a float in [0, 1], got {v!r}")


def _check_experiment(name: str, exp: Any, cfg: Mapping[str, Any]) -> None:
    where = f"experiments[{name!r}]"
    seeds = [str(s) for s in cfg["seeds"]]
    arms = exp.get("arms") if isinstance(exp, dict) else None
    want = list(_arms(name, cfg))
    if not isinstance(arms, dict) or list(arms) != want:
        raise ValueError(f"{where}['arms'] must hold the arms {want} in that order")
    for arm_name, entry in arms.items():
        w = f"{where}['arms'][{arm_name!r}]"
        runs = entry.get("runs") if isinstance(entry, dict) else None
        if not isinstance(runs, dict) or sorted(runs) != sorted(seeds):
            raise ValueError(f"{w}['runs'] must hold one run per seed {seeds}")
        for seed, r in runs.items():
            _finite_loss(f"{w}['runs'][{seed!r}]['val_loss']", r.get("val_loss"))
            if _arms(name, cfg)[arm_name]["kind"] == "moe":
                stats = r.get("eval_routing")
                if not isinstance(stats, dict):
                    raise ValueError(f"{w}['runs'][{seed!r}] lacks 'eval_routing'")
                _share(f"{w}['runs'][{seed!r}]['eval_routing']['dropped']",
                       stats.get("dropped"))  # fmt: skip
                _share(f"{w}['runs'][{seed!r}]['eval_routing']['padded']",
                       stats.get("padded"))  # fmt: skip
        check_seed_spread(f"{w}['val_loss']", entry.get("val_loss"), len(seeds))
        if entry["val_loss"]["values"] != [runs[s]["val_loss"] for s in seeds]:
            raise ValueError(f"{w}['val_loss'] is not the summary of its runs")
    if name == "quality":
        sweep = exp.get("sweep")
        if not isinstance(sweep, dict) or sorted(sweep) != sorted(seeds):
            raise ValueError(f"{where}['sweep'] must hold one sweep per seed {seeds}")
        for seed, s in sweep.items():
            for policy in cfg["policies"]:
                rows = s.get(policy) if isinstance(s, dict) else None
                w = f"{where}['sweep'][{seed!r}][{policy!r}]"
                if not isinstance(rows, list) or [
                    r.get("capacity_factor") for r in rows
                ] != list(cfg["sweep"]):
                    raise ValueError(f"{w} must hold one row per C of the sweep")
                for i, r in enumerate(rows):
                    _finite_loss(f"{w}[{i}]['val_loss']", r.get("val_loss"))
                    _share(f"{w}[{i}]['dropped']", r.get("dropped"))
                    _share(f"{w}[{i}]['padded']", r.get("padded"))


def check_results(results: Any) -> dict[str, Any]:
    """Check the schema of :func:`run_experiments`' results and that their verdicts
    are the rules' verdicts on the stored numbers; return them unchanged.

    Raises ``ValueError`` naming the first missing or malformed entry.
    """
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {describe(results)}")
    for key in ("settings", "device", "date", "experiments", "command", "torch",
                "rule", "verdicts", "total_s"):  # fmt: skip
        if key not in results:
            raise ValueError(f"results lack the entry {key!r}")
    if results["rule"] != RULE:
        raise ValueError(
            "results['rule'] is not this module's RULE (made by another version?)"
        )
    cfg = results["settings"]
    exps = results["experiments"]
    if not isinstance(exps, dict) or not exps:
        raise ValueError(
            f"results['experiments'] must be a non-empty dict, got {describe(exps)}"
        )
    for name, exp in exps.items():
        check_choice("experiment", name, EXPERIMENTS)
        _check_experiment(name, exp, cfg)
    if results["verdicts"] != _verdicts(results, cfg):
        raise ValueError(
            "results['verdicts'] are not the rules' verdicts on the stored results"
        )
    return results


#: the module that ``python -m`` runs (``__name__`` is "__main__" then)
_MODULE = "effx_lab.moe.experiments"


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The results shipped with the course (:data:`RESULTS_PATH`), or those at ``path``,
    checked by :func:`check_results`."""
    return load_checked_results(path, RESULTS_PATH, _MODULE, check_results)


def main(argv: list[str] | None = None) -> int:
    """``python -m effx_lab.moe.experiments [--quick] [--only NAME ...] --out F
    [--model-out M]``."""
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", add_help=False)
    parser.add_argument("--model-out", default=None)
    known, rest = parser.parse_known_args(args)
    model_out = known.model_out

    def run(names: tuple[str, ...], *, quick: bool) -> dict[str, Any]:
        return run_experiments(names, quick=quick, model_out=model_out)

    code = experiments_main(_MODULE, EXPERIMENTS, run, check_results, rest)
    if model_out is not None:  # record the whole command line
        where = argparse.ArgumentParser(add_help=False)
        where.add_argument("--out", required=True)
        out = Path(where.parse_known_args(rest)[0].out)
        if out.is_file():
            results = json.loads(out.read_text())
            results["command"] = f"python -m {_MODULE} {' '.join(args)}".strip()
            write_json(check_results(results), out)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
