"""Tests of effx_lab.flash.experiments (notebook 07.4's training script, its sublayers
and the shipped results) and of its checkers, effx_lab.flash.exercises.length."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from effx_lab.check import Mistake
from effx_lab.data import mqar
from effx_lab.flash.exercises import length as E
from effx_lab.flash import experiments as X
from effx_lab.flash import torch_ops as FT
from effx_lab.flash.params import init_gau_params, to_torch
from effx_lab.models import lm


def _gau_params(d=16, s=8, seed=0, std=0.3):
    p = init_gau_params(d, 2, s, 7, seed=seed, std=std)
    p["beta"] = np.random.default_rng(seed + 1).normal(0, 0.3, p["beta"].shape)
    p["rel_bias"] = np.random.default_rng(seed + 2).normal(0, 0.3, p["rel_bias"].shape)
    return to_torch(p, dtype=torch.float64)


# ---------------------------------------------------------------------------- gau_heads
@pytest.mark.parametrize("causal", [True, False])
def test_gau_heads_with_one_head_is_gau(causal):
    p = _gau_params()
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(X.gau_heads(x, p, 1, causal), FT.gau(x, p, causal), rtol=0, atol=0)


@pytest.mark.parametrize("heads", [2, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_gau_heads_equals_a_loop_over_heads(heads, causal):
    """Head j: relu2_attention of its slices of Q, K (shared bias) times its group of V."""
    p = _gau_params(seed=3)
    x = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    n, e, s = 10, 32, 8
    h = torch.nn.functional.layer_norm(x, (16,), p["ln_g"], p["ln_b"], eps=1e-5)
    uvz = torch.nn.functional.silu(h @ p["w_uvz"] + p["b_uvz"])
    u, v, z = uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]
    q, k = z * p["gamma"][0] + p["beta"][0], z * p["gamma"][1] + p["beta"][1]
    bias = FT.rel_pos_bias(n, p["rel_bias"])
    ws, we = s // heads, e // heads
    parts = []
    for j in range(heads):
        a = FT.relu2_attention(
            q[..., j * ws : (j + 1) * ws], k[..., j * ws : (j + 1) * ws], bias, causal
        )
        parts.append(a @ v[..., j * we : (j + 1) * we])
    want = x + (u * torch.cat(parts, -1)) @ p["w_o"] + p["b_o"]
    got = X.gau_heads(x, p, heads, causal)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got - FT.gau(x, p, causal)).abs().max() > 1e-4  # heads change the layer


def test_gau_heads_is_causal_and_validates():
    p = _gau_params()
    x = torch.randn(1, 9, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = x.clone()
    y[:, 6] += 1.0
    a, b = X.gau_heads(x, p, 2, True), X.gau_heads(y, p, 2, True)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="n_heads must divide s = 8"):
        X.gau_heads(x, p, 3)
    with pytest.raises(ValueError, match="n_heads must be"):
        X.gau_heads(x, p, 0)
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        X.gau_heads(np.zeros((9, 16)), p, 2)
    with pytest.raises(ValueError, match="n_heads must divide"):
        X.gau_heads_mixer(16, seed=0, causal=True, n_heads=3, s=8)


# ---------------------------------------------------------------------------- GLU FFN
def _count_gelu(d, f):
    return 2 * d * f + f + d


def _count_glu(d, e):
    return 3 * d * e + 2 * e + d


@pytest.mark.parametrize("d, f", [(1, 1), (2, 3), (64, 256), (768, 3072), (7, 100)])
def test_equal_glu_width_is_the_largest_width_within_the_budget(d, f):
    e = X.equal_glu_width(d, f)
    assert _count_glu(d, e) <= _count_gelu(d, f) or e == 1
    assert _count_glu(d, e + 1) > _count_gelu(d, f)


def test_equal_glu_width_validates():
    with pytest.raises(ValueError, match="d_model must be"):
        X.equal_glu_width(0, 4)
    with pytest.raises(TypeError, match="d_ff must be"):
        X.equal_glu_width(4, 2.5)


def test_glu_ffn_is_registered_and_matches_the_gelu_ffn_budget():
    assert "glu" in lm.ffns() and "gau_heads" in lm.mixers()
    glu = X.glu_ffn(64, seed=0, causal=True)
    gelu = lm.gelu_ffn(64, seed=0, causal=True)
    n_glu = sum(v.size for v in glu.params.values())
    n_gelu = sum(v.size for v in gelu.params.values())
    assert n_glu <= n_gelu and n_gelu - n_glu < 3 * 64 + 2  # within one hidden unit
    p = {k: torch.from_numpy(v).double() for k, v in glu.params.items()}
    p["w_o"] = p["w_o"] * 10
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    h = torch.nn.functional.layer_norm(x, (64,), eps=1e-5)
    want = x + FT.glu(h, {k: p[k] for k in ("w_u", "b_u", "w_v", "b_v", "w_o", "b_o")})
    torch.testing.assert_close(glu.apply(x, p), want)
    assert (want - x).abs().max() > 1e-6


def test_build_model_names_and_param_budgets():
    kw = dict(d_model=32, n_layers=1, vocab_size=64, max_len=64, s=16, chunk_size=16,
              max_rel=7, rel_bias_init=0.1)  # fmt: skip
    counts = {name: X.build_model(name, **kw).num_params()
              for name in ("mhsa_ffn", "mhsa_glu", "gau", "flash", "gau_h1", "gau_h4")}  # fmt: skip
    assert counts["gau_h1"] == counts["gau_h4"] == counts["gau"]
    assert abs(counts["mhsa_glu"] - counts["mhsa_ffn"]) < 3 * 32 + 2
    tokens = torch.randint(0, 64, (2, 64))
    assert X.build_model("gau_h4", **kw)(tokens).shape == (2, 64, 64)
    with pytest.raises(ValueError, match="name must be one of"):
        X.build_model("mamba", **kw)


# ---------------------------------------------------------------------------- MQAR
class _Oracle(torch.nn.Module):
    """Answers MQAR perfectly: at each position, the token that followed the same token
    in the context (the first 2K positions)."""

    def __init__(self, k: int, vocab: int):
        super().__init__()
        self.k, self.vocab = k, vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens):
        b, n = tokens.shape
        out = torch.zeros(b, n, self.vocab)
        for i in range(b):
            table = {int(tokens[i, 2 * j]): int(tokens[i, 2 * j + 1]) for j in range(self.k)}
            for t in range(n):
                out[i, t, table.get(int(tokens[i, t]), 0)] = 1.0
        return out + self.w


def test_mqar_eval_scores_an_oracle_1_and_a_constant_model_0():
    assert X.mqar_eval(_Oracle(4, 32), 20, 64, 4, 32, batch_size=7) == 1.0
    zero = _Oracle(0, 32)  # predicts token 0 everywhere: never a value (values >= V / 2)
    assert X.mqar_eval(zero, 20, 64, 4, 32) == 0.0
    with pytest.raises(TypeError, match="model must be"):
        X.mqar_eval(lambda t: t, 4, 64, 4, 32)


def test_mqar_loss_draws_seeded_batches_and_scores_only_queries():
    fn = X.mqar_loss(3, 32, 2, 16, seed=5)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, tokens):
            seen.append(tokens.clone())
            logits = torch.zeros(*tokens.shape, 16)
            logits[..., 8] = 5.0  # always predicts value 8
            return logits

    dummy = torch.zeros(1, 32, dtype=torch.int64)
    loss1 = fn(Spy(), dummy, dummy)
    fn(Spy(), dummy, dummy)
    b0, b1 = mqar(3, 32, 2, 16, seed=5 * 1_000_003), mqar(3, 32, 2, 16, seed=5 * 1_000_003 + 1)
    assert torch.equal(seen[0], torch.from_numpy(b0.inputs))
    assert torch.equal(seen[1], torch.from_numpy(b1.inputs))
    logp = torch.log_softmax(torch.tensor([5.0] + [0.0] * 15), 0)  # p(8) first
    t = b0.targets[b0.targets != -100]
    want = -np.mean([logp[0].item() if v == 8 else logp[1].item() for v in t])
    assert math.isclose(float(loss1), want, rel_tol=1e-5)
    with pytest.raises(ValueError, match="seq_len must be >="):
        X.mqar_loss(3, 4, 2, 16)


# ---------------------------------------------------------------------------- crossover
def test_crossover_length_on_exact_power_laws():
    n = np.array([512.0, 1024, 2048, 4096])
    assert math.isclose(X.crossover_length(n, 1e-9 * n**2, 2e-6 * n), 2000.0, rel_tol=1e-9)
    assert X.crossover_length(n, 2e-6 * n, 1e-9 * n**2) == math.inf
    with pytest.raises(ValueError, match="same length"):
        X.crossover_length(n, n[:3], n)
    with pytest.raises(ValueError, match="must be > 0"):
        X.crossover_length(n, -n, n)


# ---------------------------------------------------------------------------- the script
def test_the_script_runs_in_quick_mode_and_writes_checked_results(tmp_path):
    out = tmp_path / "r.json"
    assert X.main(["--quick", "--out", str(out)]) == 0
    results = X.load_results(out)
    assert results["quick"] is True
    assert set(results["experiments"]) == set(X.EXPERIMENTS)
    assert results["command"].startswith("python -m effx_lab.flash.experiments --quick")
    # the same seed gives the same losses (step-budgeted, one thread)
    again = X.run_experiments(["heads"], quick=True)
    assert again["experiments"]["heads"]["models"]["gau_h2"]["val_loss"] == pytest.approx(
        results["experiments"]["heads"]["models"]["gau_h2"]["val_loss"], rel=1e-6
    )


def test_check_results_rejects_malformed_results(tmp_path):
    out = tmp_path / "r.json"
    X.main(["--quick", "--only", "mqar", "timing", "--out", str(out)])
    good = json.loads(out.read_text())
    X.check_results(good)
    bad = json.loads(out.read_text())
    del bad["command"]
    with pytest.raises(ValueError, match="command"):
        X.check_results(bad)
    bad = json.loads(out.read_text())
    bad["experiments"]["mqar"]["models"]["flash"]["accuracy"] = 1.5
    with pytest.raises(ValueError, match="accuracy"):
        X.check_results(bad)
    bad = json.loads(out.read_text())
    del bad["experiments"]["mqar"]["models"]["transformer"]
    with pytest.raises(ValueError, match="must hold models"):
        X.check_results(bad)
    bad = json.loads(out.read_text())
    bad["experiments"]["timing"]["times_s"]["flash"] = [None, 1.0]
    with pytest.raises(ValueError, match="first length"):
        X.check_results(bad)
    with pytest.raises(TypeError, match="results must be a dict"):
        X.check_results([])
    with pytest.raises(FileNotFoundError, match="python -m effx_lab.flash.experiments"):
        X.load_results(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="experiments must be one of"):
        X.run_experiments(["nope"], quick=True)


def test_the_shipped_results_match_the_code():
    results = X.load_results()
    assert results["quick"] is False
    assert set(results["experiments"]) == set(X.EXPERIMENTS)
    full = json.loads(json.dumps(X.SETTINGS[False]))
    assert results["settings"] == full  # made by this version of the script's settings
    assert X.RESULTS_PATH.stat().st_size < 200_000


# ---------------------------------------------------------------------------- checkers
GLU_RIGHT = [X.equal_glu_width, lambda d, f: max(1, (2 * d * f + f) // (3 * d + 2))]


def _brute(d, f):
    e = 1
    while _count_glu(d, e + 1) <= _count_gelu(d, f):
        e += 1
    return e


@pytest.mark.parametrize("fn", GLU_RIGHT + [_brute])
def test_equal_glu_width_checker_passes_right_answers(fn):
    assert E.check_equal_glu_width(fn).passed


def _polyfit_crossover(lengths, t_quad, t_flash):
    x = np.log(np.asarray(lengths, dtype=float))
    pq, bq = np.polyfit(x, np.log(np.asarray(t_quad, dtype=float)), 1)
    pf, bf = np.polyfit(x, np.log(np.asarray(t_flash, dtype=float)), 1)
    return math.inf if pq <= pf else float(np.exp((bf - bq) / (pq - pf)))


def _log10_crossover(lengths, t_quad, t_flash):
    x = np.log10(np.asarray(lengths, dtype=float))
    pq, bq = np.polyfit(x, np.log10(np.asarray(t_quad, dtype=float)), 1)
    pf, bf = np.polyfit(x, np.log10(np.asarray(t_flash, dtype=float)), 1)
    return math.inf if pq <= pf else float(10 ** ((bf - bq) / (pq - pf)))


@pytest.mark.parametrize("fn", [X.crossover_length, _polyfit_crossover, _log10_crossover])
def test_crossover_checker_passes_right_answers(fn):
    assert E.check_crossover_length(fn).passed


@pytest.mark.parametrize(
    "check, mistakes",
    [(E.check_equal_glu_width, E._GLU_WIDTH_MISTAKES),
     (E.check_crossover_length, E._CROSSOVER_MISTAKES)],
)  # fmt: skip
def test_checkers_reject_the_wrong_answers_students_write_with_a_hint(check, mistakes):
    assert mistakes and all(isinstance(m, Mistake) for m in mistakes)
    for m in mistakes:
        result = check(m.wrong)
        assert result.passed is False, m.hint
        assert "hint:" in result.message


def test_checkers_survive_bad_code():
    """The generic bad code of tests/core/test_checkers_survive_bad_code.py, on these
    checkers (that test discovers only effx_lab.<pkg>.exercises)."""
    def raises(*a, **k):
        raise RuntimeError("boom")

    bad = [raises, lambda *a, **k: None, lambda *a, **k: "12", lambda *a, **k: float("nan"),
           lambda x: x, lambda *a, **k: [1, 2]]  # fmt: skip
    for check in (E.check_equal_glu_width, E.check_crossover_length):
        for fn in bad:
            result = check(fn)
            assert result.passed is False and result.message


def test_merge_joins_runs_of_different_experiments(tmp_path):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    X.main(["--quick", "--only", "timing", "--out", str(a)])
    X.main(["--quick", "--only", "heads", "ffn", "--out", str(b)])
    assert X.main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    merged = X.load_results(out)
    assert set(merged["experiments"]) == {"timing", "heads", "ffn"}
    assert " ; " in merged["command"] and "--only heads ffn" in merged["command"]
    parts = [json.loads(a.read_text()), json.loads(a.read_text())]
    with pytest.raises(ValueError, match="appears in two parts"):
        X.merge_results(parts)
    parts[1]["seed"] = 3
    with pytest.raises(ValueError, match="other 'seed'"):
        X.merge_results(parts)
    parts = [json.loads(a.read_text()), json.loads(b.read_text())]
    parts[1]["settings"]["d_model"] = 99
    with pytest.raises(ValueError, match="other settings\\['d_model'\\]"):
        X.merge_results(parts)
    # settings only the other part's experiments read may differ
    parts = [json.loads(a.read_text()), json.loads(b.read_text())]
    parts[1]["settings"]["timing"] = {"lengths": [1]}
    assert X.merge_results(parts)["settings"]["timing"] == parts[0]["settings"]["timing"]
