"""The guarantees of the whole-model verb effx_lab.nm.models.sparsify_ (and of
sparsify_minilm):

* every selected weight is N:M along its INPUT dimension: axis 0 of the LM's stored
  (in, out) weights, the last axis of TinyLM's nn.Linear (out, in) weights;
* the masks keep it N:M through the course's training loop with AdamW and through
  copy.deepcopy;
* permute=True reorders the FFN hidden units: before the mask the model computes the
  same function (float64), and the mask of the FFN's second weight keeps at least as
  much magnitude as without the permutation;
* bad input raises a named error and leaves the model bit-identical.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from effx_lab.models import TinyLMConfig, lm, training
from effx_lab.models import torch_ops as MT
from effx_lab.nm import models as NM
from effx_lab.nm import torch_ops as T
from effx_lab.nm.configs import NMConfig
from effx_lab.sparse import torch_ops as ST

VOCAB, D, HEADS, LAYERS, MAXLEN, D_FF = 32, 16, 4, 2, 24, 32
TINY = TinyLMConfig(
    vocab_size=VOCAB, d_model=D, n_heads=HEADS, n_layers=LAYERS, max_seq_len=MAXLEN
)
SPEC = lm.LMSpec(
    vocab_size=VOCAB, d_model=D, n_layers=LAYERS, max_len=MAXLEN,
    mixer_options={"n_heads": HEADS}, ffn_options={"d_ff": D_FF},
)  # fmt: skip
TRAIN = dict(batch_size=4, seq_len=16, lr=3e-2, weight_decay=0.1, betas=(0.9, 0.95))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make(arch: str, seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    if arch == "lm":
        model = lm.LM(SPEC, seed=seed)
    else:
        model = MT.TinyLM.from_config(TINY, seed=seed)
    model = model.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _stream(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(1, 14), n // 13 + 1)[:n]
    return np.where(rng.random(n) < 0.1, rng.integers(0, VOCAB, n), base)


def _x(batch: int = 2, n: int = 12, seed: int = 1) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    return torch.from_numpy(gen.integers(0, VOCAB, (batch, n)))


def _linear_layout(model, name: str, p: torch.Tensor) -> torch.Tensor:
    """The weight as (out, in): the LM stores (in, out)."""
    return p.detach().T if isinstance(model, lm.LM) else p.detach()


def _all_nm(model, n=2, m=4) -> bool:
    weights = NM.nm_weights(model)
    assert weights
    return all(
        T.is_nm(_linear_layout(model, k, p), n, m) for k, (p, _) in weights.items()
    )


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("arch", ["lm", "tinylm"])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4)])
def test_groups_run_along_the_input_dimension(arch, n, m):
    model = _make(arch)
    dense = {k: p.detach().clone() for k, (p, _) in NM.nm_weights(model).items()}
    assert NM.sparsify_(model, NMConfig(n=n, m=m)) is model
    assert _all_nm(model, n, m)
    masks = NM.mask_set(model)
    assert list(masks) == list(NM.nm_weights(model))
    for k, (p, axis) in NM.nm_weights(model).items():
        assert axis == (0 if arch == "lm" else 1)
        w = _linear_layout(model, k, p)
        # exactly the N:M mask of the dense weight, along the input dimension
        expected = ST.nm_mask(_linear_layout(model, k, dense[k]), n, m)
        assert torch.equal(w != 0, expected)
        # along the other dimension it is not N:M: the axis matters
        assert not T.is_nm(w.T.contiguous(), n, m)
        assert masks[k].sparsity == pytest.approx(1 - n / m)


def test_include_selects_weights_and_modules():
    model = _make("lm")
    NM.sparsify_(model, NMConfig(include=("layers.0.w2", "layers.1")))
    names = list(NM.mask_set(model))
    layer1 = [k for k in NM.nm_weights(model) if k.startswith("layers.1.")]
    assert names == ["layers.0.w2", *layer1]
    assert not T.is_nm(model.layers[0]["wq"].detach().T)


# ------------------------------------------------------------------ through training
@pytest.mark.parametrize("arch", ["lm", "tinylm"])
@pytest.mark.parametrize("hook", [False, True], ids=["no-hook", "after_step-hook"])
def test_nm_survives_adamw(arch, hook):
    model = NM.sparsify_(_make(arch), NMConfig())
    masks = NM.mask_set(model)
    before = {k: m.param.detach().clone() for k, m in masks.items()}
    run = training.train(
        model, _stream(), steps=6, seed=3, after_step=[masks] if hook else (), **TRAIN
    )
    assert run.steps == 6 and _all_nm(model)
    moved = sum(int((m.param != before[k]).sum()) for k, m in masks.items())
    assert moved > 0  # training did move the kept weights


def test_without_masks_adamw_breaks_nm():
    model = NM.sparsify_(_make("lm"), NMConfig())
    NM.mask_set(model).remove()  # zeros stay, hooks go
    assert _all_nm(model)
    training.train(model, _stream(), steps=3, seed=3, **TRAIN)
    assert not _all_nm(model)


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_nm_survives_deepcopy(arch):
    model = NM.sparsify_(_make(arch), NMConfig())
    twin = copy.deepcopy(model)
    assert list(NM.mask_set(twin)) == list(NM.mask_set(model))
    training.train(twin, _stream(), steps=4, seed=5, **TRAIN)
    assert _all_nm(twin)


# ------------------------------------------------------------------------ permutation
def _lm_permuted_by_hand(model: lm.LM, config: NMConfig) -> lm.LM:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in out.layers:
            perm, _, _ = NM.ffn_permutation(layer["w2"].detach().T, config)
            new = T.permute_ffn(layer, perm)
            for key in ("w1", "b1", "w2"):
                layer[key].copy_(new[key])
    return out


def test_permuted_lm_is_the_same_function_then_masked():
    config = NMConfig(permute=True, search_iters=200)
    base = _make("lm", dtype=torch.float64)
    by_hand = _lm_permuted_by_hand(base, config)
    x = _x()
    with torch.no_grad():
        ref, same = base(x), by_hand(x)
    torch.testing.assert_close(same, ref, rtol=1e-12, atol=1e-12)
    # the verb gives the by-hand permutation, then the N:M mask of it
    model = NM.sparsify_(copy.deepcopy(base), config)
    assert _all_nm(model)
    for i, (layer, hand) in enumerate(zip(model.layers, by_hand.layers)):
        assert torch.equal(layer["b1"], hand["b1"]), i
        for key in ("w1", "w2"):
            w = hand[key].detach()
            mask = ST.nm_mask(w, 2, 4, axis=0)
            assert torch.equal(layer[key].detach(), torch.where(mask, w, 0.0)), (i, key)
        # the permutation keeps at least the magnitude the identity keeps
        kept_perm = float(layer["w2"].detach().abs().sum())
        dense = base.layers[i]["w2"].detach()
        kept_id = float((dense * ST.nm_mask(dense, 2, 4, axis=0)).abs().sum())
        assert kept_perm >= kept_id - 1e-12
        # and it did move something (the test can fail)
        assert not torch.equal(layer["b1"], base.layers[i]["b1"])


def test_permuted_tinylm_is_the_same_function_then_masked():
    config = NMConfig(permute=True, search_iters=200)
    base = _make("tinylm", dtype=torch.float64)
    model = NM.sparsify_(copy.deepcopy(base), config)
    assert _all_nm(model)
    unmasked = copy.deepcopy(base)
    with torch.no_grad():
        for blk, new in zip(unmasked.layers, model.layers):
            w2 = blk.mlp.fc2.weight.detach()
            perm, before, after = NM.ffn_permutation(w2, config)
            assert after >= before
            blk.mlp.fc1.weight.copy_(blk.mlp.fc1.weight[perm])
            blk.mlp.fc1.bias.copy_(blk.mlp.fc1.bias[perm])
            blk.mlp.fc2.weight.copy_(w2[:, perm])
            assert torch.equal(new.mlp.fc1.bias, blk.mlp.fc1.bias)
            for name in ("fc1", "fc2"):
                w = getattr(blk.mlp, name).weight.detach()
                expected = torch.where(ST.nm_mask(w, 2, 4), w, 0.0)
                assert torch.equal(getattr(new.mlp, name).weight, expected), name
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(unmasked(x), base(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- bad input
def _check_untouched(model, call, error, match):
    state, masks = _state(model), list(NM.mask_set(model))
    with pytest.raises(error, match=match):
        call()
    assert _same_state(_state(model), state)
    assert list(NM.mask_set(model)) == masks


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_bad_input_leaves_the_model_unchanged(arch):
    model = _make(arch)
    cases = [
        ({"n": 2}, TypeError, "NMConfig"),
        (NMConfig(include=("nope",)), ValueError, "nope"),
        (NMConfig(n=2, m=5), ValueError, "m must divide"),
    ]
    for config, error, match in cases:
        _check_untouched(model, lambda: NM.sparsify_(model, config), error, match)
    NM.sparsify_(model, NMConfig())
    _check_untouched(
        model,
        lambda: NM.sparsify_(model, NMConfig(permute=True)),
        ValueError,
        "already carries a mask",
    )
    with pytest.raises(TypeError, match="torch.nn.Module"):
        NM.sparsify_("model", NMConfig())


def test_sparsifying_again_updates_the_masks():
    model = NM.sparsify_(_make("lm"), NMConfig(n=2, m=4))
    NM.sparsify_(model, NMConfig(n=1, m=4))
    assert _all_nm(model, 1, 4)
    assert NM.mask_set(model)["layers.0.w1"].sparsity == pytest.approx(0.75)


def test_config_validation():
    assert NMConfig().n == 2 and NMConfig().m == 4 and NMConfig().permute is False
    assert NMConfig(include="layers.0").include == ("layers.0",)
    with pytest.raises(ValueError, match="n must be < m"):
        NMConfig(n=4, m=4)
    with pytest.raises(TypeError, match="permute must be a bool"):
        NMConfig(permute=1)
    with pytest.raises(TypeError, match="include"):
        NMConfig(include=(1,))
    with pytest.raises(ValueError, match="twice"):
        NMConfig(include=("a", "a"))
    with pytest.raises(ValueError, match="search_iters"):
        NMConfig(search_iters=-1)


# ---------------------------------------------------------------------------- MiniLM
def _fake_minilm(seed: int = 0, d: int = 8, d_ff: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pre = "encoder.layer.0."
    shapes = {
        "attention.self.query": (d, d),
        "attention.self.key": (d, d),
        "attention.self.value": (d, d),
        "attention.output.dense": (d, d),
        "intermediate.dense": (d_ff, d),
        "output.dense": (d, d_ff),
    }
    emb = rng.standard_normal((10, d)).astype(np.float32)
    out = {"embeddings.word_embeddings.weight": emb}
    for name, shape in shapes.items():
        out[pre + name + ".weight"] = rng.standard_normal(shape).astype(np.float32)
        out[pre + name + ".bias"] = rng.standard_normal(shape[0]).astype(np.float32)
    return out


def test_sparsify_minilm():
    params = _fake_minilm()
    copy_in = {k: v.copy() for k, v in params.items()}
    out, report = NM.sparsify_minilm(params, NMConfig(permute=True, search_iters=100))
    assert all(np.array_equal(params[k], copy_in[k]) for k in params)  # not modified
    emb = "embeddings.word_embeddings.weight"
    assert out[emb] is params[emb]  # shared, not copied
    linear = [k for k in params if k.endswith(".weight") and "layer" in k]
    assert [r["name"] for r in report] == linear
    pre = "encoder.layer.0."
    for r in report:
        assert T.is_nm(torch.from_numpy(out[r["name"]]))
        assert r["retained"] >= r["retained_identity"]
    w2 = next(r for r in report if r["name"] == "encoder.layer.0.output.dense.weight")
    assert w2["retained"] > w2["retained_identity"] and w2["search_s"] > 0
    # only output.dense selected: intermediate.dense is permuted, not masked, and the
    # FFN before the mask is the same function (rows of w1 / b1, columns of w2 alike)
    only = NMConfig(permute=True, search_iters=100, include=pre + "output.dense")
    out, report = NM.sparsify_minilm(params, only)
    assert [r["name"] for r in report] == [pre + "output.dense.weight"]
    x = np.random.default_rng(1).standard_normal((5, 8))

    def ffn(w1, b1, w2):
        return np.maximum(x @ w1.T + b1, 0) @ w2.T

    b1 = params[pre + "intermediate.dense.bias"]  # distinct random values
    new_b1 = out[pre + "intermediate.dense.bias"]
    perm = [int(np.flatnonzero(b1 == b)[0]) for b in new_b1]
    assert sorted(perm) == list(range(32)) and perm != list(range(32))
    w1 = params[pre + "intermediate.dense.weight"]
    np.testing.assert_array_equal(out[pre + "intermediate.dense.weight"], w1[perm])
    w2 = params[pre + "output.dense.weight"]
    w2p = w2[:, perm]
    np.testing.assert_allclose(
        ffn(w1[perm], b1[perm], w2p), ffn(w1, b1, w2), rtol=1e-5, atol=1e-5
    )
    kept = out[pre + "output.dense.weight"] != 0
    np.testing.assert_array_equal(out[pre + "output.dense.weight"][kept], w2p[kept])
    assert T.is_nm(torch.from_numpy(out[pre + "output.dense.weight"]))
    with pytest.raises(ValueError, match="found none"):
        NM.sparsify_minilm({"a": np.ones(3)}, NMConfig())
    with pytest.raises(TypeError, match="NMConfig"):
        NM.sparsify_minilm(params, None)
