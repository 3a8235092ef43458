"""Tests of effx_lab.moe.experiments: the training script behind notebooks 05.1 and 05.2
(run here in --quick mode), its rules, its schema check, the tiny MoE it saves, and the
shipped results and model."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from effx_lab.bench import seed_spread
from effx_lab.models.lm import LM
from effx_lab.moe import experiments as X


# What `python -m effx_lab.moe.experiments --quick` measured on the course's machine
# (Intel Xeon 2.8 GHz, 1 torch thread, float32): the eval loss of each arm for seeds 0
# and 1 (two runs gave the same bits). Another machine or BLAS sums in another order
# (about 1e-6 relative over 6 AdamW steps), and a token at a near-tie of two router
# logits may route elsewhere, which moves a loss about as little. The tolerance, 2e-4
# relative (about 1e-3 nats), is far above that and below the gaps between the quality
# arms (top-1 and top-2 differ by 2e-3 relative, the two dense widths by 1e-3 to 2e-3),
# so a change in what the script or the MoE layers compute shows; vanilla routing and
# BPR are closer than that after 6 steps (what tells them apart, the order in which
# buffers fill, is tested with the routers).
QUICK_REFERENCE = {
    "vanilla_c0.25": [5.387240171432495, 5.382363319396973],
    "bpr_max_c0.25": [5.386606216430664, 5.381258249282837],
    "vanilla_c1": [5.3832175731658936, 5.378231048583984],
    "bpr_max_c1": [5.3824663162231445, 5.378020763397217],
    "dense_f": [5.372904539108276, 5.364573955535889],
    "dense_2f": [5.367056369781494, 5.3534581661224365],
    "top1": [5.3814404010772705, 5.377355575561523],
    "top2": [5.370458126068115, 5.361539363861084],
}
REL_TOL = 2e-4


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moe_exp")
    out, model = folder / "quick.json", folder / "tiny.npz"
    assert X.main(["--quick", "--out", str(out), "--model-out", str(model)]) == 0
    return out, model


def test_quick_run_writes_checked_results(quick):
    out, model = quick
    results = X.load_results(out)
    assert results["quick"] is True and results["threads"] == 1
    cmd = f"python -m effx_lab.moe.experiments --quick --out {out} --model-out {model}"
    assert results["command"] == cmd
    cfg = X.SETTINGS[True]
    exps = results["experiments"]
    assert list(exps) == list(X.EXPERIMENTS)
    cap = exps["capacity"]["arms"]
    assert list(cap) == [
        f"{p}_c{c:g}" for c in cfg["capacities"] for p in cfg["policies"]
    ]
    qual = exps["quality"]["arms"]
    assert list(qual) == list(X.QUALITY_ARMS)
    for arm, want in QUICK_REFERENCE.items():
        entry = cap.get(arm) or qual[arm]
        got = [entry["runs"][s]["val_loss"] for s in ("0", "1")]
        for g, w in zip(got, want):
            assert math.isclose(g, w, rel_tol=REL_TOL), (arm, got, want)
    d, f, e = cfg["d_model"], cfg["d_ff"], cfg["n_experts"]
    # FLOPs per token: dense 4 d f; top-k k * 4 d f + the router 2 d E
    assert qual["dense_f"]["runs"]["0"]["ffn_flops_per_token"] == 4 * d * f
    assert qual["dense_2f"]["runs"]["0"]["ffn_flops_per_token"] == 8 * d * f
    assert qual["top1"]["runs"]["0"]["ffn_flops_per_token"] == 4 * d * f + 2 * d * e
    assert qual["top2"]["runs"]["0"]["ffn_flops_per_token"] == 8 * d * f + 2 * d * e
    # top-1 and top-2 have the same experts: equal total parameters
    assert qual["top1"]["runs"]["0"]["params"] == qual["top2"]["runs"]["0"]["params"]
    for arms in (cap, qual):
        for name, entry in arms.items():
            for run in entry["runs"].values():
                assert math.isfinite(run["val_loss"]) and run["val_loss"] > 0
                if not name.startswith("dense"):
                    assert len(run["dropped_curve"]) == len(run["loss_curve"])
                    counts = [sum(x["counts"]) for x in run["eval_routing"]["layers"]]
                    assert all(c == counts[0] for c in counts)  # every layer: T k
    # at C = 0.25 a top-1 layer keeps at most a quarter of the tokens, so at least
    # 3/4 - 1/T of them are dropped; at C = 1 the capacity is T / E per expert
    low = cap["vanilla_c0.25"]["runs"]["0"]["eval_routing"]
    assert low["dropped"] >= 0.7
    # the sweep: one row per C and policy, the dropped share never rises with C
    for sweep in exps["quality"]["sweep"].values():
        for policy in cfg["policies"]:
            rows = sweep[policy]
            assert [r["capacity_factor"] for r in rows] == cfg["sweep"]
            drops = [r["dropped"] for r in rows]
            assert all(b <= a for a, b in zip(drops, drops[1:])), drops
    assert results["tiny_moe"]["file"] == model.name


def test_quick_tiny_moe_loads_and_reproduces_its_loss(quick):
    out, path = quick
    results = X.load_results(out)
    model = X.load_tiny_moe(path)
    assert isinstance(model, LM) and not model.training
    assert model.spec.ffn == "moe" and model.spec.ffn_options["k"] == 1
    assert model.meta["seed"] == 0
    assert model.meta["val_loss"] == results["tiny_moe"]["val_loss"]
    from effx_lab.data.pools import token_splits
    from effx_lab.models.training import evaluate

    e = model.meta["eval"]
    got = evaluate(model, token_splits()[1], seq_len=e["seq_len"],
                   batch_size=e["batch_size"], max_batches=e["batches"],
                   seed=e["seed"])  # fmt: skip
    # the same float32 weights and windows: equal up to float32 summation order
    assert got == pytest.approx(model.meta["val_loss"], abs=1e-4)
    # float16 storage moves the loss of the trained float32 model only a little
    assert abs(got - model.meta["trained_val_loss"]) < 0.05
    for p in model.parameters():
        assert p.dtype == torch.float32


def test_run_experiments_names_bad_input(tmp_path):
    with pytest.raises(ValueError, match="experiments must be one of"):
        X.run_experiments(["nope"], quick=True)
    with pytest.raises(TypeError, match="experiments must be a list"):
        X.run_experiments("quality", quick=True)
    with pytest.raises(ValueError, match="at least one"):
        X.run_experiments([], quick=True)
    with pytest.raises(TypeError, match="quick must be a bool"):
        X.run_experiments(["quality"], quick=1)
    with pytest.raises(ValueError, match="model_out needs the 'quality'"):
        X.run_experiments(["capacity"], quick=True, model_out=tmp_path / "m.npz")
    with pytest.raises(TypeError, match="model_out must be a path"):
        X.run_experiments(["quality"], quick=True, model_out=3)


def test_the_rules():
    a = seed_spread([1.0, 1.2, 1.1])
    close, far = seed_spread([1.15, 1.25]), seed_spread([1.5, 1.6])
    # (1) BPR trained: beats at every C <= 0.5 / lower at every C / otherwise
    assert X.bpr_verdict([(a, far), (a, far)]) == "holds"
    assert X.bpr_verdict([(a, far), (a, close)]) == "holds weakly"
    assert X.bpr_verdict([(a, far), (far, a)]) == "does not hold"
    tiny = seed_spread([1.0999, 1.2999, 1.1999])  # lower by 1e-4 < MIN_DIFFERENCE
    assert X.bpr_verdict([(tiny, a)]) == "does not hold"
    # (1) at inference: every paired difference below -MIN_DIFFERENCE
    assert X.inference_bpr_verdict([[-0.1, -0.01], [-0.5, -0.2]]) == "holds"
    assert X.inference_bpr_verdict([[-0.1, -0.001]]) == "does not hold"
    assert X.inference_bpr_verdict([[-0.1, 0.3]]) == "does not hold"
    # (2) top-2 against top-1
    assert X.quality_verdict(a, far) == "holds"
    assert X.quality_verdict(a, close) == "holds weakly"
    assert X.quality_verdict(close, a) == "does not hold"
    assert X.quality_verdict(tiny, a) == "does not hold"
    # (3) capacity: monotone and wide
    assert X.capacity_verdict([0.7, 0.3, 0.0], [0.0, 0.1, 0.4]) == "holds"
    assert X.capacity_verdict([0.7, 0.3, 0.0], [0.0, 0.1, 0.02]) == "does not hold"
    assert X.capacity_verdict([0.7, 0.8, 0.0], [0.0, 0.1, 0.4]) == "does not hold"
    assert X.capacity_verdict([0.04, 0.0], [0.0, 0.4]) == "does not hold"  # narrow
    with pytest.raises(TypeError, match="pairs must be a non-empty list"):
        X.bpr_verdict([])
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(bpr, vanilla\)"):
        X.bpr_verdict([a])
    with pytest.raises(TypeError, match="differences must be"):
        X.inference_bpr_verdict([[]])
    with pytest.raises(ValueError, match="one share per C"):
        X.capacity_verdict([0.5, 0.1], [0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="dropped must be a list"):
        X.capacity_verdict(0.5, [0.1, 0.2])


def test_ffn_flops_per_token():
    assert X.ffn_flops_per_token(64, 256) == 4 * 64 * 256
    top2 = X.ffn_flops_per_token(64, 64, k=2, n_experts=8)
    assert top2 == 2 * 4 * 64 * 64 + 2 * 64 * 8
    with pytest.raises(ValueError, match="give both k and n_experts"):
        X.ffn_flops_per_token(64, 64, k=1)
    with pytest.raises(ValueError, match="k must be an int in \\[1, 8\\]"):
        X.ffn_flops_per_token(64, 64, k=9, n_experts=8)
    with pytest.raises(TypeError, match="d_ff must be an int"):
        X.ffn_flops_per_token(64, 6.5)


def test_check_results_names_what_is_wrong(quick):
    good = json.loads(quick[0].read_text())
    X.check_results(copy.deepcopy(good))

    def broken(edit):
        bad = copy.deepcopy(good)
        edit(bad)
        return bad

    cap = lambda r: r["experiments"]["capacity"]  # noqa: E731
    qual = lambda r: r["experiments"]["quality"]  # noqa: E731
    cases = [
        (lambda r: r.pop("command"), "lack the entry 'command'"),
        (lambda r: r.update(rule="other"), "is not this module's RULE"),
        (lambda r: r["experiments"].update(nope={}), "experiment must be one of"),
        (lambda r: cap(r)["arms"].pop("bpr_max_c1"), "must hold the arms"),
        (lambda r: cap(r)["arms"]["vanilla_c1"]["runs"].pop("1"), "one run per seed"),
        (lambda r: cap(r)["arms"]["vanilla_c1"]["runs"]["0"].update(
            val_loss=float("nan")), "val_loss'\\] must be a finite positive"),
        (lambda r: cap(r)["arms"]["vanilla_c1"]["runs"]["0"]["eval_routing"].update(
            dropped=1.5), "must be a float in \\[0, 1\\]"),
        (lambda r: qual(r)["arms"]["top1"]["val_loss"].update(mean=1.0),
         "is not the mean"),
        (lambda r: qual(r)["arms"]["top1"]["val_loss"]["values"].reverse(),
         "not the summary of its runs"),
        (lambda r: qual(r)["sweep"].pop("0"), "one sweep per seed"),
        (lambda r: qual(r)["sweep"]["0"]["vanilla"].pop(), "one row per C"),
        (lambda r: qual(r)["sweep"]["0"]["bpr_max"][0].update(padded=-0.1),
         "must be a float in \\[0, 1\\]"),
        (lambda r: r["verdicts"]["quality"].update(verdict="maybe"),
         "not the rules' verdicts"),
        (lambda r: r["verdicts"]["quality"].update(difference=0.5),
         "not the rules' verdicts"),
    ]  # fmt: skip
    for edit, match in cases:
        with pytest.raises(ValueError, match=match):
            X.check_results(broken(edit))
    with pytest.raises(TypeError, match="results must be a dict"):
        X.check_results([])


def test_only_runs_the_experiments_named(tmp_path):
    out = tmp_path / "capacity.json"
    assert X.main(["--quick", "--only", "capacity", "--out", str(out)]) == 0
    results = X.load_results(out)
    assert list(results["experiments"]) == ["capacity"]
    assert set(results["verdicts"]) == {"bpr_trained"}
    assert "tiny_moe" not in results


def test_loaders_name_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m effx_lab.moe.experiments"):
        X.load_results(tmp_path / "none.json")
    with pytest.raises(TypeError, match="path must be"):
        X.load_results(3)
    with pytest.raises(FileNotFoundError, match="--model-out"):
        X.load_tiny_moe(tmp_path / "none.npz")
    with pytest.raises(TypeError, match="path must be"):
        X.load_tiny_moe(3)
    bad = tmp_path / "bad.npz"
    np.savez(bad, w=np.zeros(3))
    with pytest.raises(ValueError, match="not a tiny MoE checkpoint"):
        X.load_tiny_moe(bad)
    with pytest.raises(TypeError, match="model must be an effx_lab.models.lm.LM"):
        X.save_tiny_moe(torch.nn.Linear(2, 2), tmp_path / "x.npz")


def test_a_checkpoint_that_does_not_fit_its_spec_is_named(quick, tmp_path):
    with np.load(quick[1], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    key = next(k for k in arrays if k.endswith("w_gate"))
    shrunk = dict(arrays, **{key: arrays[key][:, :1]})
    np.savez(tmp_path / "shape.npz", **shrunk)
    with pytest.raises(ValueError, match=f"{key}' has shape"):
        X.load_tiny_moe(tmp_path / "shape.npz")
    missing = {k: v for k, v in arrays.items() if k != key}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match="do not fit its spec: missing"):
        X.load_tiny_moe(tmp_path / "missing.npz")


# -------------------------------------------------------------------- shipped results
def test_the_shipped_results_are_a_full_checked_run():
    results = X.load_results()
    assert results["quick"] is False
    assert results["command"].startswith("python -m effx_lab.moe.experiments")
    assert "--quick" not in results["command"] and "--only" not in results["command"]
    assert results["settings"] == json.loads(json.dumps(X.SETTINGS[False]))
    assert list(results["experiments"]) == list(X.EXPERIMENTS)
    for exp in results["experiments"].values():
        for entry in exp["arms"].values():
            assert len(entry["val_loss"]["values"]) >= 3  # three seeds at least
    assert set(results["verdicts"]) == {
        "bpr_trained", "bpr_inference", "quality", "capacity_sweep"
    }
    for v in results["verdicts"].values():
        assert v["verdict"] in ("holds", "holds weakly", "does not hold")
    assert results["total_s"] > 0
    summary = X.sweep_summary(results)
    assert summary["capacity_factors"] == X.SETTINGS[False]["sweep"]
    assert summary["seeds"] == len(X.SETTINGS[False]["seeds"])
    # the capacity verdict was judged on these means
    sweep = results["verdicts"]["capacity_sweep"]
    assert summary["vanilla"]["dropped"] == pytest.approx(sweep["dropped"])
    assert summary["vanilla"]["padded"] == pytest.approx(sweep["padded"])
    # at C = 2 a top-1 layer on 1024 tokens drops (almost) nothing
    assert summary["vanilla"]["dropped"][-1] < 0.02
    with pytest.raises(ValueError, match="the 'quality' experiment"):
        X.sweep_summary({"experiments": {}})


def test_the_shipped_tiny_moe_is_small_and_reproduces_its_loss():
    assert X.TINY_MOE_PATH.stat().st_size < 600_000
    model = X.load_tiny_moe()
    results = X.load_results()
    assert model.meta["val_loss"] == results["tiny_moe"]["val_loss"]
    assert model.meta["settings"] == results["settings"]
    from effx_lab.data.pools import token_splits
    from effx_lab.models.training import evaluate

    e = model.meta["eval"]
    got = evaluate(model, token_splits()[1], seq_len=e["seq_len"],
                   batch_size=e["batch_size"], max_batches=e["batches"],
                   seed=e["seed"])  # fmt: skip
    # another CPU or BLAS sums in another order (float32, about 1e-6 relative); a
    # token at a tie between two experts could route elsewhere: 0.01 nats is far
    # above both and far below what a different model scores
    assert abs(got - model.meta["val_loss"]) < 0.01
