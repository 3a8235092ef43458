"""The guarantees of the whole-model verb effx_lab.prune.models.prune_.

* masked weights stay EXACTLY zero through the course's training loop with AdamW
  (momentum and weight decay on), through a checkpoint (state_dict, torch.save, load
  into a fresh model, prune_ again) and through copy.deepcopy;
* structured pruning: the pruned LM / TinyLM computes (float64) what the unpruned one
  computes with the removed heads' / neurons' outputs zeroed, and its parameter count
  drops by the predicted amount; a pruned TinyLM generates with its KV cache what it
  computes without it;
* bad input raises a named error and leaves the model bit-identical.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from effx_lab.models import TinyLMConfig, lm, training
from effx_lab.models import torch_ops as MT
from effx_lab.prune import models as PM
from effx_lab.prune import torch_ops as T
from effx_lab.prune.configs import HeadConfig, MagnitudeConfig, NeuronConfig

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


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved off its initial value (unit gains and zero biases hide
    mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _make(arch: str, seed: int = 0) -> torch.nn.Module:
    if arch == "lm":
        return _perturbed(lm.LM(SPEC, seed=seed), seed)
    return _perturbed(MT.TinyLM.from_config(TINY, seed=seed), seed)


def _stream(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(1, 14), n // 13 + 1)[:n]
    return np.where(rng.random(n) < 0.1, rng.integers(0, VOCAB, n), base)


def _x(batch: int = 2, n: int = 12, seed: int = 1) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    return torch.from_numpy(gen.integers(0, VOCAB, (batch, n)))


def _pruned_entries_zero(model: torch.nn.Module) -> bool:
    masks = PM.mask_set(model)
    assert len(masks) > 0
    return all(bool((m.param[~m.mask] == 0).all()) for m in masks.values())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal entry for entry, a NaN equal to a NaN in the same place."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(0.0), b.nan_to_num(0.0)
    )


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_bits_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------
# masks through training, checkpoints and copies
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
@pytest.mark.parametrize("hook", [False, True], ids=["no-hook", "after_step-hook"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masked_weights_stay_exactly_zero_through_adamw(arch, hook, scope) -> None:
    model = PM.prune_(_make(arch), MagnitudeConfig(0.6, scope=scope))
    masks = PM.mask_set(model)
    weights = PM.prunable_weights(model)
    assert list(masks) == list(weights)  # every prunable weight, in order
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((~m.mask).sum()) for m in masks.values())
    if scope == "global":
        assert pruned == round(0.6 * total)
    else:
        for m in masks.values():
            assert int((~m.mask).sum()) == round(0.6 * m.mask.numel())
    before = {k: m.param.detach().clone() for k, m in masks.items()}
    run = training.train(
        model, _stream(), steps=12, seed=3, after_step=[masks] if hook else (), **TRAIN
    )
    assert run.steps == 12 and _pruned_entries_zero(model)
    # training did move the kept weights (the test is not vacuous)
    moved = sum(
        int((m.param[m.mask] != before[k][m.mask]).sum()) for k, m in masks.items()
    )
    assert moved > 0.9 * (total - pruned)


def test_without_the_masks_adamw_revives_pruned_weights() -> None:
    """Negative control: the same zeros, written once, do not survive a training run."""
    model = _make("lm")
    masks = T.magnitude_masks(
        {k: w.detach() for k, w in PM.prunable_weights(model).items()}, 0.6
    )
    with torch.no_grad():
        for k, w in PM.prunable_weights(model).items():
            w.masked_fill_(~masks[k], 0)
    training.train(model, _stream(), steps=4, seed=3, **TRAIN)
    revived = sum(
        int((w[~masks[k]] != 0).sum()) for k, w in PM.prunable_weights(model).items()
    )
    assert revived > 0


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_masks_survive_a_checkpoint_and_reloading(arch) -> None:
    config = MagnitudeConfig(0.5, scope="global")
    model = PM.prune_(_make(arch), config)
    training.train(model, _stream(), steps=6, seed=1, **TRAIN)
    masks = {k: m.mask.clone() for k, m in PM.mask_set(model).items()}
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    # into a fresh (unpruned, differently initialised) model, then prune_ again
    fresh = _make(arch, seed=7)
    fresh.load_state_dict(loaded)
    PM.prune_(fresh, config)
    again = PM.mask_set(fresh)
    assert list(again) == list(masks)
    for k, mask in masks.items():
        assert torch.equal(again[k].mask, mask), k  # the stored zeros: the same mask
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    training.train(fresh, _stream(), steps=6, seed=2, **TRAIN)
    assert _pruned_entries_zero(fresh)
    # a dense checkpoint loaded into a masked model is masked at once
    dense = _make(arch, seed=9)
    fresh.load_state_dict(dense.state_dict())
    assert _pruned_entries_zero(fresh)
    assert any(
        bool((m.param[m.mask] != 0).all()) for m in PM.mask_set(fresh).values()
    )


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_masks_survive_deepcopy(arch) -> None:
    """A deep copy has parameters (and masks) of its own; its pruned weights stay zero
    through training without any after_step hook, and it trains exactly as the
    original does."""
    model = PM.prune_(_make(arch), MagnitudeConfig(0.7))
    twin = copy.deepcopy(model)
    masks, twin_masks = PM.mask_set(model), PM.mask_set(twin)
    assert list(masks) == list(twin_masks)
    for k in masks:
        assert twin_masks[k].param is not masks[k].param
        assert torch.equal(twin_masks[k].mask, masks[k].mask)
    a = training.train(model, _stream(), steps=8, seed=5, **TRAIN)
    b = training.train(twin, _stream(), steps=8, seed=5, **TRAIN)
    assert a.losses == b.losses
    assert _pruned_entries_zero(twin) and _pruned_entries_zero(model)
    for (k, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), k
    # a copy of a copy, and the original untouched by training the copy
    third = copy.deepcopy(twin)
    before = _state(model)
    training.train(third, _stream(), steps=3, seed=6, **TRAIN)
    assert _pruned_entries_zero(third) and _same_state(_state(model), before)


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_removed_masks_let_the_weights_train_again(arch) -> None:
    model = PM.prune_(_make(arch), MagnitudeConfig(0.5))
    twin = copy.deepcopy(model)
    for m in (model, twin):
        masks = PM.mask_set(m)
        pruned = {k: ~w.mask.clone() for k, w in masks.items()}
        masks.remove()
        assert len(PM.mask_set(m)) == 0
        training.train(m, _stream(), steps=3, seed=0, **TRAIN)
        weights = PM.prunable_weights(m)
        assert all(bool((weights[k][p] != 0).any()) for k, p in pruned.items())


def test_pruning_again_updates_the_masks_monotonically() -> None:
    model = PM.prune_(_make("tinylm"), MagnitudeConfig(0.3))
    first = {k: m.mask.clone() for k, m in PM.mask_set(model).items()}
    PM.prune_(model, MagnitudeConfig(0.6))
    masks = PM.mask_set(model)
    assert len(masks) == len(first)
    for k, m in masks.items():
        assert not bool((m.mask & ~first[k]).any()), k  # pruned stays pruned
        assert int((~m.mask).sum()) == round(0.6 * m.mask.numel())
    assert masks.sparsity() == pytest.approx(0.6, abs=1e-3)


# --------------------------------------------------------------------------------------
# structured pruning: exactly the unpruned model with the units zeroed
# --------------------------------------------------------------------------------------


def _lm_keep(model: lm.LM, kind: str, n_keep: int) -> list[list[int]]:
    out = []
    for layer in model.layers:
        if kind == "heads":
            scores = T.head_importance({k: layer[k] for k in ("wv", "wo")}, HEADS)
        else:
            scores = T.neuron_importance({k: layer[k] for k in ("w1", "w2")})
        out.append(T.keep_top(scores, n_keep).tolist())
    return out


def _zero_lm_units(model: lm.LM, keep: list[list[int]], kind: str) -> None:
    """Zero the outputs of the units not kept: their rows of wo (a head's output
    reaches the layer only through them) or of w2."""
    dh = D // HEADS
    with torch.no_grad():
        for layer, kept in zip(model.layers, keep):
            if kind == "heads":
                for h in set(range(HEADS)) - set(kept):
                    layer["wo"][h * dh : (h + 1) * dh] = 0
            else:
                for j in set(range(D_FF)) - set(kept):
                    layer["w2"][j] = 0


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_structured_pruning_of_the_lm_is_the_model_with_units_zeroed(kind) -> None:
    model = _make("lm").double()
    full = copy.deepcopy(model)
    n = HEADS if kind == "heads" else D_FF
    fraction = 0.5 if kind == "heads" else 0.25
    n_keep = n - round(fraction * n)
    keep = _lm_keep(model, kind, n_keep)
    config = HeadConfig(fraction) if kind == "heads" else NeuronConfig(fraction)
    assert PM.prune_(model, config) is model
    _zero_lm_units(full, keep, kind)
    x = _x(3, 15)
    with torch.no_grad():
        torch.testing.assert_close(model(x), full(x), rtol=1e-12, atol=1e-12)
    dh = D // HEADS
    dropped = n - n_keep
    per_unit = 3 * (D * dh + dh) + dh * D if kind == "heads" else D + 1 + D
    assert full.num_params() - model.num_params() == LAYERS * dropped * per_unit
    for i in range(LAYERS):
        if kind == "heads":
            assert model.sublayer_options(i, "mixer") == {
                "n_heads": n_keep, "head_dim": dh
            }
            assert tuple(model.layers[i]["wq"].shape) == (D, n_keep * dh)
            assert tuple(model.layers[i]["wo"].shape) == (n_keep * dh, D)
        else:
            assert model.sublayer_options(i, "ffn") == {"d_ff": n_keep}
            assert tuple(model.layers[i]["w2"].shape) == (n_keep, D)
    # the pruned model trains (gradients flow through the smaller layers)
    run = training.train(model.float(), _stream(), steps=3, seed=0, **TRAIN)
    assert run.steps == 3 and all(np.isfinite(run.losses))


def _tiny_zeroed(model: MT.TinyLM, keep: list[tuple[int, ...]], kind: str):
    """Forward pre-hooks that zero the removed heads' outputs (the input of proj) or
    neurons' activations (the input of fc2): an explicit gate of 0."""
    handles = []
    for block, kept in zip(model.layers, keep):
        if kind == "heads":
            dh = D // HEADS
            gate = torch.zeros(HEADS, dtype=torch.float64)
            gate[list(kept)] = 1
            gate = gate.repeat_interleave(dh)
            target = block.attn.proj
        else:
            gate = torch.zeros(block.mlp.fc1.out_features, dtype=torch.float64)
            gate[list(kept)] = 1
            target = block.mlp.fc2
        handles.append(
            target.register_forward_pre_hook(lambda m, a, g=gate: (a[0] * g,))
        )
    return handles


@pytest.mark.parametrize("kind", ["heads", "neurons"])
def test_structured_pruning_of_tinylm_is_the_model_with_units_zeroed(kind) -> None:
    model = _make("tinylm").double()
    full = copy.deepcopy(model)
    ffn = TINY.ffn_dim
    config = HeadConfig(0.5) if kind == "heads" else NeuronConfig(0.25)
    PM.prune_(model, config)
    if kind == "heads":
        keep = [block.attn.heads for block in model.layers]
        assert all(isinstance(b.attn, PM.PrunedAttention) for b in model.layers)
        assert all(len(k) == 2 for k in keep)
        # the kept heads are those of highest weight norm
        for block, kept in zip(full.layers, keep):
            w = block.attn.qkv.weight.detach()
            p = {"wv": w[2 * D :].t(), "wo": block.attn.proj.weight.detach().t()}
            assert tuple(T.keep_top(T.head_importance(p, HEADS), 2).tolist()) == kept
    else:
        keep = []
        for block in full.layers:
            p = {
                "w1": block.mlp.fc1.weight.detach().t(),
                "w2": block.mlp.fc2.weight.detach().t(),
            }
            kept = T.keep_top(T.neuron_importance(p), ffn - ffn // 4)
            keep.append(tuple(kept.tolist()))
    handles = _tiny_zeroed(full, keep, kind)
    x = _x(3, 15)
    with torch.no_grad():
        torch.testing.assert_close(model(x), full(x), rtol=1e-12, atol=1e-12)
    for h in handles:
        h.remove()
    dh = TINY.head_dim
    per_unit = 3 * (D * dh + dh) + dh * D if kind == "heads" else D + 1 + D
    dropped = 2 if kind == "heads" else ffn // 4
    n_full = sum(p.numel() for p in full.parameters())
    n_pruned = sum(p.numel() for p in model.parameters())
    assert n_full - n_pruned == LAYERS * dropped * per_unit


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_a_structured_checkpoint_loads_into_a_fresh_model_pruned_alike(arch) -> None:
    model = _make(arch)
    configs = [HeadConfig(0.5), NeuronConfig(0.25), MagnitudeConfig(0.3)]
    for config in configs:
        PM.prune_(model, config)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _make(arch, seed=11)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(torch.load(buf, weights_only=True))
    # the structure first, then the weights, then the masks (from the stored zeros)
    buf.seek(0)
    fresh = _make(arch, seed=11)
    for config in configs[:2]:
        PM.prune_(fresh, config)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    PM.prune_(fresh, configs[2])
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    masks, want = PM.mask_set(fresh), PM.mask_set(model)
    assert list(masks) == list(want)
    assert all(torch.equal(masks[k].mask, want[k].mask) for k in masks)


def test_a_pruned_tinylm_generates_with_its_kv_cache() -> None:
    model = _make("tinylm").double()
    PM.prune_(model, HeadConfig(0.75))  # one head left per layer (the worst case)
    PM.prune_(model, NeuronConfig(0.5))
    assert all(b.attn.n_heads == 1 for b in model.layers)
    prompt = _x(2, 5)
    out = model.generate(prompt, 8)
    seq = prompt
    with torch.no_grad():
        for _ in range(8):  # greedy without the cache
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    # a prefix, then a chunk of several tokens, then one: the cache's three paths
    x = _x(2, 12, seed=4)
    cache = model.new_cache(2)
    with torch.no_grad():
        parts = [model(x[:, a:b], cache) for a, b in ((0, 4), (4, 11), (11, 12))]
        torch.testing.assert_close(
            torch.cat(parts, 1), model(x), rtol=1e-10, atol=1e-10
        )
    # a cache made for another head width: a named error, not a silent mis-shape
    other = MT.KVCache(
        TinyLMConfig(vocab_size=VOCAB, d_model=D, n_heads=2, n_layers=LAYERS,
                     max_seq_len=MAXLEN),
        2, dtype=torch.float64,
    )  # fmt: skip
    other.config = model.config  # passes TinyLM's own check; the shapes still differ
    with pytest.raises(ValueError, match="pruned attention needs 1 heads of width 4"):
        model(x[:, :3], other)


def test_taylor_criterion_prunes_the_heads_of_lowest_taylor_score() -> None:
    model = _make("lm")
    tokens = _stream()
    scores = PM.taylor_importance(model, tokens, "heads")
    PM.prune_(model, HeadConfig(0.25, criterion="taylor"), tokens=tokens)
    for i, s in enumerate(scores):
        dropped = int(np.argmin(s))
        assert model.sublayer_options(i, "mixer")["n_heads"] == HEADS - 1
        # the dropped head's columns are gone: compare with the full layer's columns
        full = _make("lm").layers[i]["wq"].detach()
        dh = D // HEADS
        kept = [h for h in range(HEADS) if h != dropped]
        want = torch.cat([full[:, h * dh : (h + 1) * dh] for h in kept], dim=1)
        assert torch.equal(model.layers[i]["wq"].detach(), want)


# --------------------------------------------------------------------------------------
# bad input: a named error, and the model bit-identical
# --------------------------------------------------------------------------------------


def _check_untouched(model, call, error, match) -> None:
    state, text = _state(model), repr(model)
    masks = list(PM.mask_set(model))
    with pytest.raises(error, match=match):
        call()
    assert _same_state(_state(model), state) and repr(model) == text
    assert list(PM.mask_set(model)) == masks


@pytest.mark.parametrize("arch", ["lm", "tinylm"])
def test_bad_input_raises_and_leaves_the_model_unchanged(arch) -> None:
    model = _make(arch)
    tokens = _stream()
    cases = [
        (lambda: PM.prune_(model, "magnitude"), TypeError, "config must be a pruning"),
        (lambda: PM.prune_(model, {"sparsity": 0.5}), TypeError, "MagnitudeConfig"),
        (
            lambda: PM.prune_(model, MagnitudeConfig(0.5, include=("layers.7",))),
            ValueError,
            "include names 'layers.7', which is neither a prunable weight",
        ),
        (
            lambda: PM.prune_(
                model, MagnitudeConfig(0.5, include=("layers.0", "nope.weight"))
            ),
            ValueError,
            "include names 'nope.weight'",
        ),
        (
            lambda: PM.prune_(model, HeadConfig(0.9)),  # round(0.9 * 4) = 4
            ValueError,
            r"fraction=0.9 would remove all 4 heads of layer 0",
        ),
        (
            lambda: PM.prune_(model, HeadConfig(0.5, criterion="taylor")),
            ValueError,
            "criterion 'taylor' ranks heads on data: pass tokens",
        ),
        (
            lambda: PM.prune_(model, NeuronConfig(0.5, "taylor"), tokens=tokens + 99),
            ValueError,
            r"tokens must lie in \[0, 31\]",
        ),
        (
            lambda: PM.prune_(model, NeuronConfig(0.5, "taylor"), tokens=tokens[:10]),
            ValueError,
            "tokens must hold at least",
        ),
    ]
    for call, error, match in cases:
        _check_untouched(model, call, error, match)
    # a masked model: structured pruning of a masked weight is refused, masks kept
    PM.prune_(model, MagnitudeConfig(0.5))
    _check_untouched(
        model,
        lambda: PM.prune_(model, NeuronConfig(0.5)),
        ValueError,
        "carry pruning masks",
    )
    # a NaN weight: magnitude masks refuse it before any mask is attached or updated
    with torch.no_grad():
        next(iter(PM.prunable_weights(model).values()))[0, 0] = float("nan")
    _check_untouched(
        model, lambda: PM.prune_(model, MagnitudeConfig(0.8)), ValueError, "finite"
    )


def test_bad_configs_and_models_are_named_errors() -> None:
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        MagnitudeConfig(1.0)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        MagnitudeConfig(-0.1)
    with pytest.raises(TypeError, match="sparsity must be a real number"):
        MagnitudeConfig("0.5")
    with pytest.raises(ValueError, match="scope must be"):
        MagnitudeConfig(0.5, scope="model")
    with pytest.raises(TypeError, match="include must be None"):
        MagnitudeConfig(0.5, include=[1, 2])
    with pytest.raises(TypeError, match="include must be None"):
        MagnitudeConfig(0.5, include=())
    with pytest.raises(ValueError, match="include must not name a weight twice"):
        MagnitudeConfig(0.5, include=("a", "a"))
    for cls in (HeadConfig, NeuronConfig):
        with pytest.raises(ValueError, match="fraction must be"):
            cls(1.0)
        with pytest.raises(ValueError, match="criterion must be one of"):
            cls(0.5, criterion="random")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        PM.prune_("model", MagnitudeConfig(0.5))
    with pytest.raises(TypeError, match="model must be an effx_lab.models.lm.LM or"):
        PM.prune_(torch.nn.Sequential(torch.nn.Linear(4, 4)), HeadConfig(0.5))
    gau = lm.LM(lm.LMSpec(vocab_size=8, d_model=8, n_layers=1, max_len=8, ffn=None))
    with pytest.raises(ValueError, match="mixer 'softmax' and ffn 'gelu'"):
        PM.prune_(gau, NeuronConfig(0.5))
    # magnitude pruning works on any module with linear layers
    seq = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
    )
    PM.prune_(seq, MagnitudeConfig(0.5))
    assert list(PM.mask_set(seq)) == ["0.weight", "2.weight"]
    with pytest.raises(ValueError, match="no prunable weight"):
        PM.prune_(torch.nn.Sequential(torch.nn.ReLU()), MagnitudeConfig(0.5))
