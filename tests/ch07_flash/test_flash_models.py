"""Tests of effx_lab.flash.models and effx_lab.flash.train: chapter 7's language models
(configurations of the shared effx_lab.models.lm.LM) and their training runs (the shared
effx_lab.models.training.train)."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from _backends import TRANSCENDENTAL_ULPS, network_atol, unit_roundoff

from effx_lab.attention import reference as AR
from effx_lab.attention.params import init_transformer_layer_params
from effx_lab.flash import reference as FR
from effx_lab.flash.costs import layer_params
from effx_lab.flash.models import LanguageModel, LMConfig, build_lm
from effx_lab.flash.params import init_flash_params, init_gau_params
from effx_lab.data.pools import token_splits
from effx_lab.flash.train import EVAL_SEED, TrainResult, evaluate_lm, train_lm
from effx_lab.models import lm
from effx_lab.models.reference import layer_norm
from effx_lab.models.training import train


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: tiny matrices gain nothing from two, and on a busy 2-core machine two threads wait for
    each other (a 20 ms stall per op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4, s=16, chunk_size=8, max_rel=7, max_len=64)
VARIANTS = [
    pytest.param(dict(kind="transformer"), id="transformer"),
    pytest.param(dict(kind="flash_quad"), id="flash_quad"),
    pytest.param(dict(kind="flash", mode="mixed"), id="flash-mixed"),
    pytest.param(dict(kind="flash", mode="local"), id="flash-local"),
    pytest.param(dict(kind="flash", mode="global"), id="flash-global"),
]


def _perturbed(config: LMConfig, seed: int = 0) -> LanguageModel:
    """A model whose every parameter matters: at initialisation GAU's gamma is tiny, beta and the
    relative bias are zero, so attention is nearly zero and a leak of the future would be invisible."""
    model = build_lm(config, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            scale = 1.0 if leaf in ("gamma", "beta", "rel_bias") else (0.1 if p.ndim == 1 else 0.05)
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def _tokens(config: LMConfig, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, n)))


def _numpy_forward(model: LanguageModel, tokens: np.ndarray) -> np.ndarray:
    """The model's forward pass rebuilt from the NumPy references and its own weights."""
    cfg = model.config
    w = {k: v.detach().numpy() for k, v in model.named_parameters()}
    h = w["tok_emb"][tokens] + w["pos_emb"][: tokens.shape[1]]
    for layer in model.layers:
        p = {k: v.detach().numpy() for k, v in layer.items()}
        if cfg.kind == "transformer":
            h = AR.transformer_layer(h, p, cfg.n_heads, cfg.causal)
        elif cfg.kind == "flash_quad":
            h = FR.gau(h, p, cfg.causal)
        else:
            h = FR.flash_layer(h, p, cfg.chunk_size, cfg.causal, cfg.mode)
    return layer_norm(h, w["ln_f_g"], w["ln_f_b"]) @ w["tok_emb"].T


# ------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shape_dtype_and_agrees_with_numpy_references(variant: dict) -> None:
    config = LMConfig(**TINY, **variant)
    model = _perturbed(config)
    tokens = _tokens(config, batch=2, n=20)  # 20 is not a multiple of the chunk (8): FLASH pads
    with torch.no_grad():
        logits = model(tokens)
    assert logits.shape == (2, 20, config.vocab_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # the same function: proved in float64 (the model and the NumPy references on its float64 weights)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        logits64 = model64(tokens)
    assert logits64.dtype == torch.float64
    expected64 = _numpy_forward(model64, tokens.numpy())
    np.testing.assert_allclose(logits64.numpy(), expected64, rtol=1e-10, atol=1e-10)
    assert np.abs(expected64).std() > 0.1  # not two arrays of near-constants
    # float32: within the derived tolerance of the model's longest reduction path (_backends.network_atol):
    # per layer two LayerNorms, the projections (d), the mixing (scores over s or a head, sums over n tokens),
    # the FFN or the gate's output projection, the transcendental functions; then the final LayerNorm and head
    d, n = config.d_model, 20
    block = 2 * (d + 2) + 3 * d + max(config.s, d) + 2 * n + max(config.ffn_dim, 2 * d) + 4 * TRANSCENDENTAL_ULPS
    k_path = config.n_model_layers() * block + (d + 2) + d
    expected = _numpy_forward(model, tokens.numpy())
    atol = network_atol(k_path, expected, unit_roundoff(np.float32))
    np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_model_is_causal(variant: dict) -> None:
    config = LMConfig(**TINY, **variant)
    model = _perturbed(config, seed=2)
    tokens = _tokens(config, batch=2, n=28, seed=3)
    with torch.no_grad():
        base = model(tokens)
        for t in (5, 8, 13, 19):  # inside a chunk, at a chunk start, later chunks
            changed = tokens.clone()
            changed[:, t] = (changed[:, t] + 7) % config.vocab_size
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0, msg=f"future token {t} leaked")
            assert (out[:, t:] - base[:, t:]).abs().max() > 1e-3

    # the test can fail: the same model without the causal mask lets position t change earlier logits
    bidir = _perturbed(LMConfig(**{**TINY, **variant, "causal": False}), seed=2)
    with torch.no_grad():
        changed = tokens.clone()
        changed[:, 19] = (changed[:, 19] + 7) % config.vocab_size
        assert (bidir(changed)[:, :19] - bidir(tokens)[:, :19]).abs().max() > 1e-3


def test_global_only_flash_ignores_its_own_chunk_and_local_only_ignores_earlier_chunks() -> None:
    tokens = _tokens(LMConfig(**TINY), batch=1, n=24, seed=4)
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 5) % TINY["vocab_size"]  # chunk 1 = positions 8..15
    with torch.no_grad():
        glob = _perturbed(LMConfig(**TINY, kind="flash", mode="global"))
        d = (glob(changed) - glob(tokens)).abs().amax(dim=(0, 2))
        assert float(d[10:16].max()) < 1e-6 < float(d[16:].min())  # later tokens of chunk 1 do not see it
        local = _perturbed(LMConfig(**TINY, kind="flash", mode="local"))
        d = (local(changed) - local(tokens)).abs().amax(dim=(0, 2))
        # two local layers: information travels at most within its chunk
        assert float(d[9:16].max()) > 1e-4 and float(d[16:].max()) < 1e-6
        assert float(d[:9].max()) == 0.0


def test_config_fields_layer_counts_and_round_trip() -> None:
    base = LMConfig()
    assert (base.kind, base.d_model, base.n_layers, base.s, base.chunk_size, base.max_rel) == (
        "transformer", 128, 2, 64, 64, 63,
    )  # fmt: skip
    assert base.n_model_layers() == 2 and base.ffn_dim == 512
    assert LMConfig(kind="flash_quad", n_layers=3).n_model_layers() == 6
    flash = LMConfig(kind="flash", mode="local", d_model=64)
    assert LMConfig.from_dict(json.loads(json.dumps(flash.to_dict()))) == flash
    assert len(build_lm(flash).layers) == 4
    with pytest.raises(ValueError, match="unknown LMConfig fields"):
        LMConfig.from_dict({"kind": "flash", "heads": 2})


@pytest.mark.parametrize("d_model", [64, 128])
@pytest.mark.parametrize("kind", ["flash_quad", "flash"])
def test_parameter_counts_match_the_layers_and_the_transformer(d_model: int, kind: str) -> None:
    kw = dict(d_model=d_model, n_layers=2, max_len=256)
    tf, other = LMConfig(kind="transformer", **kw), LMConfig(kind=kind, **kw)
    n_tf, n_other = build_lm(tf).num_params(), build_lm(other).num_params()
    shared = (tf.vocab_size + tf.max_len) * d_model + 2 * d_model  # embeddings + final LayerNorm
    assert n_tf == shared + 2 * layer_params("transformer", d_model)
    layer_kind = "gau" if kind == "flash_quad" else "flash"
    assert n_other == shared + 4 * layer_params(layer_kind, d_model, expansion=2, s=other.s, max_rel=other.max_rel)
    assert abs(n_other / n_tf - 1) < 0.2
    # the layer stacks alone are within 20% of each other too (the paper's rule: 2 GAU ~ 1 MHA + 1 FFN)
    assert abs((n_other - shared) / (n_tf - shared) - 1) < 0.2


def test_same_seed_same_weights_different_seed_different_weights() -> None:
    config = LMConfig(**TINY, kind="flash")
    a, b, c = build_lm(config, seed=3), build_lm(config, seed=3), build_lm(config, seed=4)
    named = zip(a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True)
    for (name, pa), (_, pb), (_, pc) in named:
        assert torch.equal(pa, pb), name
        if name.rsplit(".", 1)[-1] in ("tok_emb", "pos_emb", "w_uvz", "w_o", "gamma"):
            assert not torch.equal(pa, pc), name
    # the layers are not copies of each other
    assert not torch.equal(a.layers[0]["w_uvz"], a.layers[1]["w_uvz"])
    # rel_bias_init changes the relative bias only
    biased = build_lm(LMConfig(**TINY, kind="flash", rel_bias_init=0.1), seed=3)
    for (name, pa), (_, pb) in zip(a.named_parameters(), biased.named_parameters(), strict=True):
        if name.endswith("rel_bias"):
            assert torch.all(pa == 0) and torch.allclose(pb, torch.full_like(pb, 0.1)), name
        else:
            assert torch.equal(pa, pb), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_models_are_configurations_of_the_shared_lm(variant: dict) -> None:
    """Each kind is the shared LM built from config.spec(): same parameters, names and
    float64 outputs."""
    config = LMConfig(**TINY, **variant)
    model = build_lm(config, seed=3)
    shared = lm.LM(config.spec(), seed=3)
    assert (
        isinstance(model, lm.LM)
        and model.spec == config.spec()
        and model.config is config
    )
    named, shared_named = list(model.named_parameters()), list(
        shared.named_parameters()
    )
    assert [n for n, _ in named] == [n for n, _ in shared_named]
    for (name, p), (_, q) in zip(named, shared_named, strict=True):
        assert torch.equal(p, q), name
    tokens = _tokens(config, batch=2, n=12, seed=5)
    with torch.no_grad():
        assert torch.equal(
            copy.deepcopy(model).double()(tokens),
            copy.deepcopy(shared).double()(tokens),
        )


@pytest.mark.parametrize("kind", ["transformer", "flash_quad", "flash"])
def test_layer_weights_are_the_initialisers_for_the_layer_seed(kind: str) -> None:
    """The weights the chapter-7 models had before they became LM configurations: layer
    i is the NumPy initialiser of its kind for the seed SeedSequence([seed, i + 1]); the
    embeddings come from [seed, 0].
    """
    config = LMConfig(
        **{**TINY, "kind": kind, "rel_bias_init": 0.0 if kind == "transformer" else 0.1}
    )
    model = build_lm(config, seed=7)
    for i, layer in enumerate(model.layers):
        layer_seed = int(np.random.SeedSequence([7, i + 1]).generate_state(1)[0])
        d = config.d_model
        if kind == "transformer":
            want = init_transformer_layer_params(
                d, config.n_heads, config.ffn_dim, seed=layer_seed
            )
        else:
            init = init_gau_params if kind == "flash_quad" else init_flash_params
            want = init(d, config.expansion, config.s, config.max_rel, seed=layer_seed)
            want["rel_bias"] = np.full_like(want["rel_bias"], 0.1)
        assert sorted(layer.keys()) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(
                layer[key].detach().numpy(), value, err_msg=f"layer {i} {key}"
            )
    rng = np.random.default_rng(
        int(np.random.SeedSequence([7, 0]).generate_state(1)[0])
    )
    tok = rng.normal(0.0, 0.02, (config.vocab_size, config.d_model)).astype(np.float32)
    pos = rng.normal(0.0, 0.01, (config.max_len, config.d_model)).astype(np.float32)
    np.testing.assert_array_equal(model.tok_emb.detach().numpy(), tok)
    np.testing.assert_array_equal(model.pos_emb.detach().numpy(), pos)
    # GAU's per-dimension scales and offsets get no weight decay (the Transformer has none)
    expected = (
        ()
        if kind == "transformer"
        else tuple(
            f"layers.{i}.{k}"
            for i in range(config.n_model_layers())
            for k in ("gamma", "beta")
        )
    )
    assert model.no_weight_decay() == expected


def test_bad_configs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        LMConfig(kind="rnn")
    with pytest.raises(ValueError, match="n_heads must divide d_model"):
        LMConfig(kind="transformer", d_model=30, n_heads=4)
    LMConfig(kind="flash", d_model=30, n_heads=4)  # heads do not matter to FLASH
    with pytest.raises(ValueError, match="mode='local'.*needs kind='flash'"):
        LMConfig(kind="flash_quad", mode="local")
    with pytest.raises(ValueError, match="mode must be one of"):
        LMConfig(kind="flash", mode="both")
    with pytest.raises(ValueError, match="d_ff"):
        LMConfig(kind="flash", d_ff=256)
    with pytest.raises(ValueError, match="n_layers must be an int >= 1, got 0"):
        LMConfig(n_layers=0)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        LMConfig(kind="flash", chunk_size=8.0)
    with pytest.raises(TypeError, match="causal must be a bool"):
        LMConfig(causal=1)
    with pytest.raises(ValueError, match="the Transformer has none"):
        LMConfig(kind="transformer", rel_bias_init=0.1)
    with pytest.raises(ValueError, match="rel_bias_init must be finite"):
        LMConfig(kind="flash", rel_bias_init=float("nan"))
    with pytest.raises(TypeError, match="config must be an LMConfig"):
        build_lm({"kind": "flash"})
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        build_lm(LMConfig(**TINY), seed=-1)


def test_bad_tokens_raise_clear_errors() -> None:
    model = build_lm(LMConfig(**TINY, kind="flash"))
    with pytest.raises(TypeError, match="tokens must be a torch.LongTensor"):
        model(np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \(batch, n\)"):
        model(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_len is 64"):
        model(torch.zeros(1, 65, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 63\], got values in \[0, 64\]"):
        model(torch.tensor([[0, 64]]))


# ------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------

TRAIN_TINY = dict(d_model=32, n_layers=1, n_heads=4, s=16, chunk_size=16, max_rel=15, max_len=64)


@pytest.mark.parametrize("kind", ["transformer", "flash_quad", "flash"])
def test_loss_falls_in_30_steps_on_the_corpus(kind: str) -> None:
    result = train_lm(
        LMConfig(kind=kind, **TRAIN_TINY), steps=30, batch_size=8, seq_len=64, lr=1e-2, eval_every=10,
        eval_batches=2, threads=1,
    )  # fmt: skip
    first, last = result.history[0]["val_loss"], result.final_val_loss
    assert abs(first - math.log(256)) < 0.3  # an untrained model is close to uniform over bytes
    assert last < first - 1.0, result.history  # it learns at least the byte frequencies (unigram ~ 3.1 nats)
    train_losses = [h["train_loss"] for h in result.history[1:]]
    assert train_losses[-1] < train_losses[0]
    assert [h["step"] for h in result.history] == [0, 10, 20, 30]
    assert result.steps == 30 and math.isclose(result.final_val_ppl, math.exp(last))


def test_training_with_steps_is_deterministic() -> None:
    config = LMConfig(kind="flash", **TRAIN_TINY)
    kw = dict(steps=4, batch_size=4, seq_len=32, eval_every=2, eval_batches=1, threads=1)
    a, b, c = train_lm(config, seed=5, **kw), train_lm(config, seed=5, **kw), train_lm(config, seed=6, **kw)
    strip = [{k: v for k, v in h.items() if k != "wall_s"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "wall_s"} for h in b.history]
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]
    # the validation windows do not depend on the training seed or batch size: a model built from the
    # same seed scores the same at step 0
    d = train_lm(config, seed=5, **{**kw, "batch_size": 2, "eval_batch_size": 4})
    assert d.history[0]["val_loss"] == a.history[0]["val_loss"] and d.settings["eval_batch_size"] == 4


def test_time_budget_is_respected_and_threads_restored() -> None:
    before = torch.get_num_threads()
    budget = 0.6
    result = train_lm(
        LMConfig(kind="flash", **TRAIN_TINY), time_budget_s=budget, batch_size=4, seq_len=32, eval_every_s=0.2,
        eval_batches=1, threads=1,
    )  # fmt: skip
    assert torch.get_num_threads() == before
    assert result.wall_s >= budget  # it trains until the budget is spent (the stopping rule itself) ...
    # ... and stops soon after: it overshoots by one step and one evaluation (~12 ms and ~60 ms measured on a
    # 2-core CPU), so 1.2 s of slack is a margin of more than 15x that a loaded machine does not eat
    assert result.wall_s < 3 * budget
    assert result.steps > 1
    walls = [h["wall_s"] for h in result.history]
    assert walls == sorted(walls) and walls[-1] == result.wall_s
    # step 0, about every 0.2 s, the end: an evaluation lands before the end unless one step takes > 0.4 s,
    # ~35x the measured step; and at most one per 0.2 s, so no more than 0.6 / 0.2 + 2 entries
    assert 3 <= len(result.history) <= 8
    assert result.tokens_per_s == pytest.approx(result.steps * 4 * 32 / result.wall_s)
    d = result.to_dict()
    assert "model" not in d and d["config"]["kind"] == "flash" and d["settings"]["time_budget_s"] == budget
    json.dumps(d)  # serialisable (train_loss None at step 0 becomes null)
    assert isinstance(result, TrainResult) and result.n_params == result.model.num_params()

    cpu = train_lm(
        LMConfig(kind="transformer", **TRAIN_TINY), time_budget_s=0.3, batch_size=4, seq_len=32, eval_batches=1,
        threads=1, clock="cpu",
    )  # fmt: skip
    assert 0.3 <= cpu.wall_s < 0.9 and cpu.settings["clock"] == "cpu"


def test_train_lm_is_the_shared_loop_with_chapter_7_settings() -> None:
    """train_lm = build_lm + training.train(seed [seed, 1], warmup as a fraction of the
    steps, the fixed validation windows of EVAL_SEED): the same losses, step for
    step."""
    config = LMConfig(kind="flash", **TRAIN_TINY)
    kw = dict(batch_size=4, seq_len=32, lr=1e-2, weight_decay=0.01)
    ours = train_lm(
        config,
        steps=6,
        eval_every=3,
        eval_batches=1,
        threads=1,
        warmup=0.5,
        min_lr_ratio=0.2,
        **kw,
    )
    train_tok, val_tok = token_splits()
    model = build_lm(config, seed=0)
    run = train(
        model,
        train_tok,
        steps=6,
        warmup=3.0,
        min_ratio=0.2,
        seed=np.random.default_rng([0, 1]),
        eval_tokens=val_tok,
        eval_every=3,
        eval_batches=1,
        eval_seed=EVAL_SEED,
        **kw,
    )
    assert [h["val_loss"] for h in ours.history] == [e["loss"] for e in run.evals]
    assert [h["train_loss"] for h in ours.history] == [
        e["train_loss"] for e in run.evals
    ]
    assert ours.steps == run.steps == 6
    for (name, p), (_, q) in zip(
        ours.model.named_parameters(), model.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_evaluate_lm_uses_fixed_windows() -> None:
    _, val = token_splits()
    model = build_lm(LMConfig(kind="transformer", **TRAIN_TINY))
    a = evaluate_lm(model, val, 32, 2, EVAL_SEED, batch_size=4)
    b = evaluate_lm(model, val, 32, 2, EVAL_SEED, batch_size=4)
    c = evaluate_lm(model, val, 32, 2, EVAL_SEED + 1, batch_size=4)
    assert a == b and a != c
    assert abs(a - math.log(256)) < 0.3
    with pytest.raises(TypeError, match="model must be a LanguageModel"):
        evaluate_lm(torch.nn.Linear(2, 2), val, 32, 2, 0)
    with pytest.raises(ValueError, match="seq_len must be an int in"):
        evaluate_lm(model, val, 65, 2, 0)
    with pytest.raises(ValueError, match="tokens must hold at least 33 tokens, got 10"):
        evaluate_lm(model, val[:10], 32, 2, 0)


def test_bad_training_arguments_raise_clear_errors() -> None:
    config = LMConfig(kind="flash", **TRAIN_TINY)
    with pytest.raises(ValueError, match="exactly one of time_budget_s and steps"):
        train_lm(config)
    with pytest.raises(ValueError, match="exactly one of time_budget_s and steps"):
        train_lm(config, steps=3, time_budget_s=1.0)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train_lm(config, steps=0)
    with pytest.raises(ValueError, match="time_budget_s must be > 0.0"):
        train_lm(config, time_budget_s=-1.0)
    with pytest.raises(ValueError, match="eval_every_s goes with time_budget_s"):
        train_lm(config, steps=3, eval_every_s=1.0)
    with pytest.raises(ValueError, match="eval_every goes with steps"):
        train_lm(config, time_budget_s=1.0, eval_every=3)
    with pytest.raises(ValueError, match="seq_len must be an int in \\[1, 64\\], got 128"):
        train_lm(config, steps=1, seq_len=128)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        train_lm(config, steps=1, seq_len=32, threads=0)
    with pytest.raises(TypeError, match="config must be an LMConfig"):
        train_lm(TRAIN_TINY, steps=1)
    with pytest.raises(ValueError, match="clock must be one of"):
        train_lm(config, steps=1, seq_len=32, clock="gpu")
    small_vocab = LMConfig(kind="flash", vocab_size=64, **TRAIN_TINY)
    with pytest.raises(ValueError, match=r"train_tokens must lie in \[0, 63\]"):
        train_lm(small_vocab, steps=1, seq_len=16)
    with pytest.raises(TypeError, match="train_tokens must be a NumPy array"):
        train_lm(config, steps=1, seq_len=16, train_tokens=[1, 2, 3])
