"""Chapter 3's training experiments (notebooks 03.2 and 03.3), run by a script whose
results ship with the course.

``python -m effx_lab.prune.experiments --out results.json`` (``--quick``: a run of a
few seconds) trains small language models (:class:`effx_lab.models.lm.LM`, softmax
attention and a GELU FFN) on the course's offline corpus
(:func:`effx_lab.data.pools.token_splits`) with one torch thread and writes what they
measured, with the device, the date, the command and the settings, to a JSON file.
Notebooks 03.2 and 03.3 read the shipped copy (:data:`RESULTS_PATH`,
:func:`load_results`) because the runs take minutes, far more than a notebook's 90 s.
Every model of one experiment trains for the same number of steps on the same batches
(the seed fixes both), and is scored by :func:`effx_lab.models.training.evaluate` on
the same fixed windows of the validation split.

* ``"gmp"`` (03.2; Zhu & Gupta 2017, "To prune, or not to prune"): a large model pruned
  during training by :class:`~effx_lab.prune.schedule.GradualPruner` (cubic schedule,
  each weight matrix to the same sparsity) to each of ``sparsities`` of its prunable
  weights, against a small dense model (narrower, same depth) whose non-zero count
  equals the large sparse one's (every parameter counted: prunable weights,
  embeddings, biases and norms; the prunable-only counts are reported too), and the
  large dense model (the ceiling).
* ``"rewinding"`` (03.3; Renda et al. 2020): a dense model trained ``T`` steps, pruned
  once (one-shot global magnitude pruning of the prunable weights) to each of
  ``sparsities``, then retrained for the same ``T - k`` steps by fine-tuning, weight
  rewinding to step ``k`` and learning-rate rewinding to step ``k``
  (:func:`~effx_lab.prune.schedule.retrain`); several seeds (a seed changes the
  initialisation and the batches). The rule that says whether learning-rate rewinding
  "matches" weight rewinding is fixed here, before any run (:data:`RULE`), and stored
  with the results.
* ``"lottery"`` (03.3; Frankle & Carbin 2019, Frankle et al. 2020): the trained dense
  model's mask (the same one-shot global masks) put onto (a) the weights at step ``k``
  (the ticket with rewinding: the same run as weight rewinding), (b) the weights at
  initialisation (the original ticket) and (c) a fresh random initialisation (the
  control), each trained for the same ``T - k`` steps on the learning-rate schedule
  from step ``k``.

One torch thread (:func:`effx_lab.bench.limit_threads`): on the course's shared 2-core
machine a second thread mostly waits on a descheduled partner (steps measured 5 to 10
times slower with two threads under load), and one thread gives the same numbers on
every run of the same machine.

The scale is small (``d_model`` 48 to 96, two layers, 160 to 240 steps of 8 windows of
64 tokens, minutes of CPU): the results say which way small models lean, not what the
papers' networks reach; either outcome is reported as it comes.
"""

from __future__ import annotations

import copy
import json
import math
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
)
from effx_lab.data.pools import token_splits
from effx_lab.models.lm import LM, LMSpec
from effx_lab.models.training import evaluate, train

from . import models as PM
from . import schedule as S

__all__ = [
    "EXPERIMENTS",
    "MODES",
    "RESULTS_PATH",
    "RULE",
    "SETTINGS",
    "check_results",
    "load_results",
    "main",
    "matching_width",
    "nonzeros",
    "run_experiments",
]

#: the experiments :func:`run_experiments` knows, in the order it runs them
EXPERIMENTS = ("gmp", "rewinding", "lottery")
#: the results the course ships (made by ``python -m effx_lab.prune.experiments``)
RESULTS_PATH = Path(__file__).with_name("data") / "experiments_03.json"
#: the retraining modes of the "rewinding" experiment (Renda et al. 2020)
MODES = S.RETRAIN_MODES
#: the arms of the "lottery" experiment
TICKETS = ("ticket_k", "ticket_init", "random_reinit")

#: the decision rule of the comparisons, fixed before any run and stored with them
RULE = (
    "For two arms a and b at one sparsity, with the eval losses of the seeds: "
    "spread = max - min over the seeds; tol = the larger of the two spreads. "
    "a 'beats' b when mean_a < mean_b - tol, 'matches' b when |mean_a - mean_b| <= "
    "tol, and is 'worse' otherwise. Renda et al.'s claim holds at a sparsity when "
    "lr_rewind beats or matches weight_rewind and both beat finetune."
)

SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "seq_len": 64, "batch_size": 8, "lr": 3e-3, "warmup": 0.05, "min_ratio": 0.1,
        "weight_decay": 0.1, "n_layers": 2, "n_heads": 4, "threads": 1,
        "eval": {"batch_size": 16, "batches": 16, "seed": 1234},
        "gmp": {"d_large": 96, "steps": 240, "sparsities": [0.75, 0.9],
                "t0": 24, "dt": 8, "n_steps": 18, "scope": "layer", "seeds": [0, 1, 2]},
        "rewinding": {"d_model": 48, "steps": 160, "k": 16,
                      "sparsities": [0.5, 0.8, 0.9], "seeds": [0, 1, 2]},
        "lottery": {"sparsities": [0.8, 0.9]},
    },
    True: {
        "seq_len": 16, "batch_size": 4, "lr": 3e-3, "warmup": 0.05, "min_ratio": 0.1,
        "weight_decay": 0.1, "n_layers": 1, "n_heads": 2, "threads": 1,
        "eval": {"batch_size": 4, "batches": 2, "seed": 1234},
        "gmp": {"d_large": 16, "steps": 6, "sparsities": [0.75], "t0": 1, "dt": 1,
                "n_steps": 3, "scope": "layer", "seeds": [0]},
        "rewinding": {"d_model": 8, "steps": 6, "k": 1, "sparsities": [0.5, 0.9],
                      "seeds": [0, 1, 2]},
        "lottery": {"sparsities": [0.9]},
    },
}  # fmt: skip


# --------------------------------------------------------------------------------------
# counting and comparing
# --------------------------------------------------------------------------------------


def nonzeros(model: torch.nn.Module) -> dict[str, int]:
    """Non-zero entries of ``model``'s parameters: ``{"total", "prunable"}``.

    ``total`` counts every parameter (embeddings, biases, norms: the tied output head
    once), ``prunable`` only the weights :func:`effx_lab.prune.models.prunable_weights`
    lists (for :class:`~effx_lab.models.lm.LM` the ``w*`` matrices of every layer).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    prunable = PM.prunable_weights(model)
    count = lambda ps: int(sum(int((p != 0).sum()) for p in ps))  # noqa: E731
    return {"total": count(model.parameters()), "prunable": count(prunable.values())}


def _spec(d_model: int, cfg: Mapping[str, Any]) -> LMSpec:
    return LMSpec(
        mixer="softmax", ffn="gelu", vocab_size=256, d_model=d_model,
        n_layers=cfg["n_layers"], max_len=cfg["seq_len"],
        mixer_options={"n_heads": cfg["n_heads"]},
    )  # fmt: skip


def _params(spec: LMSpec) -> dict[str, int]:
    """Parameter counts of ``LM(spec)`` without building it: total and prunable."""
    d, L = spec.d_model, spec.n_layers
    d_ff = spec.ffn_options.get("d_ff") or 4 * d
    prunable = L * (4 * d * d + 2 * d * d_ff)
    per_layer = prunable // L + 4 * d + d_ff + d + 4 * d  # biases, two LayerNorms
    total = (spec.vocab_size + spec.max_len) * d + L * per_layer + 2 * d
    return {"total": total, "prunable": prunable}


def matching_width(target_total: int, cfg: Mapping[str, Any]) -> int:
    """The ``d_model`` (a multiple of ``n_heads``) of a dense LM of ``cfg``'s depth
    whose parameter count is nearest ``target_total`` (the smaller on a tie)."""
    target_total = check_int("target_total", target_total, min_value=1)
    h = cfg["n_heads"]
    best, best_gap = h, None
    d = h
    while True:
        gap = abs(_params(_spec(d, cfg))["total"] - target_total)
        if best_gap is not None and gap > best_gap:
            return best
        if best_gap is None or gap < best_gap:
            best, best_gap = d, gap
        d += h


def _paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Seed by seed differences ``a - b`` (the same seed: the same dense run and
    batches), summarised by :func:`~effx_lab.bench.seed_spread`; shown next to the
    rule, not used by it."""
    return seed_spread([x - y for x, y in zip(a, b)])


# --------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------


def _train_kw(cfg: Mapping[str, Any], steps: int) -> dict[str, Any]:
    return dict(
        batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], lr=cfg["lr"],
        warmup=cfg["warmup"] * steps, min_ratio=cfg["min_ratio"],
        weight_decay=cfg["weight_decay"],
    )  # fmt: skip


def _eval(model: torch.nn.Module, val: np.ndarray, cfg: Mapping[str, Any]) -> float:
    e = cfg["eval"]
    return float(
        evaluate(
            model, val, seq_len=cfg["seq_len"], batch_size=e["batch_size"],
            max_batches=e["batches"], seed=e["seed"],
        )  # fmt: skip
    )


def _eval_curve(hist: Any) -> list[list[float]]:
    return [[int(e["step"]), float(e["loss"])] for e in hist.evals]


def _run_gmp(cfg, data, progress) -> dict[str, Any]:
    g = cfg["gmp"]
    tr, val = data
    steps = g["steps"]
    kw = _train_kw(cfg, steps)
    large = _spec(g["d_large"], cfg)
    out: dict[str, Any] = {"task": dict(g), "models": {}, "pairs": []}
    every = max(1, steps // 10)
    e = cfg["eval"]
    curve_kw = dict(
        eval_tokens=val, eval_every=every, eval_batches=max(1, e["batches"] // 4),
        eval_batch_size=e["batch_size"], eval_seed=e["seed"],
    )  # fmt: skip

    def run(name, spec, seed, pruner_args=None):
        model = LM(spec, seed=seed)
        hooks = []
        pruner = None
        if pruner_args is not None:
            pruner = S.GradualPruner(model, **pruner_args)
            hooks.append(pruner)
        t0 = time.perf_counter()
        hist = train(model, tr, steps=steps, seed=seed, after_step=hooks,
                     progress=progress, desc=f"gmp {name} seed {seed}", **kw,
                     **curve_kw)  # fmt: skip
        rec = {
            "d_model": spec.d_model,
            "n_params": model.num_params(),
            "nonzeros": nonzeros(model),
            "val_loss": _eval(model, val, cfg),
            "eval_curve": _eval_curve(hist),
            "step_s": hist.time_s / hist.steps,
            "wall_s": time.perf_counter() - t0,
        }
        if pruner is not None:
            rec["sparsity"] = pruner.sparsity()
            rec["sparsity_curve"] = [[int(s), float(v)] for s, v in pruner.history]
        return rec

    for seed in g["seeds"]:
        runs = out["models"].setdefault("large_dense", {})
        runs[str(seed)] = run("large dense", large, seed)
        for s in g["sparsities"]:
            args = dict(s_final=s, t0=g["t0"], n_steps=g["n_steps"], dt=g["dt"],
                        scope=g["scope"])  # fmt: skip
            name = f"large_sparse_{s}"
            rec = run(f"large {s}", large, seed, args)
            out["models"].setdefault(name, {})[str(seed)] = rec
            d_small = matching_width(rec["nonzeros"]["total"], cfg)
            small_name = f"small_dense_{s}"
            out["models"].setdefault(small_name, {})[str(seed)] = run(
                f"small d={d_small}", _spec(d_small, cfg), seed
            )
            if seed == g["seeds"][0]:
                out["pairs"].append(
                    {"sparsity": s, "large": name, "small": small_name}
                )
    for pair in out["pairs"]:
        big = [r["val_loss"] for r in out["models"][pair["large"]].values()]
        small = [r["val_loss"] for r in out["models"][pair["small"]].values()]
        pair["large_val_loss"] = seed_spread(big)
        pair["small_val_loss"] = seed_spread(small)
        pair["large_minus_small"] = pair["large_val_loss"]["mean"] - pair[
            "small_val_loss"
        ]["mean"]
        pair["paired"] = _paired(big, small)
        pair["verdict"] = compare_arms(pair["large_val_loss"], pair["small_val_loss"])
    return out


class _Dense:
    """The dense run of one seed for "rewinding" and "lottery" (trained once)."""

    def __init__(self, cfg, data, seed, progress) -> None:
        r = cfg["rewinding"]
        tr, val = data
        self.spec = _spec(r["d_model"], cfg)
        model = LM(self.spec, seed=seed)
        self.init = S.snapshot(model)
        kw = _train_kw(cfg, r["steps"])
        snaps: dict[str, Any] = {}

        def keep_k(m: torch.nn.Module, step: int) -> None:  # the weights at step k
            if step == r["k"]:
                snaps["k"] = S.snapshot(m)

        t0 = time.perf_counter()
        hist = train(model, tr, steps=r["steps"], seed=seed, after_step=[keep_k],
                     progress=progress, desc=f"dense seed {seed}", **kw)  # fmt: skip
        self.at_k = snaps["k"] if r["k"] > 0 else self.init
        self.model = model
        self.val_loss = _eval(model, val, cfg)
        self.step_s = hist.time_s / hist.steps
        self.wall_s = time.perf_counter() - t0


def _retrain(dense: _Dense, cfg, data, sparsity, rewind, mode, seed, progress):
    """Prune a copy of the dense model once (global magnitude) and retrain it with
    ``mode`` (``rewind``: the snapshot weight rewinding puts back, ``None`` for the
    other modes); return its eval loss, sparsity and step time."""
    r = cfg["rewinding"]
    tr, val = data
    model = copy.deepcopy(dense.model)
    # the masks of the trained weights; the weights kept (rewound to themselves)
    S.lottery_ticket_(model, sparsity, S.snapshot(model), scope="global")
    kw = _train_kw(cfg, r["steps"])
    hist = S.retrain(
        model, tr, mode, k=r["k"], total_steps=r["steps"], rewind_to=rewind,
        lr=kw.pop("lr"), warmup=kw.pop("warmup"), min_ratio=kw.pop("min_ratio"),
        seed=seed + 1000, progress=progress, desc=f"{mode} s={sparsity} seed {seed}",
        **kw,
    )  # fmt: skip
    return {
        "val_loss": _eval(model, val, cfg),
        "sparsity": PM.mask_set(model).sparsity(),
        "step_s": hist.time_s / hist.steps,
    }


def _run_rewinding(cfg, data, dense, cache, progress) -> dict[str, Any]:
    r = cfg["rewinding"]
    out: dict[str, Any] = {
        "task": dict(r, retrain_steps=r["steps"] - r["k"],
                     pruning="one-shot global magnitude pruning of the prunable "
                             "weights after the dense run"),
        "rule": RULE, "dense": {}, "sparsities": {},
    }  # fmt: skip
    for seed in r["seeds"]:
        d = dense(seed)
        out["dense"][str(seed)] = {"val_loss": d.val_loss, "step_s": d.step_s}
    for s in r["sparsities"]:
        arms: dict[str, Any] = {}
        for mode in MODES:
            losses = []
            for seed in r["seeds"]:
                key = (seed, s, mode)
                if key not in cache:
                    d = dense(seed)
                    rewind = d.at_k if mode == "weight_rewind" else None
                    cache[key] = _retrain(d, cfg, data, s, rewind, mode, seed, progress)
                losses.append(cache[key]["val_loss"])
            arms[mode] = seed_spread(losses)
        verdicts = {
            "lr_rewind_vs_weight_rewind": compare_arms(arms["lr_rewind"],
                                                        arms["weight_rewind"]),
            "weight_rewind_vs_finetune": compare_arms(arms["weight_rewind"],
                                                       arms["finetune"]),
            "lr_rewind_vs_finetune": compare_arms(arms["lr_rewind"], arms["finetune"]),
        }  # fmt: skip
        holds = (
            verdicts["lr_rewind_vs_weight_rewind"] in ("beats", "matches")
            and verdicts["weight_rewind_vs_finetune"] == "beats"
            and verdicts["lr_rewind_vs_finetune"] == "beats"
        )
        paired = {
            f"{a} - {b}": _paired(arms[a]["values"], arms[b]["values"])
            for a, b in (("lr_rewind", "weight_rewind"), ("weight_rewind", "finetune"),
                         ("lr_rewind", "finetune"))
        }  # fmt: skip
        out["sparsities"][str(s)] = {
            "modes": arms, "verdicts": verdicts, "claim_holds": holds, "paired": paired,
        }  # fmt: skip
    return out


def _run_lottery(cfg, data, dense, cache, progress) -> dict[str, Any]:
    r = cfg["rewinding"]
    out: dict[str, Any] = {
        "task": dict(r, retrain_steps=r["steps"] - r["k"],
                     arms={"ticket_k": "trained mask, weights at step k (the run of "
                                       "weight rewinding)",
                           "ticket_init": "trained mask, weights at initialisation",
                           "random_reinit": "trained mask, a fresh random "
                                            "initialisation (seed + 100)"}),
        "rule": RULE, "sparsities": {},
    }  # fmt: skip
    out["task"]["sparsities"] = list(cfg["lottery"]["sparsities"])
    for s in cfg["lottery"]["sparsities"]:
        arms: dict[str, Any] = {}
        for arm in TICKETS:
            losses = []
            for seed in r["seeds"]:
                key = (seed, s, "weight_rewind" if arm == "ticket_k" else arm)
                if key not in cache:
                    d = dense(seed)
                    rewind = {
                        "ticket_k": d.at_k,
                        "ticket_init": d.init,
                        "random_reinit": S.snapshot(LM(d.spec, seed=seed + 100)),
                    }[arm]
                    cache[key] = _retrain(
                        d, cfg, data, s, rewind, "weight_rewind", seed, progress
                    )
                losses.append(cache[key]["val_loss"])
            arms[arm] = seed_spread(losses)
        verdicts = {
            "ticket_k_vs_random_reinit": compare_arms(arms["ticket_k"],
                                                       arms["random_reinit"]),
            "ticket_init_vs_random_reinit": compare_arms(arms["ticket_init"],
                                                          arms["random_reinit"]),
        }  # fmt: skip
        paired = {
            f"{a} - random_reinit": _paired(arms[a]["values"],
                                            arms["random_reinit"]["values"])
            for a in ("ticket_k", "ticket_init")
        }  # fmt: skip
        out["sparsities"][str(s)] = {"arms": arms, "verdicts": verdicts,
                                     "paired": paired}  # fmt: skip
    return out


def run_experiments(
    experiments: tuple[str, ...] | list[str] = EXPERIMENTS,
    *,
    quick: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``experiments`` (names from :data:`EXPERIMENTS`) with :data:`SETTINGS`
    ``[quick]`` on one torch thread; return the results (the schema
    :func:`check_results` checks)."""
    quick = check_bool("quick", quick)
    if isinstance(experiments, str) or not isinstance(experiments, (list, tuple)):
        raise TypeError(
            f"experiments must be a list of names from {list(EXPERIMENTS)}, "
            f"got {describe(experiments)}"
        )
    if not experiments:
        raise ValueError("experiments must name at least one experiment, got []")
    for name in experiments:
        check_choice("experiments", name, EXPERIMENTS)
    cfg = SETTINGS[quick]
    results: dict[str, Any] = {
        "settings": json.loads(json.dumps(cfg)),
        "quick": quick,
        "rule": RULE,
        **run_record(),
        "experiments": {},
    }
    data = token_splits()
    t0 = time.perf_counter()
    denses: dict[int, _Dense] = {}
    cache: dict[tuple, dict[str, Any]] = {}

    def dense(seed: int) -> _Dense:
        if seed not in denses:
            denses[seed] = _Dense(cfg, data, seed, progress)
        return denses[seed]

    with limit_threads(cfg["threads"], blas=False) as applied:
        results["threads"] = applied.torch
        for name in EXPERIMENTS:  # in a fixed order, whatever the order given
            if name not in experiments:
                continue
            t1 = time.perf_counter()
            if name == "gmp":
                res = _run_gmp(cfg, data, progress)
            elif name == "rewinding":
                res = _run_rewinding(cfg, data, dense, cache, progress)
            else:
                res = _run_lottery(cfg, data, dense, cache, progress)
            res["wall_s"] = time.perf_counter() - t1
            results["experiments"][name] = res
    results["total_s"] = time.perf_counter() - t0
    results["load_average_after"] = load_average()
    return results


# --------------------------------------------------------------------------------------
# the shipped results
# --------------------------------------------------------------------------------------


def _finite_loss(where: str, v: Any) -> None:
    if not (isinstance(v, float) and math.isfinite(v) and v > 0):
        raise ValueError(f"{where} must be a finite positive float, got {v!r}")


def _check_gmp(exp: Any, cfg: Mapping[str, Any]) -> None:
    g = cfg["gmp"]
    models = exp.get("models") if isinstance(exp, dict) else None
    want = ["large_dense"] + [
        f"{kind}_{s}"
        for s in g["sparsities"]
        for kind in ("large_sparse", "small_dense")
    ]
    if not isinstance(models, dict) or sorted(models) != sorted(want):
        raise ValueError(
            f"results['experiments']['gmp']['models'] must hold {sorted(want)}"
        )
    seeds = sorted(str(s) for s in g["seeds"])
    for name, runs in models.items():
        if not isinstance(runs, dict) or sorted(runs) != seeds:
            raise ValueError(f"gmp model {name!r} must hold one run per seed {seeds}")
        for seed, r in runs.items():
            where = f"gmp['models'][{name!r}][{seed!r}]"
            _finite_loss(f"{where}['val_loss']", r.get("val_loss"))
            nz = r.get("nonzeros")
            if not (isinstance(nz, dict) and all(
                isinstance(nz.get(k), int) and nz[k] > 0 for k in ("total", "prunable")
            )):  # fmt: skip
                raise ValueError(
                    f"{where}['nonzeros'] must hold positive ints total, prunable"
                )
            n_params = r.get("n_params")
            if not (isinstance(n_params, int) and nz["total"] <= n_params):
                raise ValueError(f"{where}: nonzeros exceed n_params")
            if name.startswith("large_sparse"):
                curve = r.get("sparsity_curve")
                if not (isinstance(curve, list) and curve and all(
                    isinstance(p, list) and len(p) == 2 and 0 <= p[1] < 1 for p in curve
                )):  # fmt: skip
                    raise ValueError(
                        f"{where}['sparsity_curve'] must be [step, sparsity] pairs"
                    )
    pairs = exp.get("pairs")
    if not isinstance(pairs, list) or len(pairs) != len(g["sparsities"]):
        raise ValueError("gmp['pairs'] must hold one pair per sparsity")


def _check_arms(name: str, exp: Any, cfg: Mapping[str, Any], arms: tuple) -> None:
    r = cfg["rewinding"]
    if not isinstance(exp, dict) or exp.get("rule") != RULE:
        raise ValueError(f"results['experiments'][{name!r}] must store the rule RULE")
    sp = exp.get("sparsities")
    own = r if name == "rewinding" else cfg["lottery"]
    want = sorted(str(s) for s in own["sparsities"])
    if not isinstance(sp, dict) or sorted(sp) != want:
        raise ValueError(f"{name}['sparsities'] must hold {want}")
    key = "modes" if name == "rewinding" else "arms"
    for s, entry in sp.items():
        got = entry.get(key) if isinstance(entry, dict) else None
        if not isinstance(got, dict) or sorted(got) != sorted(arms):
            raise ValueError(
                f"{name}['sparsities'][{s!r}][{key!r}] must hold {sorted(arms)}"
            )
        for arm in arms:
            check_seed_spread(f"{name}[{s!r}][{arm!r}]", got[arm], len(r["seeds"]))
        paired = entry.get("paired")
        if not isinstance(paired, dict) or not paired or not all(
            isinstance(p, dict) and len(p.get("values", ())) == len(r["seeds"])
            for p in paired.values()
        ):
            raise ValueError(
                f"{name}[{s!r}]['paired'] must hold seed-by-seed differences"
            )
        verdicts = entry.get("verdicts")
        if not isinstance(verdicts, dict) or not verdicts or not all(
            v in ("beats", "matches", "worse") for v in verdicts.values()
        ):
            raise ValueError(f"{name}[{s!r}]['verdicts'] must be beats/matches/worse")


def check_results(results: Any) -> dict[str, Any]:
    """Check the schema of :func:`run_experiments`' results; return them unchanged.

    Raises ``ValueError`` naming the first missing or malformed entry.
    """
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {describe(results)}")
    required = ("settings", "device", "date", "experiments", "command", "torch", "rule")
    for key in required:
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
        if name == "gmp":
            _check_gmp(exp, cfg)
        elif name == "rewinding":
            _check_arms(name, exp, cfg, MODES)
        else:
            _check_arms(name, exp, cfg, TICKETS)
    return results


#: the module that ``python -m`` runs (``__name__`` is "__main__" then)
_MODULE = "effx_lab.prune.experiments"


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The results shipped with the course (:data:`RESULTS_PATH`), or those at ``path``,
    checked by :func:`check_results`."""
    return load_checked_results(path, RESULTS_PATH, _MODULE, check_results)


def main(argv: list[str] | None = None) -> int:
    """``python -m effx_lab.prune.experiments [--quick] [--only NAME ...] --out F``."""
    return experiments_main(_MODULE, EXPERIMENTS, run_experiments, check_results, argv)


if __name__ == "__main__":
    raise SystemExit(main())
