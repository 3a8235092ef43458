"""Tests of effx_lab.prune.models besides the verb's guarantees (test_prune_verb.py):
what is prunable, include and scope, Michel et al.'s Taylor importance against explicit
gates (float64), TinyLM's PrunedAttention, and MiniLM's pruned parameter dicts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from effx_lab.data import get_batch
from effx_lab.models import TinyLMConfig, lm
from effx_lab.models import torch_ops as MT
from effx_lab.models.config import MiniLMConfig
from effx_lab.models.surgery import minilm_linear_names
from effx_lab.prune import models as PM
from effx_lab.prune import reference as R
from effx_lab.prune.configs import HeadConfig, MagnitudeConfig, NeuronConfig

VOCAB, D, HEADS, LAYERS, MAXLEN, D_FF = 32, 16, 4, 2, 24, 32
TINY = TinyLMConfig(
    vocab_size=VOCAB, d_model=D, n_heads=HEADS, n_layers=LAYERS, max_seq_len=MAXLEN
)
SPEC = lm.LMSpec(
    vocab_size=VOCAB, d_model=D, n_layers=LAYERS, max_len=MAXLEN,
    mixer_options={"n_heads": HEADS}, ffn_options={"d_ff": D_FF},
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _lm(seed: int = 0) -> lm.LM:
    return _perturbed(lm.LM(SPEC, seed=seed), seed)


def _tiny(seed: int = 0) -> MT.TinyLM:
    return _perturbed(MT.TinyLM.from_config(TINY, seed=seed), seed)


def _stream(n: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n)


# --------------------------------------------------------------------------------------
# what is prunable; include and scope
# --------------------------------------------------------------------------------------


def test_prunable_weights_are_the_linear_matrices_never_the_embeddings() -> None:
    names = list(PM.prunable_weights(_lm()))
    assert names == [
        f"layers.{i}.{k}" for i in range(LAYERS)
        for k in ("w1", "w2", "wk", "wo", "wq", "wv")
    ]  # fmt: skip
    tiny = list(PM.prunable_weights(_tiny()))
    assert tiny == [
        f"layers.{i}.{m}.weight" for i in range(LAYERS)
        for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]  # fmt: skip
    for model in (_lm(), _tiny()):
        params = dict(model.named_parameters())
        for name, w in PM.prunable_weights(model).items():
            assert params[name] is w and w.ndim == 2
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        PM.prunable_weights({"w": torch.zeros(2, 2)})
    assert len(PM.mask_set(_lm())) == 0


def test_include_selects_weights_and_modules_and_global_scope_shares_a_threshold():
    model = _lm()
    PM.prune_(model, MagnitudeConfig(0.5, include=("layers.1", "layers.0.wq")))
    assert list(PM.mask_set(model)) == [
        "layers.0.wq", "layers.1.w1", "layers.1.w2", "layers.1.wk", "layers.1.wo",
        "layers.1.wq", "layers.1.wv",
    ]  # fmt: skip
    tiny = _tiny()
    with torch.no_grad():  # make fc1 of layer 0 ten times smaller: global pruning
        tiny.layers[0].mlp.fc1.weight.mul_(0.1)  # takes it almost whole
    PM.prune_(tiny, MagnitudeConfig(0.3, scope="global", include=("layers.0.mlp",)))
    masks = PM.mask_set(tiny)
    assert list(masks) == ["layers.0.mlp.fc1.weight", "layers.0.mlp.fc2.weight"]
    fc1, fc2 = masks.values()
    assert fc1.sparsity > 0.5 and fc2.sparsity < 0.1  # layer-wise would give 0.3 each
    pruned = int((~fc1.mask).sum() + (~fc2.mask).sum())
    assert pruned == round(0.3 * (fc1.mask.numel() + fc2.mask.numel()))
    assert fc1.param is tiny.layers[0].mlp.fc1.weight


def test_global_threshold_on_the_original_magnitudes() -> None:
    tiny = _tiny()
    weights = {k: w.detach().clone() for k, w in PM.prunable_weights(tiny).items()}
    PM.prune_(tiny, MagnitudeConfig(0.4, scope="global"))
    masks = PM.mask_set(tiny)
    pruned_max = max(float(weights[k][~m.mask].abs().max()) for k, m in masks.items())
    kept_min = min(float(weights[k][m.mask].abs().min()) for k, m in masks.items())
    assert pruned_max <= kept_min
    assert masks.sparsity() == pytest.approx(0.4, abs=1e-4)


# --------------------------------------------------------------------------------------
# Taylor importance against explicit gates (float64)
# --------------------------------------------------------------------------------------


def _gated_tiny_importance(model, tokens, kind, batches, batch_size, seq_len, seed):
    """|dL/dxi| with a real gate xi on each head's output (the input of proj, head by
    head) or each neuron's activation (the input of fc2), averaged over batches."""
    rng = np.random.default_rng(seed)
    total = None
    for _ in range(batches):
        x, y = get_batch(tokens, batch_size, seq_len, rng)
        gates, handles = [], []
        for block in model.layers:
            n = HEADS if kind == "heads" else block.mlp.fc1.out_features
            xi = torch.ones(n, dtype=torch.float64, requires_grad=True)
            gates.append(xi)
            if kind == "heads":
                hook = lambda m, a, xi=xi: (a[0] * xi.repeat_interleave(D // HEADS),)
                handles.append(block.attn.proj.register_forward_pre_hook(hook))
            else:
                hook = lambda m, a, xi=xi: (a[0] * xi,)
                handles.append(block.mlp.fc2.register_forward_pre_hook(hook))
        logits = model(torch.from_numpy(x))
        loss = F.cross_entropy(
            logits.reshape(-1, VOCAB), torch.from_numpy(y).reshape(-1)
        )
        grads = torch.autograd.grad(loss, gates)
        for h in handles:
            h.remove()
        g = np.stack([gr.abs().numpy() for gr in grads])
        total = g if total is None else total + g
    return total / batches


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_taylor_importance_of_tinylm_equals_explicit_gates(kind) -> None:
    model = _tiny().double()
    tokens = _stream()
    kw = dict(batches=3, batch_size=4, seq_len=12, seed=5)
    got = PM.taylor_importance(model, tokens, kind, **kw)
    want = _gated_tiny_importance(model, tokens, kind, **kw)
    assert len(got) == LAYERS and all(g.dtype == np.float64 for g in got)
    np.testing.assert_allclose(np.stack(got), want, rtol=1e-10, atol=1e-14)
    assert (np.stack(got) > 0).all()


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_taylor_importance_of_the_lm_equals_explicit_gates(kind) -> None:
    """The LM's sublayers are functional; the gate scales head h's rows of wo (or
    neuron j's row of w2) inside a functional_call, a path independent of the weight
    gradient the function reads."""
    model = _lm().double()
    tokens = _stream(seed=2)
    kw = dict(batches=2, batch_size=3, seq_len=10, seed=1)
    got = np.stack(PM.taylor_importance(model, tokens, kind, **kw))
    rng = np.random.default_rng(kw["seed"])
    want = 0.0
    params = dict(model.named_parameters())
    for _ in range(kw["batches"]):
        x, y = get_batch(tokens, kw["batch_size"], kw["seq_len"], rng)
        n = HEADS if kind == "heads" else D_FF
        gates = [
            torch.ones(n, dtype=torch.float64, requires_grad=True)
            for _ in range(LAYERS)
        ]
        swapped = dict(params)
        for i, xi in enumerate(gates):
            key = f"layers.{i}.{'wo' if kind == 'heads' else 'w2'}"
            scale = xi.repeat_interleave(D // HEADS) if kind == "heads" else xi
            swapped[key] = params[key] * scale[:, None]
        logits = torch.func.functional_call(model, swapped, (torch.from_numpy(x),))
        loss = F.cross_entropy(
            logits.reshape(-1, VOCAB), torch.from_numpy(y).reshape(-1)
        )
        grads = torch.autograd.grad(loss, gates)
        want = want + np.stack([g.abs().numpy() for g in grads])
    np.testing.assert_allclose(got, want / kw["batches"], rtol=1e-10, atol=1e-14)


def test_taylor_importance_leaves_the_model_as_it_was_and_checks_its_input() -> None:
    model = _lm()
    model.train()
    state = copy.deepcopy(model.state_dict())
    a = PM.taylor_importance(model, _stream(), "neurons", seed=3)
    b = PM.taylor_importance(model, _stream(), "neurons", seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # default seq_len: 64, or the model's max_len if shorter (24 here)
    with pytest.raises(ValueError, match=r"seq_len must be an int in \[1, 24\]"):
        PM.taylor_importance(model, _stream(), seq_len=25)
    with pytest.raises(ValueError, match="kind must be one of"):
        PM.taylor_importance(model, _stream(), "layers")
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 31\]"):
        PM.taylor_importance(model, _stream() + 40)
    with pytest.raises(ValueError, match="batches must be"):
        PM.taylor_importance(model, _stream(), batches=0)
    with pytest.raises(TypeError, match="an effx_lab.models.lm.LM or a TinyLM"):
        PM.taylor_importance(torch.nn.Linear(2, 2), _stream())
    model.layers[0]["wo"].requires_grad_(False)
    with pytest.raises(ValueError, match=r"layers \[0\] have requires_grad=False"):
        PM.taylor_importance(model, _stream())
    # after pruning, the layers report their own (smaller) number of units
    tiny = PM.prune_(_tiny(), HeadConfig(0.5))
    scores = PM.taylor_importance(tiny, _stream(), "heads", seq_len=8)
    assert [s.shape for s in scores] == [(2,), (2,)]


# --------------------------------------------------------------------------------------
# PrunedAttention and the LM's rebuilt sublayers
# --------------------------------------------------------------------------------------


def test_pruned_attention_checks_its_parts() -> None:
    qkv, proj = torch.nn.Linear(16, 24), torch.nn.Linear(8, 16)
    att = PM.PrunedAttention(qkv, proj, 2, 4, heads=(0, 3))
    assert "heads=(0, 3)" in repr(att) and att.kv_heads == 2
    with pytest.raises(ValueError, match=r"3 \* n_heads \* head_dim = 18 outputs"):
        PM.PrunedAttention(qkv, proj, 2, 3)
    with pytest.raises(ValueError, match="qkv's inputs and proj's outputs"):
        PM.PrunedAttention(qkv, torch.nn.Linear(8, 12), 2, 4)
    with pytest.raises(TypeError, match="qkv and proj must be nn.Linear"):
        PM.PrunedAttention("qkv", proj, 2, 4)
    with pytest.raises(ValueError, match="heads must be 2 head indices"):
        PM.PrunedAttention(qkv, proj, 2, 4, heads=(1,))


def test_heads_pruned_twice_keep_their_original_indices() -> None:
    tiny = _tiny()
    PM.prune_(tiny, HeadConfig(0.25))
    first = [b.attn.heads for b in tiny.layers]
    PM.prune_(tiny, HeadConfig(0.34))  # round(0.34 * 3) = 1 more head
    for b, kept in zip(tiny.layers, first):
        assert len(b.attn.heads) == 2 and set(b.attn.heads) <= set(kept)
    model = _lm()
    PM.prune_(model, HeadConfig(0.25))
    PM.prune_(model, HeadConfig(0.5))  # round(0.5 * 3) = 2: one head left
    assert model.sublayer_options(0, "mixer") == {"n_heads": 1, "head_dim": 4}
    PM.prune_(model, HeadConfig(0.5))  # round(0.5 * 1) = 0 (half to even): no change
    assert model.sublayer_options(0, "mixer") == {"n_heads": 1, "head_dim": 4}
    with pytest.raises(ValueError, match="would remove all 1 heads"):
        PM.prune_(model, HeadConfig(0.6))
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, VOCAB)


def test_gqa_tinylm_heads_are_refused() -> None:
    cfg = TinyLMConfig(
        vocab_size=VOCAB, d_model=D, n_heads=4, n_kv_heads=2, n_layers=1,
        max_seq_len=MAXLEN,
    )  # fmt: skip
    model = MT.TinyLM.from_config(cfg)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="grouped-query attention"):
        PM.prune_(model, HeadConfig(0.5))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    PM.prune_(model, NeuronConfig(0.5))  # its FFN prunes as any other
    assert model.layers[0].mlp.fc1.out_features == cfg.ffn_dim // 2


# --------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------

MINI = MiniLMConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=24, max_position_embeddings=32,
)  # fmt: skip


def _minilm_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, ff = MINI.hidden_size, MINI.intermediate_size

    def r(*shape):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    p = {
        "embeddings.word_embeddings.weight": r(MINI.vocab_size, d),
        "embeddings.position_embeddings.weight": r(MINI.max_position_embeddings, d),
        "embeddings.token_type_embeddings.weight": r(MINI.type_vocab_size, d),
        "embeddings.LayerNorm.weight": 1 + r(d),
        "embeddings.LayerNorm.bias": r(d),
    }
    shapes = {
        "attention.self.query": (d, d), "attention.self.key": (d, d),
        "attention.self.value": (d, d), "attention.output.dense": (d, d),
        "intermediate.dense": (ff, d), "output.dense": (d, ff),
    }  # fmt: skip
    for i in range(MINI.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        for name, shape in shapes.items():
            p[pre + name + ".weight"] = r(*shape)
            p[pre + name + ".bias"] = r(shape[0])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            p[pre + ln + ".weight"] = 1 + r(d)
            p[pre + ln + ".bias"] = r(d)
    return p


def _minilm_out(params, hook=None) -> torch.Tensor:
    rng = np.random.default_rng(3)
    ids = torch.from_numpy(rng.integers(1, MINI.vocab_size, (3, 9)))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    tensors = {k: torch.from_numpy(v).double() for k, v in params.items()}
    return MT.minilm_forward(tensors, MINI, ids, mask, linear=hook)


def test_prune_minilm_magnitude() -> None:
    params = _minilm_params()
    frozen = {k: v.copy() for k, v in params.items()}
    out = PM.prune_minilm(params, MagnitudeConfig(0.5, scope="global"), MINI)
    for k, v in params.items():
        assert np.array_equal(v, frozen[k]), k  # the input is not modified
    names = [n + ".weight" for n in minilm_linear_names(MINI)]
    total = sum(params[n].size for n in names)
    assert sum(int((out[n] == 0).sum()) for n in names) == round(0.5 * total)
    for k in params:
        if k not in names:
            assert out[k] is params[k]  # embeddings, norms and biases shared, untouched
    only0 = MagnitudeConfig(0.5, include=("encoder.layer.0",))
    layer0 = PM.prune_minilm(params, only0, MINI)
    assert all(layer0[n] is params[n] for n in names if n.startswith("encoder.layer.1"))
    assert all((layer0[n] == 0).mean() == 0.5 for n in names if ".layer.0." in n)


def test_prune_minilm_neurons_shrink_and_equal_zeroed_activations() -> None:
    params = _minilm_params()
    out = PM.prune_minilm(params, NeuronConfig(0.25), MINI)
    ff = MINI.intermediate_size
    keeps = []
    for i in range(MINI.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        w1 = params[pre + "intermediate.dense.weight"]
        w2 = params[pre + "output.dense.weight"]
        keep = R.keep_top(R.neuron_importance({"w1": w1.T, "w2": w2.T}), ff - ff // 4)
        keeps.append(keep)
        assert out[pre + "intermediate.dense.weight"].shape == (18, 16)
        assert out[pre + "intermediate.dense.bias"].shape == (18,)
        assert out[pre + "output.dense.weight"].shape == (16, 18)

    def zeroed(name, x, w, b):  # the removed neurons' activations set to 0
        if name.endswith(".output.dense") and "attention" not in name:
            gate = torch.zeros(ff, dtype=x.dtype)
            gate[keeps[int(name.split(".")[2])]] = 1
            x = x * gate
        return F.linear(x, w, b)

    torch.testing.assert_close(
        _minilm_out(out), _minilm_out(params, zeroed), rtol=1e-12, atol=1e-12
    )


def test_prune_minilm_heads_zeroing_wo_is_removing_the_heads() -> None:
    params = _minilm_params(1)
    out = PM.prune_minilm(params, HeadConfig(0.5), MINI)
    dh = MINI.head_dim
    keeps = []
    for i in range(MINI.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        wv = params[pre + "attention.self.value.weight"]
        wo = params[pre + "attention.output.dense.weight"]
        keep = R.keep_top(R.head_importance({"wv": wv.T, "wo": wo.T}, 4), 2).tolist()
        keeps.append(keep)
        got = out[pre + "attention.output.dense.weight"]
        for h in range(4):
            cols = got[:, h * dh : (h + 1) * dh]
            assert (cols == 0).all() == (h not in keep)

    def removed(name, x, w, b):  # the removed heads' context vectors set to 0
        if name.endswith("attention.output.dense"):
            gate = torch.zeros(4, dtype=x.dtype)
            gate[keeps[int(name.split(".")[2])]] = 1
            x = x * gate.repeat_interleave(dh)
        return F.linear(x, w, b)

    torch.testing.assert_close(
        _minilm_out(out), _minilm_out(params, removed), rtol=1e-12, atol=1e-12
    )


def test_prune_minilm_rejects_bad_input() -> None:
    params = _minilm_params()
    with pytest.raises(ValueError, match="criterion 'taylor' needs a training loss"):
        PM.prune_minilm(params, HeadConfig(0.5, criterion="taylor"), MINI)
    with pytest.raises(ValueError, match="would remove all 4 heads of layer 0"):
        PM.prune_minilm(params, HeadConfig(0.9), MINI)
    with pytest.raises(TypeError, match="config must be a pruning config"):
        PM.prune_minilm(params, 0.5, MINI)
    with pytest.raises(TypeError, match="MiniLMConfig"):
        PM.prune_minilm(params, MagnitudeConfig(0.5), "config")
    with pytest.raises(ValueError, match="params is missing"):
        PM.prune_minilm({}, MagnitudeConfig(0.5), MINI)
    bad = dict(params)
    bad["encoder.layer.0.output.dense.weight"] = torch.zeros(16, 24)
    with pytest.raises(TypeError, match="must be a float NumPy array"):
        PM.prune_minilm(bad, MagnitudeConfig(0.5), MINI)
    with pytest.raises(ValueError, match="include names 'encoder.layer.5'"):
        PM.prune_minilm(
            params, MagnitudeConfig(0.5, include=("encoder.layer.5",)), MINI
        )


@pytest.mark.slow
def test_prune_minilm_on_the_real_model_keeps_embeddings_close() -> None:
    """The real all-MiniLM-L6-v2: 30 % magnitude pruning moves sentence embeddings a
    little (cosine > 0.9), 90 % moves them a lot (a control)."""
    from effx_lab.data.pools import eval_sentences
    from effx_lab.models import load_minilm
    from effx_lab.models.evaluation import embedding_agreement, minilm_embeddings
    from effx_lab.models import MiniLMTokenizer

    config, params = load_minilm()
    ids, mask = MiniLMTokenizer()(eval_sentences(16))
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)

    def cosine(sparsity: float) -> float:
        pruned = PM.prune_minilm(params, MagnitudeConfig(sparsity), config)
        emb = minilm_embeddings(pruned, config, ids, mask)
        return embedding_agreement(ref, emb)["cosine_mean"]

    ref = minilm_embeddings(params, config, ids, mask)
    light, heavy = cosine(0.3), cosine(0.9)
    assert light > 0.9 and heavy < light - 0.1
