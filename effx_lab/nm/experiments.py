"""Chapter 4's training experiment (notebook 04.3), run by a script whose results ship
with the course: 2:4 sparsity trained from scratch (STE, SR-STE) against dense training,
one-shot 2:4 pruning with retraining, and Top-KAST at the same density.

``python -m effx_lab.nm.experiments --out results.json`` (``--quick``: a run of a few
seconds; ``--only ARM ...``: some arms) trains small language models
(:class:`effx_lab.models.lm.LM`, softmax attention and a GELU FFN, the size of chapter
3's rewinding experiment) on the course's offline corpus
(:func:`effx_lab.data.pools.token_splits`) with one torch thread and writes what they
measured, with the device, the date, the command and the settings, to a JSON file.
Notebook 04.3 reads the shipped copy (:data:`RESULTS_PATH`, :func:`load_results`).

The arms (:data:`ARMS`), each for the same total number of optimizer steps ``T`` on the
same batches for a given seed (the seed fixes the initialisation and the batches), all
scored by :func:`effx_lab.models.training.evaluate` on the same fixed windows of the
validation split:

* ``dense``: no sparsity (the ceiling);
* ``oneshot``: dense for ``T/2`` steps, 2:4 masks of the trained weights (one shot,
  :func:`effx_lab.sparse.torch_ops.nm_mask`, attached with
  :func:`effx_lab.sparse.masks.apply_masks`), then ``T/2`` steps of retraining with the
  masks fixed (NVIDIA's train, prune, retrain recipe, Mishra et al. 2021, at equal total
  steps; each half runs its own learning-rate schedule);
* ``ste``: 2:4 from scratch with the straight-through estimator
  (:class:`~effx_lab.nm.sparse_training.NMSparseTraining`, ``method="ste"``);
* ``srste``: SR-STE with the paper's ``λ_W = 2e-4``;
* ``srste_large``: SR-STE with ``λ_W = 2e-2``; under AdamW a pull ``λ_W w`` counts
  against the gradient's own size (per entry about ``1e-3`` to ``1e-2`` here), so the
  paper's value, set for SGD at learning rate 0.1, barely acts: this value was chosen
  for that reason before any run;
* ``topkast``: Top-KAST at 50 % forward density (the density of 2:4) and 75 % backward
  density, unstructured (:class:`~effx_lab.nm.sparse_training.TopKAST`).

Every from-scratch arm records its mask flips per step (the fraction of the sparsified
entries whose kept/pruned state changed). The decision rule (:data:`RULE`) is fixed
here, before any run, and stored with the results.

One torch thread (:func:`effx_lab.bench.limit_threads`), as in chapter 3's experiments:
on the shared 2-core machine it is faster than two and gives the same numbers on every
run. The scale is small (``d_model`` 48, two layers, 160 steps of 8 windows of 64
tokens): the results say which way small models lean, not what the papers' networks
reach; either outcome is reported as it comes.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effx_lab._validate import check_bool, check_choice, describe
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
from effx_lab.sparse import masks as SM
from effx_lab.sparse import torch_ops as ST

from . import sparse_training as SPT

__all__ = [
    "ARMS",
    "FROM_SCRATCH",
    "MIN_DIFFERENCE",
    "RESULTS_PATH",
    "RULE",
    "SETTINGS",
    "check_results",
    "load_results",
    "main",
    "run_experiments",
]

#: the arms :func:`run_experiments` knows, in the order it runs them
ARMS = ("dense", "oneshot", "ste", "srste", "srste_large", "topkast")
#: the arms trained sparse from scratch (they record mask flips)
FROM_SCRATCH = ("ste", "srste", "srste_large", "topkast")
#: the results the course ships (made by ``python -m effx_lab.nm.experiments``)
RESULTS_PATH = Path(__file__).with_name("data") / "experiments_04.json"

#: the smallest difference of mean eval losses (nats) the rule counts as one
MIN_DIFFERENCE = 0.002

#: the decision rule, fixed before any run and stored with the results
RULE = (
    "Eval losses of the seeds per arm; spread = max - min over the seeds. For arms a "
    "and b, tol = the larger of the two spreads: a 'beats' b when mean_a < mean_b - "
    "tol, 'matches' b when |mean_a - mean_b| <= tol, and is 'worse' otherwise. The "
    "claim 'SR-STE trains a 2:4 model closer to dense quality than plain STE' is "
    "judged on srste_large (lambda_W = 2e-2, chosen before any run) against ste: it "
    "holds when srste_large beats ste, holds weakly when its mean is lower by more "
    "than 0.002 (smaller differences count as none) but not beyond tol, and does not "
    "hold otherwise; srste (the paper's 2e-4) is judged the same way and reported "
    "beside it. Mask flips: the mean fraction of entries flipped per step "
    "over the last quarter of training; 'SR-STE flips less late in training' holds "
    "for an SR-STE arm when its late flip fraction is below STE's for every seed."
)

SETTINGS: dict[bool, dict[str, Any]] = {
    False: {
        "d_model": 48, "n_layers": 2, "n_heads": 4, "seq_len": 64, "batch_size": 8,
        "steps": 160, "lr": 3e-3, "warmup": 0.05, "min_ratio": 0.1,
        "weight_decay": 0.1, "threads": 1, "seeds": [0, 1, 2], "n": 2, "m": 4,
        "srste_decay": 2e-4, "srste_large_decay": 2e-2,
        "topkast": {"forward_density": 0.5, "backward_density": 0.75,
                    "penalty": 1e-4},
        "eval": {"batch_size": 16, "batches": 16, "seed": 1234},
        "curve_every": 8,
    },
    True: {
        "d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16, "batch_size": 4,
        "steps": 6, "lr": 3e-3, "warmup": 0.05, "min_ratio": 0.1,
        "weight_decay": 0.1, "threads": 1, "seeds": [0, 1], "n": 2, "m": 4,
        "srste_decay": 2e-4, "srste_large_decay": 2e-2,
        "topkast": {"forward_density": 0.5, "backward_density": 0.75,
                    "penalty": 1e-4},
        "eval": {"batch_size": 4, "batches": 2, "seed": 1234},
        "curve_every": 2,
    },
}  # fmt: skip


# --------------------------------------------------------------------------------------
# summaries and the rule
# --------------------------------------------------------------------------------------


def _claim_verdict(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """The claim's verdict for SR-STE arm ``a`` against STE ``b`` (see RULE)."""
    c = compare_arms(a, b)
    if c == "beats":
        return "holds"
    if c == "matches" and a["mean"] < b["mean"] - MIN_DIFFERENCE:
        return "holds weakly"
    return "does not hold"


def _late(curve: list[list[float]], steps: int) -> float:
    """Mean flip fraction over the last quarter of the steps."""
    start = steps - max(1, steps // 4)
    vals = [f for s, f in curve if s > start]
    return float(statistics.fmean(vals)) if vals else 0.0


# --------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------


def _spec(cfg: Mapping[str, Any]) -> LMSpec:
    return LMSpec(
        mixer="softmax", ffn="gelu", vocab_size=256, d_model=cfg["d_model"],
        n_layers=cfg["n_layers"], max_len=cfg["seq_len"],
        mixer_options={"n_heads": cfg["n_heads"]},
    )  # fmt: skip


def _train(model, tr, cfg, steps, seed, hooks, progress, desc):
    return train(
        model, tr, steps=steps, seed=seed, after_step=hooks,
        batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], lr=cfg["lr"],
        warmup=cfg["warmup"] * steps,
        min_ratio=cfg["min_ratio"], weight_decay=cfg["weight_decay"],
        progress=progress, desc=desc,
    )  # fmt: skip


def _eval(model: torch.nn.Module, val: np.ndarray, cfg: Mapping[str, Any]) -> float:
    e = cfg["eval"]
    return float(
        evaluate(
            model, val, seq_len=cfg["seq_len"], batch_size=e["batch_size"],
            max_batches=e["batches"], seed=e["seed"],
        )  # fmt: skip
    )


def _loss_curve(losses: list[float], every: int, offset: int = 0) -> list[list[float]]:
    """Training losses averaged over windows of ``every`` steps: ``[[step, loss]]``."""
    out = []
    for i in range(0, len(losses), every):
        chunk = losses[i : i + every]
        out.append([offset + i + len(chunk), float(statistics.fmean(chunk))])
    return out


def _nonzero_fraction(model: torch.nn.Module) -> float:
    """Fraction of non-zero entries over the sparsified weights of ``model``."""
    targets = SPT.sparse_targets(model)
    total = sum(mod._parameters[k].numel() for mod, k, _ in targets.values())
    nz = sum(int((mod._parameters[k] != 0).sum()) for mod, k, _ in targets.values())
    return nz / total


def _is_nm(model: torch.nn.Module, n: int, m: int) -> bool:
    """Every group of ``m`` along the input axis holds at most ``n`` non-zeros."""
    for mod, key, axis in SPT.sparse_targets(model).values():
        w = mod._parameters[key].detach()
        w = w.t() if axis == 0 else w
        nz = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        if bool((nz > n).any()):
            return False
    return True


def _run_arm(arm: str, cfg, data, seed: int, progress) -> dict[str, Any]:
    tr, val = data
    steps = cfg["steps"]
    model = LM(_spec(cfg), seed=seed)
    n, m = cfg["n"], cfg["m"]
    t0 = time.perf_counter()
    rec: dict[str, Any] = {}
    desc = f"{arm} seed {seed}"
    if arm == "dense":
        hist = _train(model, tr, cfg, steps, seed, [], progress, desc)
        curve = _loss_curve(hist.losses, cfg["curve_every"])
        step_s = hist.time_s / hist.steps
    elif arm == "oneshot":
        half = steps // 2
        h1 = _train(model, tr, cfg, half, seed, [], progress, desc + " (dense)")
        masks = {
            name: ST.nm_mask(mod._parameters[key].detach(), n, m, axis=axis)
            for name, (mod, key, axis) in SPT.sparse_targets(model).items()
        }
        mask_set = SM.apply_masks(model, masks)
        rec["val_loss_pruned"] = _eval(model, val, cfg)  # before retraining
        h2 = _train(model, tr, cfg, steps - half, seed + 1000, [mask_set], progress,
                    desc + " (retrain)")  # fmt: skip
        curve = _loss_curve(h1.losses, cfg["curve_every"]) + _loss_curve(
            h2.losses, cfg["curve_every"], offset=half
        )
        step_s = (h1.time_s + h2.time_s) / (h1.steps + h2.steps)
    else:
        if arm == "topkast":
            k = cfg["topkast"]
            hook: Any = SPT.TopKAST(
                model, k["forward_density"], k["backward_density"], penalty=k["penalty"]
            )
        else:
            decay = {"ste": 0.0, "srste": cfg["srste_decay"],
                     "srste_large": cfg["srste_large_decay"]}[arm]  # fmt: skip
            method = "ste" if arm == "ste" else "srste"
            hook = SPT.NMSparseTraining(model, n, m, method=method, decay=decay)
        hist = _train(model, tr, cfg, steps, seed, [hook], progress, desc)
        curve = _loss_curve(hist.losses, cfg["curve_every"])
        step_s = hist.time_s / hist.steps
        flips = hook.flip_curve()
        rec["val_loss_sparse_forward"] = _eval(model, val, cfg)  # before finalize
        hook.finalize()
        rec["flip_curve"] = [[int(s), float(f)] for s, f in flips]
        rec["late_flips"] = _late(flips, steps)
    rec.update(
        val_loss=_eval(model, val, cfg),
        density=_nonzero_fraction(model),
        is_nm=_is_nm(model, n, m),
        loss_curve=curve,
        step_s=step_s,
        wall_s=time.perf_counter() - t0,
    )
    rec["perplexity"] = math.exp(rec["val_loss"])
    return rec


def _check_arms(arms: Any) -> tuple[str, ...]:
    if isinstance(arms, str) or not isinstance(arms, (list, tuple)):
        raise TypeError(
            f"arms must be a list of names from {list(ARMS)}, got {describe(arms)}"
        )
    if not arms:
        raise ValueError("arms must name at least one arm, got []")
    for name in arms:
        check_choice("arms", name, ARMS)
    return tuple(a for a in ARMS if a in arms)  # the fixed order


def _verdicts(arms: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    s = {name: a["val_loss"] for name, a in arms.items()}
    for a, b in (("srste_large", "ste"), ("srste", "ste"), ("ste", "oneshot"),
                 ("srste_large", "oneshot"), ("topkast", "ste"), ("dense", "ste")):
        if a in s and b in s:
            out[f"{a}_vs_{b}"] = compare_arms(s[a], s[b])
    claims: dict[str, Any] = {}
    for arm in ("srste_large", "srste"):
        if arm in s and "ste" in s:
            entry = {
                "verdict": _claim_verdict(s[arm], s["ste"]),
                "difference": s[arm]["mean"] - s["ste"]["mean"],
                "tol": max(s[arm]["spread"], s["ste"]["spread"]),
                "paired": seed_spread(
                    [x - y for x, y in zip(s[arm]["values"], s["ste"]["values"])]
                ),
            }
            if "dense" in s:
                gap = s["ste"]["mean"] - s["dense"]["mean"]
                entry["ste_minus_dense"] = gap
                entry["arm_minus_dense"] = s[arm]["mean"] - s["dense"]["mean"]
            ste_late = arms["ste"]["late_flips"]["values"]
            arm_late = arms[arm]["late_flips"]["values"]
            entry["fewer_late_flips"] = all(x < y for x, y in zip(arm_late, ste_late))
            claims[arm] = entry
    out["claim"] = claims
    return out


def run_experiments(
    arms: tuple[str, ...] | list[str] = ARMS,
    *,
    quick: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``arms`` (names from :data:`ARMS`) for every seed of :data:`SETTINGS`
    ``[quick]`` on one torch thread; return the results (the schema
    :func:`check_results` checks)."""
    quick = check_bool("quick", quick)
    arms = _check_arms(arms)
    cfg = SETTINGS[quick]
    results: dict[str, Any] = {
        "settings": json.loads(json.dumps(cfg)),
        "quick": quick,
        "rule": RULE,
        **run_record(),
        "arms": {},
    }
    data = token_splits()
    t0 = time.perf_counter()
    with limit_threads(cfg["threads"], blas=False) as applied:
        results["threads"] = applied.torch
        for arm in arms:
            runs = {
                str(seed): _run_arm(arm, cfg, data, seed, progress)
                for seed in cfg["seeds"]
            }
            entry: dict[str, Any] = {
                "runs": runs,
                "val_loss": seed_spread([r["val_loss"] for r in runs.values()]),
            }
            if arm in FROM_SCRATCH:
                flips = [r["late_flips"] for r in runs.values()]
                entry["late_flips"] = seed_spread(flips)
            results["arms"][arm] = entry
    results["verdicts"] = _verdicts(results["arms"], cfg)
    results["total_s"] = time.perf_counter() - t0
    results["load_average_after"] = load_average()
    return results


# --------------------------------------------------------------------------------------
# the shipped results
# --------------------------------------------------------------------------------------


def _finite_loss(where: str, v: Any) -> None:
    if not (isinstance(v, float) and math.isfinite(v) and v > 0):
        raise ValueError(f"{where} must be a finite positive float, got {v!r}")


def check_results(results: Any) -> dict[str, Any]:
    """Check the schema of :func:`run_experiments`' results; return them unchanged.

    Raises ``ValueError`` naming the first missing or malformed entry.
    """
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {describe(results)}")
    for key in ("settings", "device", "date", "arms", "command", "torch", "rule",
                "verdicts", "total_s"):  # fmt: skip
        if key not in results:
            raise ValueError(f"results lack the entry {key!r}")
    if results["rule"] != RULE:
        raise ValueError(
            "results['rule'] is not this module's RULE (made by another version?)"
        )
    cfg = results["settings"]
    seeds = sorted(str(s) for s in cfg["seeds"])
    arms = results["arms"]
    if not isinstance(arms, dict) or not arms:
        raise ValueError(
            f"results['arms'] must be a non-empty dict, got {describe(arms)}"
        )
    for name, entry in arms.items():
        check_choice("arm", name, ARMS)
        where = f"arms[{name!r}]"
        runs = entry.get("runs") if isinstance(entry, dict) else None
        if not isinstance(runs, dict) or sorted(runs) != seeds:
            raise ValueError(f"{where}['runs'] must hold one run per seed {seeds}")
        for seed, r in runs.items():
            _finite_loss(f"{where}['runs'][{seed!r}]['val_loss']", r.get("val_loss"))
            if name not in ("dense", "topkast") and r.get("is_nm") is not True:
                raise ValueError(
                    f"{where}['runs'][{seed!r}]['is_nm'] must be True for a finished "
                    f"{name} model"
                )
            if name in FROM_SCRATCH:
                curve = r.get("flip_curve")
                if not (isinstance(curve, list) and len(curve) == cfg["steps"] and all(
                    isinstance(p, list) and len(p) == 2 and 0 <= p[1] <= 1
                    for p in curve
                )):  # fmt: skip
                    raise ValueError(
                        f"{where}['runs'][{seed!r}]['flip_curve'] must be one "
                        "[step, fraction] pair per step"
                    )
        check_seed_spread(f"{where}['val_loss']", entry.get("val_loss"), len(seeds))
        want = [runs[s]["val_loss"] for s in sorted(runs, key=int)]
        if entry["val_loss"]["values"] != want:
            raise ValueError(f"{where}['val_loss'] is not the summary of its runs")
        if name in FROM_SCRATCH:
            check_seed_spread(
                f"{where}['late_flips']", entry.get("late_flips"), len(seeds),
                positive=False,
            )
    verdicts = results["verdicts"]
    if not isinstance(verdicts, dict) or "claim" not in verdicts:
        raise ValueError("results['verdicts'] must hold the comparisons and 'claim'")
    for key, v in verdicts.items():
        if key != "claim" and v not in ("beats", "matches", "worse"):
            raise ValueError(
                f"verdicts[{key!r}] must be beats/matches/worse, got {v!r}"
            )
    for arm, c in verdicts["claim"].items():
        if c.get("verdict") not in ("holds", "holds weakly", "does not hold"):
            raise ValueError(f"verdicts['claim'][{arm!r}]['verdict'] is not a verdict")
        if c["verdict"] != _claim_verdict(
            arms[arm]["val_loss"], arms["ste"]["val_loss"]
        ):
            raise ValueError(
                f"verdicts['claim'][{arm!r}]['verdict'] is not the rule's verdict on "
                "the stored losses"
            )
    return results


#: the module that ``python -m`` runs (``__name__`` is "__main__" then)
_MODULE = "effx_lab.nm.experiments"


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The results shipped with the course (:data:`RESULTS_PATH`), or those at ``path``,
    checked by :func:`check_results`."""
    return load_checked_results(path, RESULTS_PATH, _MODULE, check_results)


def main(argv: list[str] | None = None) -> int:
    """``python -m effx_lab.nm.experiments [--quick] [--only ARM ...] --out F``."""
    return experiments_main(_MODULE, ARMS, run_experiments, check_results, argv)


if __name__ == "__main__":
    raise SystemExit(main())
