"""Tests of training sparse weights from scratch (04.3): the faces' update rules (STE,
SR-STE, Top-KAST) agree in float64 and have the properties they document, and the
hooks of effx_lab.nm.sparse_training train the shared LM and nn.Linear models with
sparse forward passes, dense weights, hard masks after finalize()."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from effx_lab.data.pools import token_splits
from effx_lab.models.lm import LM, LMSpec
from effx_lab.models.training import next_token_loss, train
from effx_lab.nm import reference as R
from effx_lab.nm import sparse_training as SPT
from effx_lab.nm import torch_ops as T
from effx_lab.sparse import masks as SM
from effx_lab.sparse import reference as SR
from effx_lab.sparse import torch_ops as ST


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def _rand(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


FACES = [
    pytest.param((R, np.asarray), id="reference"),
    pytest.param((T, _t), id="torch"),
]


# ============================================================ the faces agree (float64)
@pytest.mark.parametrize("shape", [(8,), (6, 12), (3, 4, 8)])
def test_ste_and_srste_agree(shape):
    w, g = _rand(0, shape), _rand(1, shape)
    mask = SR.nm_mask(w, 2, 4) if shape[-1] % 4 == 0 else w > 0
    np.testing.assert_array_equal(
        _np(T.ste_weight(_t(w), _t(mask))), R.ste_weight(w, mask)
    )
    for decay in (0.0, 2e-4, 0.5):
        ref = R.srste_grad(w, g, mask, decay)
        np.testing.assert_allclose(
            _np(T.srste_grad(_t(w), _t(g), _t(mask), decay)), ref, rtol=0, atol=1e-15
        )
        ref_step = R.srste_step(w, g, mask, 0.1, decay)
        got = T.srste_step(_t(w), _t(g), _t(mask), 0.1, decay)
        np.testing.assert_allclose(_np(got), ref_step, rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape", [(7,), (8, 12), (2, 5, 6)])
@pytest.mark.parametrize("dens", [(0.5, 0.75), (0.1, 0.1), (0.3, 1.0), (1.0, 1.0)])
def test_topkast_agrees(shape, dens):
    w = _rand(2, shape)
    w.reshape(-1)[:4] = 0.25  # ties
    a, b = R.topkast_masks(w, *dens)
    ta, tb = T.topkast_masks(_t(w), *dens)
    np.testing.assert_array_equal(_np(ta), a)
    np.testing.assert_array_equal(_np(tb), b)
    ref = R.topkast_penalty(w, a, b)
    got = T.topkast_penalty(_t(w), ta, tb)
    assert got.ndim == 0 and float(got) == pytest.approx(ref, rel=1e-14)


# ============================================================ properties of the rules
@pytest.mark.parametrize("face", FACES)
def test_ste_weight_is_w_on_the_mask_and_exactly_zero_elsewhere(face):
    F, arr = face
    w = _rand(3, (8, 16))
    mask = SR.nm_mask(w, 2, 4)
    out = _np(F.ste_weight(arr(w), arr(mask)))
    assert np.array_equal(out[mask], w[mask]) and np.all(out[~mask] == 0)
    assert out.dtype == w.dtype


def test_torch_ste_weight_passes_the_gradient_straight_through():
    w = torch.tensor(_rand(4, (6, 8)), requires_grad=True)
    mask = ST.nm_mask(w.detach(), 2, 4)
    T.ste_weight(w, mask).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # not the mask: pruned entries too
    # a weighted loss: the gradient of each entry is its weight, masked or not
    w.grad = None
    c = torch.tensor(_rand(5, (6, 8)))
    (T.ste_weight(w, mask) * c).sum().backward()
    assert torch.equal(w.grad, c)


@pytest.mark.parametrize("face", FACES)
def test_srste_decays_only_the_pruned_weights(face):
    F, arr = face
    w, g = _rand(6, (4, 8)), _rand(7, (4, 8))
    mask = SR.nm_mask(w, 2, 4)
    got = _np(F.srste_grad(arr(w), arr(g), arr(mask), 0.3))
    np.testing.assert_array_equal(got[mask], g[mask])
    np.testing.assert_allclose(got[~mask], g[~mask] + 0.3 * w[~mask], rtol=1e-15)
    np.testing.assert_array_equal(_np(F.srste_grad(arr(w), arr(g), arr(mask), 0.0)), g)
    step = _np(F.srste_step(arr(w), arr(g), arr(mask), 0.1, 0.3))
    np.testing.assert_allclose(step, w - 0.1 * got, rtol=0, atol=1e-15)


@pytest.mark.parametrize("face", FACES)
def test_topkast_masks_exact_counts_nested_and_ties_by_position(face):
    F, arr = face
    w = _rand(8, (10, 10))
    a, b = (_np(x) for x in F.topkast_masks(arr(w), 0.3, 0.45))
    assert a.sum() == 30 and b.sum() == 45 and not np.any(a & ~b)
    assert np.abs(w[a]).min() >= np.abs(w[~a]).max()
    assert np.abs(w[b]).min() >= np.abs(w[~b]).max()
    flat = np.ones(8)  # all tied: the later entries are kept first
    a, b = (_np(x) for x in F.topkast_masks(arr(flat), 0.25, 0.5))
    np.testing.assert_array_equal(a, [False] * 6 + [True] * 2)
    np.testing.assert_array_equal(b, [False] * 4 + [True] * 4)


@pytest.mark.parametrize("face", FACES)
def test_topkast_penalty_is_l2_on_a_and_scaled_by_one_over_d_on_b_minus_a(face):
    F, arr = face
    w = _rand(9, (8, 8))
    a, b = R.topkast_masks(w, 0.25, 0.5)
    want = (w[a] ** 2).sum() + (w[b & ~a] ** 2).sum() / 0.25
    assert float(F.topkast_penalty(arr(w), arr(a), arr(b))) == pytest.approx(want)
    # B == A: an ordinary L2 penalty on the forward weights; outside B nothing counts
    assert float(F.topkast_penalty(arr(w), arr(a), arr(a))) == pytest.approx(
        (w[a] ** 2).sum()
    )


def test_torch_topkast_penalty_gradient():
    w = torch.tensor(_rand(10, (6, 8)), requires_grad=True)
    a, b = T.topkast_masks(w.detach(), 0.25, 0.5)
    T.topkast_penalty(w, a, b).backward()
    wd = w.detach()
    want = torch.where(a, 2 * wd, torch.where(b, 2 * wd / 0.25, torch.zeros(())))
    torch.testing.assert_close(w.grad, want, rtol=1e-14, atol=0)


# ============================================================= bad input, both faces
@pytest.mark.parametrize("face", FACES)
def test_the_rules_name_bad_input(face):
    F, arr = face
    w = _rand(11, (4, 8))
    m = arr(SR.nm_mask(w, 2, 4))
    W = arr(w)
    with pytest.raises(TypeError, match="w must be a float"):
        F.ste_weight([1.0, 2.0], m)
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        F.ste_weight(W, arr(np.ones((4, 8))))
    with pytest.raises(ValueError, match="mask must have the shape of w"):
        F.ste_weight(W, arr(np.ones((4, 4), dtype=bool)))
    with pytest.raises(ValueError, match="w must contain only finite"):
        F.ste_weight(arr(np.full((4, 8), np.nan)), m)
    with pytest.raises(ValueError, match="grad must have the shape of w"):
        F.srste_grad(W, arr(np.ones((8, 4))), m, 1e-4)
    with pytest.raises(ValueError, match="decay must be"):
        F.srste_grad(W, W, m, -1.0)
    with pytest.raises(ValueError, match="lr must be"):
        F.srste_step(W, W, m, 0.0, 1e-4)
    with pytest.raises(ValueError, match="forward_density must be"):
        F.topkast_masks(W, 0.0, 0.5)
    with pytest.raises(ValueError, match="backward_density must be"):
        F.topkast_masks(W, 0.5, 1.5)
    with pytest.raises(ValueError, match="backward_density must be >= forward_density"):
        F.topkast_masks(W, 0.5, 0.25)
    with pytest.raises(TypeError, match="forward_density must be a real number"):
        F.topkast_masks(W, True, 0.5)
    a, b = F.topkast_masks(W, 0.25, 0.5)
    with pytest.raises(ValueError, match="A must be a subset of B"):
        F.topkast_penalty(W, b, a)
    none = arr(np.zeros((4, 8), dtype=bool))
    with pytest.raises(ValueError, match="A must keep at least one entry"):
        F.topkast_penalty(W, none, b)


# ================================================================ the hooks: shared LM
def _spec(d: int = 16, layers: int = 1) -> LMSpec:
    return LMSpec(
        mixer="softmax", ffn="gelu", vocab_size=256, d_model=d, n_layers=layers,
        max_len=16, mixer_options={"n_heads": 2},
    )  # fmt: skip


@pytest.fixture(scope="module")
def tokens():
    return token_splits()[0][:20_000]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (2, 12), generator=g)
    return x, torch.roll(x, -1, 1)


def _lm_is_nm(model: LM, n: int = 2, m: int = 4) -> bool:
    for mod, key, axis in SPT.sparse_targets(model).values():
        assert axis == 0
        w = mod._parameters[key].detach().t()  # (in, out) -> (out, in)
        if bool(((w != 0).reshape(w.shape[0], -1, m).sum(-1) > n).any()):
            return False
    return True


def test_targets_of_the_lm_and_of_linear_models():
    model = LM(_spec(layers=2), seed=0)
    names = list(SPT.sparse_targets(model))
    keys = ("w1", "w2", "wk", "wo", "wq", "wv")
    assert names == [f"layers.{i}.{k}" for i in range(2) for k in keys]
    assert len(names) == 12
    seq = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert list(SPT.sparse_targets(seq)) == ["0.weight", "2.weight"]
    assert list(SPT.sparse_targets(seq, ["2.weight"])) == ["2.weight"]
    with pytest.raises(ValueError, match="include must name weights of the model"):
        SPT.sparse_targets(seq, ["fc.weight"])
    with pytest.raises(TypeError, match="include must be None or a list"):
        SPT.sparse_targets(seq, "0.weight")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        SPT.sparse_targets("model")
    with pytest.raises(ValueError, match="model must have weights to sparsify"):
        SPT.sparse_targets(nn.ReLU())


def test_nm_forward_uses_the_masked_weights_and_keeps_the_dense_ones():
    model = LM(_spec(), seed=0)
    dense = copy.deepcopy(model)
    nm = SPT.NMSparseTraining(model, 2, 4, method="ste")
    # a copy of the dense model with its weights masked by hand gives the same logits
    by_hand = copy.deepcopy(dense)
    with torch.no_grad():
        for name, mask in nm.masks().items():
            i, key = name.split(".")[1:]
            w = by_hand.layers[int(i)][key]
            w.mul_(mask)
            # the LM stores (in, out): groups of 4 along the input axis 0
            assert bool(((w.t() != 0).reshape(w.shape[1], -1, 4).sum(-1) <= 2).all())
    x, _ = _batch()
    torch.testing.assert_close(model(x), by_hand(x), rtol=0, atol=0)
    # the stored parameter is still the dense weight
    for name in nm.names:
        i, key = name.split(".")[1:]
        assert torch.equal(nm.dense_weight(name), dense.layers[int(i)][key])


def test_ste_gradient_reaches_pruned_weights_and_srste_adds_the_decay():
    x, y = _batch(1)
    grads = {}
    for method, decay in (("ste", 0.0), ("srste", 0.05)):
        model = LM(_spec(), seed=0)
        nm = SPT.NMSparseTraining(model, method=method, decay=decay)
        next_token_loss(model, x, y).backward()
        grads[method] = {n: nm.dense_weight(n).grad.clone() for n in nm.names}
        masks, weights = nm.masks(), {n: nm.dense_weight(n).detach() for n in nm.names}
    for n in grads["ste"]:
        pruned = ~masks[n]
        assert bool((grads["ste"][n][pruned] != 0).any())  # straight through
        want = T.srste_grad(weights[n], grads["ste"][n], masks[n], 0.05)
        torch.testing.assert_close(grads["srste"][n], want, rtol=1e-6, atol=1e-9)


def test_train_with_the_hook_then_finalize_gives_a_lasting_nm_model(tokens):
    model = LM(_spec(), seed=0)
    nm = SPT.NMSparseTraining(model, method="srste", decay=2e-4)
    kw = dict(batch_size=2, seq_len=16, lr=3e-3, seed=0)
    train(model, tokens, steps=5, after_step=[nm], **kw)
    assert [h["step"] for h in nm.history] == [1, 2, 3, 4, 5]
    assert all(0 <= h["fraction"] <= 1 for h in nm.history)
    assert sum(h["flips"] for h in nm.history) > 0
    x, _ = _batch(2)
    before = model(x)
    masks = nm.finalize()
    assert isinstance(masks, SM.MaskSet) and masks.sparsity() == pytest.approx(0.5)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # same function
    assert _lm_is_nm(model)
    assert "layers.0.w1" in dict(model.named_parameters())  # no parametrization left
    train(model, tokens, steps=5, after_step=[masks], **kw)  # AdamW, hard masks
    assert _lm_is_nm(model)
    with pytest.raises(RuntimeError, match="finalized"):
        nm(model, 6)


def test_the_hook_works_on_linear_models_and_respects_include():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    nm = SPT.NMSparseTraining(model, 1, 4, include=["2.weight"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(5, 8)
    for step in range(1, 4):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
        nm(model, step)
    nm.finalize()
    w2, w0 = model[2].weight, model[0].weight
    assert bool(((w2 != 0).reshape(8, -1, 4).sum(-1) <= 1).all())
    assert bool((w0 != 0).all())  # not included: dense


def test_topkast_forward_on_a_gradient_on_b_and_the_penalty_as_its_gradient():
    x, y = _batch(3)
    model = LM(_spec(), seed=0)
    reference = copy.deepcopy(model)
    tk = SPT.TopKAST(model, 0.5, 0.75, penalty=0.01)
    loss = next_token_loss(model, x, y)
    loss.backward()
    # the same forward and loss built by hand with the faces; the penalty as a loss
    parts, total = {}, torch.zeros((), dtype=torch.float32)
    masked = copy.deepcopy(reference)
    for name in tk.names:
        i, key = name.split(".")[1:]
        w = reference.layers[int(i)][key]
        a, b = T.topkast_masks(w.detach(), 0.5, 0.75)
        parts[name] = (a, b)
        total = total + 0.01 * T.topkast_penalty(w, a, b)
        with torch.no_grad():
            masked.layers[int(i)][key].mul_(a)
    torch.testing.assert_close(loss, next_token_loss(masked, x, y), rtol=0, atol=0)
    # gradients: zero outside B; on B those of the masked model plus the penalty's
    (next_token_loss(masked, x, y)).backward()
    total.backward()
    for name, (a, b) in parts.items():
        i, key = name.split(".")[1:]
        got = tk.dense_weight(name).grad
        assert bool((got[~b] == 0).all())
        want = masked.layers[int(i)][key].grad + reference.layers[int(i)][key].grad
        torch.testing.assert_close(got[b], want[b], rtol=1e-5, atol=1e-7)
    want_penalty = float(total.detach()) / 0.01
    assert float(tk.penalty_value()) == pytest.approx(want_penalty, rel=1e-5)
    sp = tk.finalize()
    assert sp.sparsity() == pytest.approx(0.5)


def test_the_hooks_name_bad_input():
    model = LM(_spec(), seed=0)
    with pytest.raises(ValueError, match="method must be one of"):
        SPT.NMSparseTraining(model, method="sgd")
    with pytest.raises(ValueError, match="decay must be"):
        SPT.NMSparseTraining(model, method="srste", decay=-1.0)
    with pytest.raises(ValueError, match="n must be < m"):
        SPT.NMSparseTraining(model, 4, 4)
    with pytest.raises(ValueError, match="m must divide the input width"):
        SPT.NMSparseTraining(model, 2, 32)
    with pytest.raises(ValueError, match="backward_density must be >= forward"):
        SPT.TopKAST(model, 0.5, 0.25)
    with pytest.raises(ValueError, match="penalty must be"):
        SPT.TopKAST(model, 0.5, 0.75, penalty=-1.0)
    # nothing was attached by the failed constructors
    assert "layers.0.w1" in dict(model.named_parameters())
    nm = SPT.NMSparseTraining(model)
    with pytest.raises(ValueError, match="already parametrized"):
        SPT.TopKAST(model, 0.5, 0.75)
    with pytest.raises(ValueError, match="model must be the model this hook"):
        nm(LM(_spec(), seed=1), 1)
    with pytest.raises(ValueError, match="step must be"):
        nm(model, -1)
    with pytest.raises(ValueError, match="name must be one of"):
        nm.dense_weight("w1")


def test_a_numpy_grad_rule_drives_srste_like_the_built_in_rule():
    x, y = _batch(4)
    grads = []
    for rule in (None, R.srste_grad):
        model = LM(_spec(), seed=0)
        nm = SPT.NMSparseTraining(model, method="srste", decay=0.05, grad_rule=rule)
        next_token_loss(model, x, y).backward()
        grads.append({n: nm.dense_weight(n).grad.clone() for n in nm.names})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-6, atol=1e-9)

    def wrong_shape(w, grad, mask, decay):
        return grad.T  # (in, out): the LM's layout, not the rule's

    model = LM(_spec(), seed=0)
    SPT.NMSparseTraining(model, method="srste", grad_rule=wrong_shape)
    with pytest.raises(ValueError, match="grad_rule must return the gradient"):
        next_token_loss(model, x, y).backward()
    with pytest.raises(TypeError, match="grad_rule must be None or a callable"):
        SPT.NMSparseTraining(LM(_spec(), seed=0), method="srste", grad_rule=3)
    with pytest.raises(ValueError, match="grad_rule goes with method='srste'"):
        SPT.NMSparseTraining(LM(_spec(), seed=0), method="ste", grad_rule=R.srste_grad)
