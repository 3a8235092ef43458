"""Tests of effx_lab.moe's topic ``route`` (05.1, 05.2): routers, auxiliary losses,
capacity, vanilla and Batch Priority Routing, the Routing container, the measures and
dynamic capacity, in both faces.

The NumPy reference and torch_ops run on the same random logits (with ties): experts
and slots must be equal exactly, gates and losses agree in float64. Then the properties
the functions document (seeded loops), hand-computed values on tiny cases, gradients
(gradcheck in float64) and the errors every public function raises.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effx_lab.moe import reference as R
from effx_lab.moe import shapes
from effx_lab.moe import torch_ops as T
from effx_lab.moe._format import CapacityTracker, Routing


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _np(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


FACES = [
    pytest.param((R, np.asarray), id="reference"),
    pytest.param((T, _t), id="torch_ops"),
]


def _logits(rng, t, e, ties=True):
    """Random logits with, where asked, repeated rows, a constant row and repeated
    values within rows (ties in the top-k and in priority)."""
    z = rng.standard_normal((t, e))
    if ties and t >= 4:
        z[1] = z[0]
        z[2] = 0.25
        z[3, : e // 2] = np.round(z[3, : e // 2])
        z[:, -1] = np.where(rng.random(t) < 0.3, z[:, 0], z[:, -1])
    return z


# -------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("policy", ["vanilla", "bpr_max", "bpr_sum"])
def test_route_faces_agree_exactly_on_random_logits_with_ties(policy):
    rng = np.random.default_rng(1)
    for trial in range(12):
        t, e = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        k = int(rng.integers(1, e + 1))
        c = float(rng.choice([0.25, 0.5, 1.0, 1.25, 2.0]))
        renorm = bool(trial % 2)
        z = _logits(rng, t, e)
        a = R.route(z, k, c, policy=policy, renormalize=renorm)
        b = T.route(_t(z), k, c, policy=policy, renormalize=renorm)
        assert isinstance(a, Routing) and isinstance(b, Routing)
        assert a.capacity == b.capacity == R.capacity(t, e, c, k)
        assert np.array_equal(a.experts, _np(b.experts))
        assert np.array_equal(a.slots, _np(b.slots))
        assert a.experts.dtype == np.int64 and b.slots.dtype == torch.int64
        np.testing.assert_allclose(a.gates, _np(b.gates), rtol=1e-13, atol=0)
        np.testing.assert_allclose(a.probs, _np(b.probs), rtol=1e-13, atol=1e-300)
        assert R.dropped_fraction(a) == T.dropped_fraction(b)
        assert R.padding_fraction(a) == T.padding_fraction(b)
        assert np.array_equal(
            R.expert_counts(a.experts, e, a.kept),
            _np(T.expert_counts(b.experts, e, b.kept)),
        )


def test_topk_gating_ties_go_to_the_lower_index_in_both_faces():
    z = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
    want = [[1, 2], [0, 1], [2, 3]]
    for F, mk in ((R, np.asarray), (T, _t)):
        gates, experts = F.topk_gating(mk(z), 2)
        assert _np(experts).tolist() == want
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(
            _np(gates), np.take_along_axis(p, np.array(want), 1), rtol=1e-14
        )


@pytest.mark.parametrize("face", FACES)
def test_topk_gating_renormalize_makes_gates_sum_to_one(face):
    F, mk = face
    rng = np.random.default_rng(2)
    for k in (1, 2, 3):
        z = _logits(rng, 20, 5)
        gates, _ = F.topk_gating(mk(z), k, renormalize=True)
        np.testing.assert_allclose(_np(gates).sum(axis=1), 1.0, rtol=1e-14)
        raw, _ = F.topk_gating(mk(z), k)
        assert np.all(_np(raw).sum(axis=1) <= 1.0 + 1e-14)
        assert np.all(np.diff(_np(raw), axis=1) <= 0)  # best first


def test_router_logits_is_x_times_w_gate():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((7, 5)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(R.router_logits(x, w), x @ w, rtol=1e-14)
    np.testing.assert_allclose(
        _np(T.router_logits(_t(x), _t(w))), x @ w, rtol=1e-13
    )


def _noisy_inputs(rng, t=16, d=6, e=5):
    return (
        rng.standard_normal((t, d)),
        rng.standard_normal((d, e)),
        rng.standard_normal((d, e)) * 0.5,
        rng.standard_normal((t, e)),
    )


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_noisy_topk_gating_faces_agree_and_follow_the_definition(k):
    rng = np.random.default_rng(4 + k)
    x, wg, wn, noise = _noisy_inputs(rng)
    a = R.noisy_topk_gating(x, wg, wn, k, noise)
    b = T.noisy_topk_gating(_t(x), _t(wg), _t(wn), k, _t(noise))
    assert set(a) == set(b) == {"gates", "experts", "clean", "noisy", "std"}
    assert np.array_equal(a["experts"], _np(b["experts"]))
    for key in ("gates", "clean", "noisy", "std"):
        np.testing.assert_allclose(a[key], _np(b[key]), rtol=1e-12, atol=1e-15)
    clean = x @ wg
    std = np.log1p(np.exp(x @ wn)) + 1e-2
    np.testing.assert_allclose(a["std"], std, rtol=1e-12)
    np.testing.assert_allclose(a["noisy"], clean + noise * std, rtol=1e-12)
    g = a["gates"]
    np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-14)
    assert np.all((g > 0).sum(axis=1) == k)
    chosen = np.zeros_like(g, dtype=bool)
    np.put_along_axis(chosen, a["experts"], True, axis=1)
    assert np.array_equal(g > 0, chosen)
    # the kept experts are the k largest noisy logits; softmax over them
    top = np.take_along_axis(a["noisy"], a["experts"], 1)
    if k < g.shape[1]:
        assert np.all(top.min(axis=1) >= np.where(chosen, -np.inf, a["noisy"]).max(1))
    sm = np.exp(top - top.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    np.testing.assert_allclose(np.take_along_axis(g, a["experts"], 1), sm, rtol=1e-12)


def test_noisy_topk_gating_with_zero_noise_is_softmax_over_top_clean():
    rng = np.random.default_rng(5)
    x, wg, wn, _ = _noisy_inputs(rng)
    out = R.noisy_topk_gating(x, wg, wn, 2, np.zeros((16, 5)))
    _, experts = R.topk_gating(x @ wg, 2)
    assert np.array_equal(out["experts"], experts)


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("face", FACES)
def test_switch_aux_loss_is_one_under_perfect_balance(face):
    F, mk = face
    e = 4
    probs = np.full((8, e), 1.0 / e)
    experts = np.arange(8, dtype=np.int64)[:, None] % e
    assert float(F.switch_aux_loss(mk(probs), mk(experts))) == pytest.approx(
        1.0, abs=1e-15
    )
    # everything on expert 0 with certainty: E * 1 * 1 = E
    probs = np.zeros((8, e))
    probs[:, 0] = 1.0
    experts = np.zeros((8, 1), dtype=np.int64)
    assert float(F.switch_aux_loss(mk(probs), mk(experts))) == pytest.approx(4.0)


@pytest.mark.parametrize("face", FACES)
def test_switch_aux_loss_hand_value_counts_first_choices_only(face):
    F, mk = face
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4],
                      [0.2, 0.3, 0.5]])
    experts = np.array([[0, 1], [1, 2], [0, 2], [2, 1]], dtype=np.int64)
    f = np.array([2, 1, 1]) / 4
    pm = probs.mean(axis=0)
    want = 3 * float(np.sum(f * pm))
    got = float(F.switch_aux_loss(mk(probs), mk(experts)))
    assert got == pytest.approx(want, rel=1e-14)
    assert float(F.switch_aux_loss(mk(probs), mk(experts[:, :1]))) == pytest.approx(
        want, rel=1e-14
    )


@pytest.mark.parametrize("face", FACES)
def test_cv_squared_and_importance_loss_hand_values(face):
    F, mk = face
    assert float(F.cv_squared(mk(np.array([2.0, 2.0, 2.0])))) == 0.0
    # v = [1, 3]: mean 2, population variance 1 -> 1/4
    cv = float(F.cv_squared(mk(np.array([1.0, 3.0]))))
    assert cv == pytest.approx(0.25, rel=1e-9)
    assert float(F.cv_squared(mk(np.array([5.0])))) == 0.0
    gates = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    # importance = [0.5, 2.0, 0.5]: mean 1, variance 0.5 -> 0.5
    # (the guard 1e-10 in the denominator moves it by 5e-11)
    assert float(F.importance_loss(mk(gates))) == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("face", FACES)
def test_z_loss_hand_value(face):
    F, mk = face
    z = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    want = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert float(F.z_loss(mk(z))) == pytest.approx(want, rel=1e-14)
    big = np.array([[1000.0, 1000.0]])  # no overflow
    assert float(F.z_loss(mk(big))) == pytest.approx((1000 + math.log(2)) ** 2)


def test_load_loss_thresholds_and_faces_agree():
    # one token, E = 3, k = 1: noisy = [2, 1, 0]; expert 0 is in, threshold = the
    # second largest (1); experts 1, 2 are out, threshold = the largest (2)
    clean = np.array([[1.5, 0.0, 0.5]])
    noisy = np.array([[2.0, 1.0, 0.0]])
    std = np.array([[1.0, 2.0, 0.5]])
    p = np.array([(1.5 - 1) / 1.0, (0.0 - 2) / 2.0, (0.5 - 2) / 0.5])
    phi = 0.5 * np.array([math.erfc(-v / math.sqrt(2)) for v in p])
    load = np.stack([phi, phi])  # two identical tokens
    clean2, noisy2, std2 = (np.concatenate([a, a]) for a in (clean, noisy, std))
    want = float(np.var(load.sum(0)) / (load.sum(0).mean() ** 2 + 1e-10))
    assert R.load_loss(clean2, noisy2, std2, 1) == pytest.approx(want, rel=1e-12)
    got = T.load_loss(_t(clean2), _t(noisy2), _t(std2), 1)
    assert float(got) == pytest.approx(want, rel=1e-12)
    rng = np.random.default_rng(6)
    x, wg, wn, noise = _noisy_inputs(rng, t=30)
    for k in (1, 2, 3, 5):
        d = R.noisy_topk_gating(x, wg, wn, k, noise)
        a = R.load_loss(d["clean"], d["noisy"], d["std"], k)
        b = T.load_loss(_t(d["clean"]), _t(d["noisy"]), _t(d["std"]), k)
        assert a == pytest.approx(float(b), rel=1e-11, abs=1e-15)
    assert a == 0.0  # k = E: every expert always chosen


def test_torch_losses_have_gradients_gradcheck_float64():
    rng = np.random.default_rng(7)
    x, wg, wn, noise = (_t(a) for a in _noisy_inputs(rng, t=6, d=3, e=4))
    wg.requires_grad_(True)
    wn.requires_grad_(True)

    def importance(wg, wn):
        return T.importance_loss(T.noisy_topk_gating(x, wg, wn, 2, noise)["gates"])

    def load(wg, wn):
        d = T.noisy_topk_gating(x, wg, wn, 2, noise)
        return T.load_loss(d["clean"], d["noisy"], d["std"], 2)

    assert torch.autograd.gradcheck(importance, (wg, wn))
    assert torch.autograd.gradcheck(load, (wg, wn))
    z = _t(rng.standard_normal((5, 4))).requires_grad_(True)
    assert torch.autograd.gradcheck(T.z_loss, (z,))
    experts = torch.tensor([[0], [1], [1], [3], [2]])
    probs = torch.softmax(_t(rng.standard_normal((5, 4))), -1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: T.switch_aux_loss(p, experts), (probs,))
    v = _t(rng.random(4) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(T.cv_squared, (v,))
    # route's gates carry the router's gradient
    logits = _t(rng.standard_normal((6, 4))).requires_grad_(True)
    r = T.route(logits, 2, 1.0, renormalize=True)
    (r.gates * torch.arange(2.0, dtype=torch.float64)).sum().backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) > 0


# --------------------------------------------------------------------------- capacity
def test_capacity_formula_hand_values():
    assert R.capacity(8, 4, 1.25) == 3  # ceil(2.5)
    assert R.capacity(8, 4, 1.0) == 2
    assert R.capacity(8, 4, 1.0, k=2) == 4
    assert R.capacity(10, 4, 1.0, 2) == 5
    assert R.capacity(30, 1, 0.1) == 3  # exact in decimal, not ceil(3.0000000000000004)
    assert R.capacity(3, 8, 0.25) == 1  # at least 1
    assert R.capacity(1024, 8, 0.5, 2) == 128
    assert T.capacity is R.capacity is shapes.capacity


@pytest.mark.parametrize("face", FACES)
def test_no_expert_gets_more_than_capacity_and_rows_are_dense(face):
    F, mk = face
    rng = np.random.default_rng(8)
    for trial in range(25):
        t, e = int(rng.integers(1, 60)), int(rng.integers(1, 9))
        k = int(rng.integers(1, e + 1))
        c = float(rng.choice([0.1, 0.25, 0.5, 1.0, 1.5]))
        policy = str(rng.choice(R.POLICIES))
        z = _logits(rng, t, e)
        r = F.route(mk(z), k, c, policy=policy)
        experts, slots = _np(r.experts), _np(r.slots)
        counts = _np(F.expert_counts(r.experts, e, r.kept))
        assert np.all(counts <= r.capacity)
        for x in range(e):
            rows = np.sort(slots[(experts == x) & (slots >= 0)])
            assert rows.tolist() == list(range(len(rows)))  # 0, 1, ... no gaps
            # an expert drops only when full
            if np.any((experts == x) & (slots < 0)):
                assert len(rows) == r.capacity
        assert F.dropped_fraction(r) == pytest.approx((slots < 0).mean())


@pytest.mark.parametrize("face", FACES)
def test_large_capacity_drops_nothing(face):
    F, mk = face
    rng = np.random.default_rng(9)
    for trial in range(10):
        t, e = int(rng.integers(1, 50)), int(rng.integers(1, 9))
        k = int(rng.integers(1, e + 1))
        z = _logits(rng, t, e)
        # C = E / k: capacity >= T, the most one expert can receive
        for policy in R.POLICIES:
            r = F.route(mk(z), k, e / k, policy=policy)
            assert r.capacity >= t
            assert F.dropped_fraction(r) == 0.0
            assert bool(np.all(_np(r.kept)))


def test_vanilla_drops_the_late_tokens():
    rng = np.random.default_rng(10)
    for trial in range(20):
        t, e = int(rng.integers(2, 60)), int(rng.integers(1, 6))
        z = _logits(rng, t, e)
        r = R.route(z, 1, 0.5)
        ex, kept = r.experts[:, 0], r.kept[:, 0]
        for x in range(e):
            mine = np.flatnonzero(ex == x)
            n_kept = min(len(mine), r.capacity)
            assert kept[mine[:n_kept]].all() and not kept[mine[n_kept:]].any()
            assert r.slots[mine[:n_kept], 0].tolist() == list(range(n_kept))


def test_vanilla_second_choices_come_after_all_first_choices():
    # E = 2, capacity 2: tokens 0, 1 pick expert 0 first; token 2 picks 1 first and
    # 0 second: its second choice comes after every first choice -> dropped
    z = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    r = R.route(z, 2, capacity=2)
    assert r.experts.tolist() == [[0, 1], [0, 1], [1, 0], [1, 0]]
    assert r.slots.tolist() == [[0, -1], [1, -1], [0, -1], [1, -1]]
    # first choices: 0 -> e1 row 0, 1 -> e1 row 1, 2 -> e0 row 0; then the second
    # choices in token order: 0 -> e0 row 1, 1 -> e0 full, 2 -> e1 full
    s = R.assign_slots(np.array([[1, 0], [1, 0], [0, 1]]), 2, 2)
    assert s.tolist() == [[0, 1], [1, -1], [0, -1]]
    assert _np(T.assign_slots(torch.tensor([[1, 0], [1, 0], [0, 1]]), 2, 2)).tolist() \
        == s.tolist()


@pytest.mark.parametrize("by", ["max", "sum"])
def test_bpr_keeps_the_highest_priority_tokens(by):
    rng = np.random.default_rng(11)
    for trial in range(20):
        t, e = int(rng.integers(2, 60)), int(rng.integers(1, 6))
        z = _logits(rng, t, e) * 2
        for k in (1, 2) if e >= 2 else (1,):
            r = R.route(z, k, 0.4, policy=f"bpr_{by}")
            top = np.take_along_axis(r.probs, r.experts, 1)
            prio = top.max(1) if by == "max" else top.sum(1)
            order = R.priority_order(top, by)
            rank = np.empty(t, dtype=np.int64)
            rank[order] = np.arange(t)
            # first choices: among the tokens whose first choice is x, the kept ones
            # are exactly the best ones in priority order (ties: lower index first)
            for x in range(e):
                mine = np.flatnonzero(r.experts[:, 0] == x)
                kept = r.kept[mine, 0]
                if kept.all() or not kept.any():
                    continue
                # priorities closer than 2**-40 count as equal (PRIORITY_SCALE)
                assert prio[mine[~kept]].max() <= prio[mine[kept]].min() + 1e-12
                assert rank[mine[~kept]].min() > rank[mine[kept]].max()
            assert np.array_equal(
                r.slots, R.assign_slots(r.experts, e, r.capacity, order=order)
            )


def test_priority_order_hand_values_and_ties():
    g = np.array([[0.5, 0.1], [0.9, 0.0], [0.5, 0.45], [0.3, 0.3]])
    for F, mk in ((R, np.asarray), (T, _t)):
        assert _np(F.priority_order(mk(g), "max")).tolist() == [1, 0, 2, 3]
        assert _np(F.priority_order(mk(g), "sum")).tolist() == [2, 1, 0, 3]
        p = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.4, 0.45, 0.15]])
        assert _np(F.priority_order(mk(p), "sum", k=2)).tolist() == [0, 2, 1]
        assert _np(F.priority_order(mk(p), "max", k=1)).tolist() == [0, 1, 2]


def test_bpr_beats_vanilla_on_kept_probability_mass():
    rng = np.random.default_rng(12)
    z = rng.standard_normal((256, 8)) * 2
    rv, rb = R.route(z, 1, 0.5), R.route(z, 1, 0.5, policy="bpr_max")
    mass = [float((r.gates * r.kept).sum()) for r in (rv, rb)]
    # top-1: the same experts, the same count of kept tokens, more kept probability
    assert R.dropped_fraction(rv) == R.dropped_fraction(rb) > 0
    assert mass[1] > mass[0] * 1.05


# --------------------------------------------------------------------------- measures
@pytest.mark.parametrize("face", FACES)
def test_expert_counts_dropped_and_padding_by_hand(face):
    F, mk = face
    experts = np.array([[0, 1], [0, 2], [0, 1], [3, 0]], dtype=np.int64)
    assert _np(F.expert_counts(mk(experts), 4)).tolist() == [4, 2, 1, 1]
    slots = np.array([[0, 0], [1, 0], [-1, 1], [0, -1]], dtype=np.int64)
    kept = slots >= 0
    assert _np(F.expert_counts(mk(experts), 5, mk(kept))).tolist() == [2, 2, 1, 1, 0]
    probs = np.full((4, 4), 0.25)
    r = Routing(mk(experts), mk(np.full((4, 2), 0.5)), mk(slots), 2, 4, mk(probs))
    assert r.k == 2 and r.n_tokens == 4
    assert F.dropped_fraction(r) == 2 / 8
    # 6 kept rows of 4 experts x 2 rows
    assert F.padding_fraction(r) == 1 - 6 / 8


def test_padding_shrinks_and_drops_grow_as_capacity_falls():
    rng = np.random.default_rng(13)
    z = rng.standard_normal((512, 8))
    drops, pads = [], []
    for c in (0.25, 0.5, 1.0, 1.5, 2.0, 4.0):
        r = R.route(z, 2, c)
        drops.append(R.dropped_fraction(r))
        pads.append(R.padding_fraction(r))
    assert drops == sorted(drops, reverse=True) and drops[-1] == 0.0
    assert pads == sorted(pads) and pads[0] == 0.0


@pytest.mark.parametrize("face", FACES)
def test_dynamic_capacity_rounds_the_peak_load_up(face):
    F, mk = face
    assert F.dynamic_capacity(mk(np.array([3, 9, 0]))) == 16
    assert F.dynamic_capacity(mk(np.array([3, 8, 0]))) == 8
    assert F.dynamic_capacity(mk(np.array([0, 0]))) == 8
    assert F.dynamic_capacity(mk(np.array([5, 7])), multiple=1) == 7
    assert F.dynamic_capacity(mk(np.array([5, 7])), multiple=4, headroom=1.5) == 12
    rng = np.random.default_rng(14)
    z = rng.standard_normal((100, 6))
    counts = R.expert_counts(R.route(z, 2, 1.0).experts, 6)
    cap = F.dynamic_capacity(mk(counts), multiple=4)
    r = R.route(z, 2, capacity=cap)
    assert R.dropped_fraction(r) == 0.0 and cap % 4 == 0
    assert R.dropped_fraction(R.route(z, 2, capacity=cap - 4)) > 0 or cap == 4


def test_capacity_tracker_grows_at_once_and_shrinks_slowly():
    tr = CapacityTracker(multiple=4, decay=0.5)
    assert R.CapacityTracker is T.CapacityTracker is CapacityTracker
    assert tr.update(np.array([10, 1])) == 12  # first step: need = 12
    assert tr.update(np.array([2, 1])) == 8  # ema 6 -> bucket 8 (need 4)
    assert tr.update(np.array([2, 1])) == 4  # ema 4 -> bucket 4
    assert tr.update(torch.tensor([5, 1])) == 8  # need 8 > 4: grows at once
    assert tr.update(np.array([2, 1])) == 4  # ema 3.25 -> bucket 4
    assert tr.history == [12, 8, 4, 8, 4] and tr.recompiles == 4
    for _ in range(10):
        tr.update(torch.tensor([2, 1]))
    assert tr.capacity == 4
    assert tr.update(np.array([13, 0])) == 16  # grows at once: nothing dropped
    changes = sum(a != b for a, b in zip(tr.history, tr.history[1:]))
    assert tr.recompiles == changes
    with pytest.raises(ValueError, match="decay"):
        CapacityTracker(decay=1.0)
    with pytest.raises(ValueError, match="counts"):
        tr.update(np.array([-1, 2]))
    with pytest.raises(TypeError, match="counts must have an int dtype"):
        tr.update(np.array([1.0]))


# ---------------------------------------------------------------------------- Routing
def _routing_args():
    experts = np.array([[0, 1], [1, 0]], dtype=np.int64)
    gates = np.full((2, 2), 0.5)
    slots = np.array([[0, 0], [1, -1]], dtype=np.int64)
    return experts, gates, slots, 2, 2, np.full((2, 2), 0.5)


@pytest.mark.parametrize(
    "field,value,error,says",
    [
        (0, np.array([[0, 1], [1, 1]]), ValueError, "distinct"),
        (0, np.array([[0, 1], [1, 2]]), ValueError, r"experts must hold expert ids"),
        (0, np.array([[0, 1], [1, 0]], dtype=np.int32), TypeError, "int64"),
        (0, np.array([[0.0, 1.0], [1.0, 0.0]]), TypeError, "experts"),
        (1, np.full((2, 3), 0.5), ValueError, "gates must have the shape"),
        (1, np.array([[0.5, np.nan], [0.5, 0.5]]), ValueError, r"gates .* at \[0, 1\]"),
        (2, np.array([[0, 0], [0, 2]]), ValueError, r"slots must hold buffer rows"),
        (2, np.array([[0, 0], [0, 0]]), ValueError, "expert 0, slot 0"),
        (2, np.array([[0, 0], [-2, 0]]), ValueError, "slots"),
        (3, 0, ValueError, "capacity"),
        (4, 1, ValueError, "experts"),
        (5, np.full((2, 3), 0.5), ValueError, "probs must have shape"),
        (5, [[0.5, 0.5]], TypeError, "probs must be a NumPy array or torch tensor"),
    ],
)
def test_routing_validates_every_field(field, value, error, says):
    args = list(_routing_args())
    args[field] = value
    with pytest.raises(error, match=says):
        Routing(*args)
    Routing(*_routing_args())  # the unchanged one is fine


def test_routing_refuses_mixed_kinds():
    args = list(_routing_args())
    args[2] = _t(args[2])
    with pytest.raises(TypeError, match="slots must be a NumPy array, like experts"):
        Routing(*args)
    r = Routing(*(_t(a) if isinstance(a, np.ndarray) else a for a in _routing_args()))
    assert r.is_torch and "Routing(n_tokens=2" in repr(r)
    with pytest.raises(TypeError, match="r must hold NumPy arrays"):
        R.dropped_fraction(r)
    with pytest.raises(TypeError, match="r must hold torch tensors"):
        T.padding_fraction(Routing(*_routing_args()))
    with pytest.raises(TypeError, match="r must be a Routing"):
        R.dropped_fraction({"slots": 1})


# ------------------------------------------------------------------------- bad inputs
BAD_LOGITS = [
    (np.zeros(4), ValueError, "logits must have 2 dimensions"),
    (np.zeros((3, 4), dtype=np.int64), TypeError, "logits must have a float dtype"),
    (np.zeros((0, 4)), ValueError, "logits must have shape"),
    (np.array([[0.0, 1.0], [np.nan, 0.0]]), ValueError, r"logits .* nan at \[1, 0\]"),
    (np.array([[0.0, np.inf]]), ValueError, r"logits .* at \[0, 1\]"),
]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("bad,error,says", BAD_LOGITS)
def test_bad_logits_are_named(face, bad, error, says):
    F, mk = face
    for call in (
        lambda z: F.route(z),
        lambda z: F.topk_gating(z, 1),
        lambda z: F.z_loss(z),
    ):
        with pytest.raises(error, match=says):
            call(mk(bad))


@pytest.mark.parametrize("face", FACES)
def test_bad_arguments_are_named(face):
    F, mk = face
    z = mk(np.zeros((6, 4)))
    cases = [
        (lambda: F.route(z, 5), ValueError, r"k must be an int in \[1, 4\], got 5"),
        (lambda: F.route(z, 0), ValueError, r"k must be an int in \[1, 4\], got 0"),
        (lambda: F.route(z, 1.0), TypeError, "k must be an int"),
        (lambda: F.route(z, 1, 0.0), ValueError, "capacity_factor must be > 0"),
        (lambda: F.route(z, 1, -1.0), ValueError, "capacity_factor must be > 0"),
        (lambda: F.route(z, 1, float("nan")), ValueError, "capacity_factor must be f"),
        (lambda: F.route(z, 1, "1"), TypeError, "capacity_factor must be a real"),
        (lambda: F.route(z, policy="bpr"), ValueError, "policy must be one of"),
        (lambda: F.route(z, policy=None), TypeError, "policy must be one of"),
        (lambda: F.route(z, capacity=0), ValueError, "capacity must be an int >= 1"),
        (lambda: F.route(z, renormalize=1), TypeError, "renormalize must be a bool"),
        (lambda: F.topk_gating(z, 5), ValueError, "k must be an int"),
        (lambda: F.priority_order(z, "mean"), ValueError, "by must be 'max' or 'sum'"),
        (lambda: F.priority_order(z, "sum", k=9), ValueError, "k must be an int"),
        (lambda: F.assign_slots(mk(np.array([[0], [4]])), 4, 2), ValueError,
         r"experts must hold expert ids in \[0, 4\), got 4 at \[1, 0\]"),
        (lambda: F.assign_slots(mk(np.array([[0.0]])), 4, 2), TypeError,
         "experts must have an int dtype"),
        (lambda: F.assign_slots(mk(np.array([0, 1])), 4, 2), ValueError,
         "experts must have 2 dimensions"),
        (lambda: F.assign_slots(mk(np.array([[0], [1]])), 4, 0), ValueError,
         "capacity must be an int >= 1"),
        (lambda: F.assign_slots(mk(np.array([[0], [1]])), 0, 1), ValueError,
         "n_experts must be an int >= 1"),
        (lambda: F.assign_slots(mk(np.array([[0], [1]])), 4, 1,
                                order=mk(np.array([0, 0]))), ValueError,
         r"order must be a permutation of range\(2\), got 0 at position 1 \(a repeat"),
        (lambda: F.assign_slots(mk(np.array([[0], [1]])), 4, 1,
                                order=mk(np.array([0, 2]))), ValueError,
         r"order must be a permutation of range\(2\), got 2"),
        (lambda: F.assign_slots(mk(np.array([[0], [1]])), 4, 1,
                                order=mk(np.array([0, 1, 2]))), ValueError,
         r"order must be a permutation of range\(2\) \(one entry per token\)"),
        (lambda: F.expert_counts(mk(np.array([[0], [1]])), 4, mk(np.array([1, 0]))),
         TypeError, "kept must have dtype bool"),
        (lambda: F.expert_counts(mk(np.array([[0], [1]])), 4,
                                 mk(np.array([True, False]))), ValueError,
         "kept must have the shape of experts"),
        (lambda: F.switch_aux_loss(mk(np.full((3, 2), 0.5)), mk(np.array([[0], [1]]))),
         ValueError, r"experts must have one row per token \(3\)"),
        (lambda: F.cv_squared(mk(np.zeros((2, 2)))), ValueError,
         "v must have 1 dimensions"),
        (lambda: F.cv_squared(mk(np.zeros(0))), ValueError, "v must not be empty"),
        (lambda: F.importance_loss(mk(np.zeros(3))), ValueError,
         "gates_dense must have 2 dimensions"),
        (lambda: F.dynamic_capacity(mk(np.array([1, -1]))), ValueError,
         "counts must be a non-empty array of counts >= 0"),
        (lambda: F.dynamic_capacity(mk(np.array([1.0]))), TypeError,
         "counts must have an int dtype"),
        (lambda: F.dynamic_capacity(mk(np.array([1])), multiple=0), ValueError,
         "multiple must be an int >= 1"),
        (lambda: F.dynamic_capacity(mk(np.array([1])), headroom=0.5), ValueError,
         "headroom must be >= 1.0"),
        (lambda: F.router_logits(mk(np.zeros((2, 3))), mk(np.zeros((4, 2)))),
         ValueError, r"w_gate must have shape \(d_model, n_experts\) = \(3, E\)"),
        (lambda: F.router_logits(mk(np.zeros((2, 3, 1))), mk(np.zeros((3, 2)))),
         ValueError, r"x must have 2 dimensions \(n_tokens, d_model\)"),
    ]
    for call, error, says in cases:
        with pytest.raises(error, match=says):
            call()


@pytest.mark.parametrize("face", FACES)
def test_noisy_and_load_bad_arguments_are_named(face):
    F, mk = face
    rng = np.random.default_rng(15)
    x, wg, wn, noise = (mk(a) for a in _noisy_inputs(rng, t=4, d=3, e=5))
    with pytest.raises(ValueError, match=r"w_noise must have shape .* = \(3, 5\)"):
        F.noisy_topk_gating(x, wg, mk(np.zeros((3, 4))), 1, noise)
    with pytest.raises(ValueError, match=r"noise must have shape .* = \(4, 5\)"):
        F.noisy_topk_gating(x, wg, wn, 1, mk(np.zeros((4, 4))))
    with pytest.raises(ValueError, match="k must be an int"):
        F.noisy_topk_gating(x, wg, wn, 6, noise)
    with pytest.raises(ValueError, match="noise_epsilon must be >= 0"):
        F.noisy_topk_gating(x, wg, wn, 1, noise, noise_epsilon=-1.0)
    d = F.noisy_topk_gating(x, wg, wn, 2, noise)
    with pytest.raises(ValueError, match="std must be > 0"):
        F.load_loss(d["clean"], d["noisy"], d["std"] * 0, 2)
    with pytest.raises(ValueError, match="noisy must have the shape of clean"):
        F.load_loss(d["clean"], d["noisy"][:2], d["std"], 2)
    with pytest.raises(ValueError, match="k must be an int"):
        F.load_loss(d["clean"], d["noisy"], d["std"], 0)


def test_wrong_kind_of_array_names_the_other_face():
    z = np.zeros((2, 3))
    with pytest.raises(TypeError, match="use effx_lab.moe.reference for NumPy"):
        T.route(z)
    with pytest.raises(TypeError, match="use effx_lab.moe.torch_ops for torch"):
        R.route(_t(z))
    with pytest.raises(TypeError, match="logits must be a NumPy array"):
        R.topk_gating([[0.0, 1.0]], 1)


def test_capacity_arguments_are_named():
    with pytest.raises(ValueError, match="n_tokens must be an int >= 1"):
        R.capacity(0, 4, 1.0)
    with pytest.raises(ValueError, match="n_experts must be an int >= 1"):
        R.capacity(4, 0, 1.0)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        R.capacity(4, 4, 1.0, k=5)
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        R.capacity(4, 4, 0.0)


def test_check_expert_params_shapes():
    e, d, f = 3, 4, 5
    p = {"w1": np.zeros((e, d, f)), "b1": np.zeros((e, f)), "w2": np.zeros((e, f, d)),
         "b2": np.zeros((e, d))}
    assert shapes.check_expert_params(p) == (e, d, f)
    assert shapes.check_expert_params({k: _t(v) for k, v in p.items()}, d) == (e, d, f)
    with pytest.raises(ValueError, match=r"params\['w2'\] must have shape \(3, 5, 4\)"):
        shapes.check_expert_params({**p, "w2": np.zeros((e, d, f))})
    with pytest.raises(ValueError, match=r"missing \['b2'\]"):
        shapes.check_expert_params({k: v for k, v in p.items() if k != "b2"})
    with pytest.raises(ValueError, match="d = 6"):
        shapes.check_expert_params(p, 6)
    with pytest.raises(TypeError, match="params must be a dict"):
        shapes.check_expert_params([1, 2])
    with pytest.raises(TypeError, match=r"params\['b1'\] must have a float dtype"):
        shapes.check_expert_params({**p, "b1": np.zeros((e, f), dtype=np.int64)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_face_on_cuda_agrees_with_the_reference():
    rng = np.random.default_rng(16)
    for policy in R.POLICIES:
        for k in (1, 2):
            z = _logits(rng, 64, 8)
            a = R.route(z, k, 0.5, policy=policy)
            b = T.route(_t(z).cuda(), k, 0.5, policy=policy)
            assert b.slots.is_cuda and b.experts.is_cuda
            assert np.array_equal(a.experts, _np(b.experts))
            assert np.array_equal(a.slots, _np(b.slots))
            assert R.dropped_fraction(a) == T.dropped_fraction(b)
    x, wg, wn, noise = _noisy_inputs(rng)
    d = R.noisy_topk_gating(x, wg, wn, 2, noise)
    g = T.noisy_topk_gating(*(_t(v).cuda() for v in (x, wg, wn)), 2, _t(noise).cuda())
    assert np.array_equal(d["experts"], _np(g["experts"]))
    want = R.load_loss(d["clean"], d["noisy"], d["std"], 2)
    got = T.load_loss(g["clean"], g["noisy"], g["std"], 2)
    assert float(got) == pytest.approx(want, rel=1e-11)
    assert T.dynamic_capacity(torch.tensor([3, 9], device="cuda")) == 16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_routing_holds_16_bit_gates_and_probs(dtype):
    """A router run in bf16/fp16 makes a valid Routing (NumPy has no bfloat16: the
    checks read the values back in float32), and a NaN among them is still caught."""
    r = T.route(torch.randn(12, 4, dtype=torch.float64), k=2, capacity_factor=1.0)
    low = Routing(r.experts, r.gates.to(dtype), r.slots, r.capacity, r.n_experts,
                  r.probs.to(dtype))  # fmt: skip
    assert low.gates.dtype == dtype and low.n_tokens == 12
    bad = r.gates.to(dtype).clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="gates"):
        Routing(r.experts, bad, r.slots, r.capacity, r.n_experts, r.probs.to(dtype))
