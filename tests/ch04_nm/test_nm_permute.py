"""Tests of effx_lab.nm's permutation part (04.2): invariance of QKᵀ and of the FFN,
the retained magnitude and the channel-permutation search, in both faces.

The faces run on the same float64 input and must return the same permutation and the
same history; the search's quality is pinned against the exhaustive optimum with a wide
margin (measured: greedy reaches 97.7 % of the exhaustive gain at worst, 99.9 % on
average, over 30 random 16 x 12 matrices).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effx_lab.nm import reference as R
from effx_lab.nm import torch_ops as T
from effx_lab.sparse import reference as SR


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


FACES = [
    pytest.param((R, np.asarray), id="reference"),
    pytest.param((T, _t), id="torch_ops"),
]


def _rand(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


# =========================================================================== invariance
@pytest.mark.parametrize("face", FACES)
def test_permute_qk_keeps_scores(face):
    mod, mk = face
    q, k = _rand(0, (2, 3, 5, 8)), _rand(1, (2, 3, 7, 8))
    perm = np.random.default_rng(2).permutation(8)
    q2, k2 = mod.permute_qk(mk(q), mk(k), mk(perm))
    q2, k2 = _np(q2), _np(k2)
    assert not np.array_equal(q2, q)
    np.testing.assert_allclose(
        q2 @ k2.swapaxes(-1, -2), q @ k.swapaxes(-1, -2), rtol=1e-13, atol=1e-13
    )
    # permuting only q changes the scores: the test can fail
    assert not np.allclose(q2 @ k.swapaxes(-1, -2), q @ k.swapaxes(-1, -2))


@pytest.mark.parametrize("face", FACES)
def test_permute_ffn_keeps_the_ffn(face):
    mod, mk = face
    d, d_ff = 6, 16
    params = {
        "w1": _rand(3, (d, d_ff)),
        "b1": _rand(4, (d_ff,)),
        "w2": _rand(5, (d_ff, d)),
        "b2": _rand(6, (d,)),
    }
    x = _rand(7, (9, d))
    perm = np.random.default_rng(8).permutation(d_ff)
    out = mod.permute_ffn({key: mk(v) for key, v in params.items()}, mk(perm))
    out = {key: _np(v) for key, v in out.items()}

    def ffn(p):
        return _gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    np.testing.assert_array_equal(out["w1"], params["w1"][:, perm])
    np.testing.assert_array_equal(out["b1"], params["b1"][perm])
    np.testing.assert_array_equal(out["w2"], params["w2"][perm])
    np.testing.assert_array_equal(out["b2"], params["b2"])
    np.testing.assert_allclose(ffn(out), ffn(params), rtol=1e-12, atol=1e-12)
    # permuting w1 alone breaks it
    broken = dict(params, w1=params["w1"][:, perm])
    assert not np.allclose(ffn(broken), ffn(params))


def test_permute_ffn_accepts_a_parameter_dict():
    layer = torch.nn.ParameterDict(
        {
            "w1": torch.nn.Parameter(torch.randn(4, 8, dtype=torch.float64)),
            "b1": torch.nn.Parameter(torch.randn(8, dtype=torch.float64)),
            "w2": torch.nn.Parameter(torch.randn(8, 4, dtype=torch.float64)),
        }
    )
    perm = torch.randperm(8)
    out = T.permute_ffn(layer, perm)
    assert torch.equal(out["w2"], layer["w2"].detach()[perm])
    assert not out["w1"].requires_grad


# ===================================================================== retained metric
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 2), (3, 8)])
def test_retained_magnitude_agrees_and_matches_the_mask(n, m):
    w = _rand(10, (6, 16))
    perm = np.random.default_rng(11).permutation(16)
    wp = w[:, perm]
    expected = np.abs(wp * SR.nm_mask(wp, n, m)).sum() / np.abs(w).sum()
    for p in (perm, None):
        ref = R.retained_magnitude(w, n, m, perm=p)
        got = T.retained_magnitude(_t(w), n, m, perm=None if p is None else _t(p))
        assert isinstance(ref, float) and isinstance(got, float)
        assert got == pytest.approx(ref, rel=1e-13)
    got = R.retained_magnitude(w, n, m, perm=perm)
    assert got == pytest.approx(expected, rel=1e-13)
    assert n / m <= R.retained_magnitude(w, n, m) <= 1.0


def test_retained_magnitude_of_zero_is_one():
    assert R.retained_magnitude(np.zeros((2, 8))) == 1.0
    assert T.retained_magnitude(torch.zeros(2, 8)) == 1.0


def test_retained_magnitude_of_an_nm_weight_is_one():
    w = _rand(12, (4, 8))
    w = w * SR.nm_mask(w, 2, 4)
    assert R.retained_magnitude(w) == pytest.approx(1.0, rel=1e-15)


# ============================================================================== search
CASES = [((8, 12), 2, 4), ((16, 32), 2, 4), ((16, 24), 1, 4), ((12, 16), 1, 2)]


@pytest.mark.parametrize(
    "shape,n,m,method",
    [(*case, method) for case in CASES for method in ("identity", "greedy")]
    + [(*case, "exhaustive") for case in CASES if case[0][1] <= 12],
)
def test_search_faces_agree(shape, n, m, method):
    for seed in range(2):
        w = _rand(20 + seed, shape)
        a = R.search_permutation(w, n, m, method=method, seed=seed)
        b = T.search_permutation(_t(w), n, m, method=method, seed=seed)
        assert isinstance(a, R.PermutationResult) and isinstance(b, T.PermutationResult)
        assert a.method == b.method == method
        assert isinstance(a.perm, np.ndarray) and isinstance(b.perm, torch.Tensor)
        np.testing.assert_array_equal(a.perm, _np(b.perm))
        assert len(a.history) == len(b.history)
        np.testing.assert_allclose(a.history, b.history, rtol=1e-12, atol=0)
        assert b.retained == pytest.approx(a.retained, rel=1e-12)
        direct = R.retained_magnitude(w, n, m, a.perm)
        assert a.retained == pytest.approx(direct, rel=1e-13)
        assert sorted(a.perm.tolist()) == list(range(shape[1]))


@pytest.mark.parametrize("face", FACES)
def test_greedy_beats_identity_and_exhaustive_beats_greedy(face):
    mod, mk = face
    shares = []
    for seed in range(12):
        w = _rand(100 + seed, (16, 12))
        ident = mod.search_permutation(mk(w), method="identity")
        greedy = mod.search_permutation(mk(w), method="greedy")
        best = mod.search_permutation(mk(w), method="exhaustive")
        assert ident.retained == pytest.approx(mod.retained_magnitude(mk(w)), rel=1e-14)
        assert ident.history == [ident.retained]
        assert greedy.retained >= ident.retained - 1e-15
        assert best.retained >= greedy.retained - 1e-12
        assert max(greedy.history) <= best.retained + 1e-12
        gain = best.retained - ident.retained
        shares.append((greedy.retained - ident.retained) / gain)
    # measured: min 0.977, mean 0.999 over 30 matrices; pinned wide
    assert min(shares) >= 0.8 and np.mean(shares) >= 0.95


def test_greedy_gains_on_a_planted_permutation():
    # an exactly 2:4 weight whose columns were shuffled: the identity loses magnitude,
    # the search finds an order that keeps (nearly) all of it
    w = _rand(30, (32, 64))
    w = w * SR.nm_mask(w, 2, 4)
    shuffled = w[:, np.random.default_rng(31).permutation(64)]
    before = R.retained_magnitude(shuffled)
    res = T.search_permutation(_t(shuffled))
    assert before < 0.9
    assert res.retained > before + 0.05
    assert res.history[0] == pytest.approx(before, rel=1e-13)


def test_greedy_history_and_bounds():
    w = _rand(40, (8, 32))
    res = R.search_permutation(w, max_regressions=0)
    # without regressions every swap gains
    steps = np.diff(res.history)
    assert len(res.history) >= 2
    assert np.all(steps[:-1] > 0) or len(steps) == 1
    limited = R.search_permutation(w, max_iters=1)
    assert len(limited.history) == 2
    none = R.search_permutation(w, max_iters=0)
    np.testing.assert_array_equal(none.perm, np.arange(32))


def test_exhaustive_count_and_limit():
    assert R.n_assignments(8, 4) == 35
    assert R.n_assignments(12, 4) == 5775
    with pytest.raises(ValueError, match="EXHAUSTIVE_LIMIT"):
        R.search_permutation(_rand(0, (2, 16)), method="exhaustive")
    with pytest.raises(ValueError, match="EXHAUSTIVE_LIMIT"):
        T.search_permutation(torch.randn(2, 16), method="exhaustive")


def test_window_sizes():
    w = _rand(50, (8, 24))
    three = R.search_permutation(w, stripes_per_window=3)
    assert three.retained >= R.retained_magnitude(w)
    res = T.search_permutation(_t(w), stripes_per_window=3)
    np.testing.assert_array_equal(three.perm, _np(res.perm))
    for face, mk in ((R, np.asarray), (T, _t)):
        with pytest.raises(ValueError, match="WINDOW_LIMIT"):
            face.search_permutation(mk(w), stripes_per_window=4)
        with pytest.raises(ValueError, match="stripes_per_window"):
            face.search_permutation(mk(w), stripes_per_window=1)
    # at m = 2 four stripes are 105 assignments: allowed
    R.search_permutation(w, 1, 2, stripes_per_window=4, max_iters=3)


def test_zero_weight_search():
    res = T.search_permutation(torch.zeros(3, 8))
    assert res.retained == 1.0 and torch.equal(res.perm, torch.arange(8))


# ========================================================================= bad inputs
@pytest.mark.parametrize("face", FACES)
def test_bad_inputs(face):
    mod, mk = face
    w = mk(_rand(0, (4, 8)))
    with pytest.raises(ValueError, match="m must divide"):
        mod.retained_magnitude(mk(_rand(0, (4, 6))))
    with pytest.raises(ValueError, match="n must be < m"):
        mod.retained_magnitude(w, 4, 4)
    with pytest.raises(TypeError, match="n must be an int"):
        mod.search_permutation(w, 2.0)
    with pytest.raises(ValueError, match="method"):
        mod.search_permutation(w, method="random")
    with pytest.raises(ValueError, match="perm must be a permutation"):
        mod.retained_magnitude(w, perm=mk(np.array([0, 0, 1, 2, 3, 4, 5, 6])))
    with pytest.raises(ValueError, match="perm must be a 1-D permutation"):
        mod.retained_magnitude(w, perm=mk(np.arange(4)))
    with pytest.raises(ValueError, match="finite"):
        mod.search_permutation(mk(np.full((2, 8), np.nan)))
    with pytest.raises(ValueError, match="2 dimensions|ndim|dimension"):
        mod.search_permutation(mk(np.ones(8)))
    with pytest.raises(ValueError, match="max_regressions"):
        mod.search_permutation(w, max_regressions=-1)
    with pytest.raises(ValueError, match="q and k must share"):
        mod.permute_qk(mk(_rand(0, (3, 4))), mk(_rand(0, (3, 5))), mk(np.arange(4)))
    with pytest.raises(ValueError, match="missing"):
        mod.permute_ffn({"w1": mk(_rand(0, (2, 4)))}, mk(np.arange(4)))
    with pytest.raises(ValueError, match="one d and one d_ff"):
        mod.permute_ffn(
            {
                "w1": mk(_rand(0, (2, 4))),
                "b1": mk(_rand(0, (4,))),
                "w2": mk(_rand(0, (5, 2))),
            },
            mk(np.arange(4)),
        )


def test_wrong_face_hints():
    with pytest.raises(TypeError, match="torch_ops"):
        R.search_permutation(torch.randn(2, 8))
    with pytest.raises(TypeError, match="reference"):
        T.search_permutation(np.ones((2, 8)))
