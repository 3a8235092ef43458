"""Tests of effx_lab.models: TinyLM (NumPy vs PyTorch, KV cache, checkpoint) and MiniLM (vs transformers)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from _backends import (
    TRANSCENDENTAL_ULPS,
    assert_within,
    gamma,
    gelu_tanh_bound,
    layer_norm_bound,
    network_atol,
    unit_roundoff,
)

from effx_lab.models import reference as R
from effx_lab.models import torch_ops as T
from effx_lab.models.config import MiniLMConfig, TinyLMConfig, init_tinylm_params, tinylm_param_shapes
from effx_lab.models.train import (
    load_pretrained_tinylm,
    load_tinylm,
    pretrained_tinylm_path,
    save_tinylm,
    train_tinylm,
    unigram_perplexity,
)
from effx_lab.models.training import perplexity

CONFIGS = [
    pytest.param(TinyLMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=48), id="mha"),
    pytest.param(TinyLMConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=48), id="gqa"),
    pytest.param(TinyLMConfig(vocab_size=50, d_model=48, n_layers=1, n_heads=6, n_kv_heads=1, d_ff=40, max_seq_len=32), id="mqa"),
    pytest.param(TinyLMConfig(), id="default"),
]


def _models(config: TinyLMConfig, seed: int = 3) -> tuple[R.TinyLM, T.TinyLM]:
    # perturb biases and LayerNorm parameters so that they matter (they are 0/1 at initialisation)
    params = init_tinylm_params(config, seed)
    rng = np.random.default_rng(seed + 100)
    for name, value in params.items():
        if value.ndim == 1:
            params[name] = (value + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
    return R.TinyLM(params, config), T.TinyLM(params, config).eval()


def _tokens(config: TinyLMConfig, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, seq))


U32 = unit_roundoff(np.float32)


def _tinylm_k_path(config: TinyLMConfig, seq: int) -> int:
    """Terms summed along TinyLM's longest path, for :func:`_backends.network_atol`: per block two LayerNorms
    (mean and variance of d_model values), the Q/K/V projection, a score (head_dim), the softmax sum and the
    A V product (seq each), the output projection and the MLP (d_model, then d_ff), and the ulps of exp and
    tanh; then the final LayerNorm and the tied head."""
    d = config.d_model
    block = 2 * (d + 2) + d + config.head_dim + 2 * seq + d + d + config.ffn_dim + 4 * TRANSCENDENTAL_ULPS
    return config.n_layers * block + (d + 2) + d


def _tinylm_atol(config: TinyLMConfig, seq: int, ref: np.ndarray) -> float:
    """Derived tolerance for two float32 computations of TinyLM's logits (NumPy vs torch, cached vs not)."""
    return network_atol(_tinylm_k_path(config, seq), ref, U32)


def _assert_greedy_agrees(a: np.ndarray, b: np.ndarray, logits_of, tie_tol: float) -> None:
    """Two float32 greedy decodings (two backends, or cached vs not): an argmax between two logits within
    rounding of each other can go either way, and the continuations then differ legitimately. So the first
    differing step, if any, must be such a near-tie (both choices within ``tie_tol`` in the logits of the
    shared prefix), and it must be rare (at most one of the sequences here)."""
    diverged = 0
    for row in range(a.shape[0]):
        diff = np.flatnonzero(a[row] != b[row])
        if diff.size == 0:
            continue
        diverged += 1
        t = int(diff[0])
        logits = np.asarray(logits_of(a[row : row + 1, :t]))[0, -1]
        gap = abs(float(logits[a[row, t]]) - float(logits[b[row, t]]))
        assert gap <= tie_tol, f"row {row} step {t}: tokens {a[row, t]} vs {b[row, t]}, logit gap {gap} > {tie_tol}"
    assert diverged <= 1, f"{diverged} of {a.shape[0]} greedy sequences differ"


# ------------------------------------------------------------------------------------------------------
# TinyLM: the two backends agree
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_tinylm_numpy_and_torch_logits_agree(config: TinyLMConfig) -> None:
    np_model, torch_model = _models(config)
    tokens = _tokens(config, batch=3, seq=min(24, config.max_seq_len))
    expected = np_model.forward(tokens)
    with torch.no_grad():
        got = torch_model(torch.from_numpy(tokens)).numpy()
    assert expected.shape == (3, tokens.shape[1], config.vocab_size)
    assert expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=_tinylm_atol(config, tokens.shape[1], expected), rtol=0)
    assert np.abs(expected).max() > 0.1  # the comparison is not between two near-zero arrays


def test_tinylm_is_causal() -> None:
    config = CONFIGS[1].values[0]
    np_model, torch_model = _models(config)
    tokens = _tokens(config, batch=2, seq=16)
    changed = tokens.copy()
    changed[:, 10:] = (changed[:, 10:] + 1) % config.vocab_size
    a, b = np_model.forward(tokens), np_model.forward(changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])  # the future does not leak into the past
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3
    with torch.no_grad():
        ta, tb = torch_model(torch.from_numpy(tokens)), torch_model(torch.from_numpy(changed))
    torch.testing.assert_close(ta[:, :10], tb[:, :10], atol=1e-6, rtol=0)


def test_to_params_round_trip_and_from_config_match() -> None:
    config = CONFIGS[1].values[0]
    params = init_tinylm_params(config, seed=7)
    back = T.TinyLM.from_params(params, config).to_params()
    assert back.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(back[name], params[name], err_msg=name)
    a = R.TinyLM.from_config(config, seed=7).to_params()
    for name in params:
        np.testing.assert_array_equal(a[name], params[name], err_msg=name)
    other = init_tinylm_params(config, seed=8)
    assert not np.array_equal(other["tok_emb"], params["tok_emb"])
    assert all(v.dtype == np.float32 for v in params.values())


@pytest.mark.parametrize("config", CONFIGS)
def test_n_params_matches_torch_and_param_dict(config: TinyLMConfig) -> None:
    torch_model = T.TinyLM.from_config(config)
    assert config.n_params() == sum(p.numel() for p in torch_model.parameters())
    assert config.n_params() == sum(int(np.prod(s)) for s in tinylm_param_shapes(config).values())


# ------------------------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_kv_cache_decoding_equals_full_forward(config: TinyLMConfig) -> None:
    np_model, torch_model = _models(config)
    tokens = _tokens(config, batch=2, seq=20, seed=1)
    full = np_model.forward(tokens)
    # prefill 6 tokens, then a chunk of 5 (chunked prefill after a prefix), then one token at a time
    pieces = [(0, 6), (6, 11)] + [(t, t + 1) for t in range(11, 20)]

    cache = np_model.new_cache(2)
    steps = [np_model.forward(tokens[:, a:b], cache) for a, b in pieces]
    assert cache.length == 20
    atol = _tinylm_atol(config, 20, full)  # float32, other shapes and backends: the derived tolerance
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=atol, rtol=0)

    tcache = torch_model.new_cache(2)
    tt = torch.from_numpy(tokens)
    with torch.no_grad():
        tsteps = [torch_model(tt[:, a:b], tcache) for a, b in pieces]
    assert tcache.length == 20
    np.testing.assert_allclose(torch.cat(tsteps, dim=1).numpy(), full, atol=atol, rtol=0)
    # the cache really holds this sequence's keys: position 0 of layer 0 is K of the first token (one
    # LayerNorm and one d_model-term projection from the embeddings)
    k_atol = network_atol(config.d_model + 2 + config.d_model + 1, cache.k[0], U32)
    np.testing.assert_allclose(tcache.k[0][:, :, :20].numpy(), cache.k[0][:, :, :20], atol=k_atol, rtol=0)


@pytest.mark.parametrize("config", CONFIGS[1:3])
def test_cache_nbytes_equals_formula(config: TinyLMConfig) -> None:
    batch, seq = 3, 17
    for cache, bytes_per in [
        (R.KVCache(config, batch, max_seq_len=seq), 4),
        (R.KVCache(config, batch, max_seq_len=seq, dtype=np.float16), 2),
        (T.KVCache(config, batch, max_seq_len=seq), 4),
        (T.KVCache(config, batch, max_seq_len=seq, dtype=torch.bfloat16), 2),
    ]:
        formula = 2 * config.n_layers * config.kv_heads * config.head_dim * seq * batch * bytes_per
        assert cache.nbytes == formula
    assert R.TinyLM.from_config(config).new_cache(2).nbytes == (
        2 * config.n_layers * config.kv_heads * config.head_dim * config.max_seq_len * 2 * 4
    )
    mha = TinyLMConfig(vocab_size=64, d_model=32, n_heads=4, max_seq_len=48)
    gqa = TinyLMConfig(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=1, max_seq_len=48)
    assert R.KVCache(mha, 1).nbytes == 4 * R.KVCache(gqa, 1).nbytes  # MQA: a quarter of the cache


# ------------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------------


def _naive_greedy(model: R.TinyLM, prompt: np.ndarray, n: int) -> np.ndarray:
    seq = prompt.copy()
    for _ in range(n):
        nxt = model.forward(seq)[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return seq


def test_generate_greedy_uses_cache_correctly_and_backends_agree() -> None:
    config = CONFIGS[1].values[0]
    np_model, torch_model = _models(config)
    prompt = _tokens(config, batch=2, seq=5, seed=4)
    out = np_model.generate(prompt, 12)
    assert out.shape == (2, 17) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, :5], prompt)
    np.testing.assert_array_equal(out, np_model.generate(prompt, 12))  # deterministic: the same computation
    # greedy choices are argmaxes of float32 logits: the cached decoding vs the full forward, and NumPy vs
    # torch, agree except at near-ties. A tie that one computation sees within E of a flip and the other within
    # E the other way is at most 4 E apart in either one's logits, E = network_atol / 2: tie_tol = 3 atol
    # also covers the cached logits vs the full forward used to look at the tie
    tie_tol = 3 * _tinylm_atol(config, 17, np_model.forward(out))
    _assert_greedy_agrees(out, _naive_greedy(np_model, prompt, 12), np_model.forward, tie_tol)
    tout = torch_model.generate(torch.from_numpy(prompt), 12)
    _assert_greedy_agrees(out, tout.numpy(), np_model.forward, tie_tol)
    one = np_model.generate(prompt[0], 12)  # 1-D prompt, 1-D result
    np.testing.assert_array_equal(one, out[0])
    np.testing.assert_array_equal(np_model.generate(prompt, 0), prompt)


def test_generate_sampling_is_seeded() -> None:
    config = CONFIGS[0].values[0]
    np_model, torch_model = _models(config)
    prompt = _tokens(config, batch=2, seq=3)
    a = np_model.generate(prompt, 30, temperature=1.5, seed=1)
    np.testing.assert_array_equal(a, np_model.generate(prompt, 30, temperature=1.5, seed=1))
    assert not np.array_equal(a, np_model.generate(prompt, 30, temperature=1.5, seed=2))
    tp = torch.from_numpy(prompt)
    ta = torch_model.generate(tp, 30, temperature=1.5, seed=1)
    assert torch.equal(ta, torch_model.generate(tp, 30, temperature=1.5, seed=1))
    assert not torch.equal(ta, torch_model.generate(tp, 30, temperature=1.5, seed=2))
    assert int(a.max()) < config.vocab_size and int(ta.max()) < config.vocab_size


# ------------------------------------------------------------------------------------------------------
# Training, perplexity, the shipped checkpoint
# ------------------------------------------------------------------------------------------------------


def test_perplexity_of_a_uniform_model_is_the_vocab_size() -> None:
    config = TinyLMConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=1, max_seq_len=32)
    params = init_tinylm_params(config)
    params["tok_emb"][:] = 0.0  # logits = LayerNorm(x) @ 0 = 0 everywhere
    tokens = np.random.default_rng(0).integers(0, 40, size=200)
    for model in (R.TinyLM(params, config), T.TinyLM(params, config)):
        assert perplexity(model, tokens, seq_len=16, batch_size=4) == pytest.approx(40.0, rel=1e-9)


def test_unigram_perplexity_known_answer() -> None:
    # P(0) = (3+1)/(4+2) = 2/3, P(1) = (1+1)/(4+2) = 1/3; eval [0, 1] -> exp(-(ln 2/3 + ln 1/3)/2) = sqrt(4.5)
    got = unigram_perplexity(np.array([0, 0, 0, 1]), np.array([0, 1]), vocab_size=2, alpha=1.0)
    assert got == pytest.approx(math.sqrt(4.5), rel=1e-12)


def test_train_tinylm_reduces_loss_and_backends_agree_after() -> None:
    torch.manual_seed(0)
    config = TinyLMConfig(vocab_size=16, d_model=32, n_heads=4, n_layers=1, max_seq_len=32)
    pattern = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], dtype=np.int64)
    data = np.tile(pattern, 40)  # a periodic sequence is perfectly predictable
    model = T.TinyLM.from_config(config, seed=0)
    before = perplexity(model, data, seq_len=24)
    history = train_tinylm(model, data, steps=40, batch_size=8, seq_len=24, lr=1e-2, seed=0, log_every=10)
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    after = perplexity(model, data, seq_len=24)
    assert after < 2.0 < before
    np_model = R.TinyLM(model.to_params(), config)
    # float32 backends: the mean cross-entropy moves by at most twice the largest logit difference (log-softmax
    # is 1-Lipschitz in the max norm), so the perplexity by exp(2 atol) - 1 relative
    logits = np_model.forward(data[:24][None])
    assert perplexity(np_model, data, seq_len=24) == pytest.approx(
        after, rel=math.expm1(2 * _tinylm_atol(config, 24, logits))
    )


def test_train_tinylm_is_reproducible() -> None:
    config = TinyLMConfig(vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_seq_len=16)
    data = np.random.default_rng(0).integers(0, 16, size=300)
    runs = []
    for _ in range(2):
        model = T.TinyLM.from_config(config, seed=1)
        history = train_tinylm(model, data, steps=6, batch_size=4, seq_len=12, seed=5, log_every=3)
        runs.append((model.to_params(), [h["loss"] for h in history]))
    assert runs[0][1] == runs[1][1]
    for name in runs[0][0]:
        np.testing.assert_array_equal(runs[0][0][name], runs[1][0][name], err_msg=name)


def test_train_tinylm_logs_the_shared_loops_losses() -> None:
    """train_tinylm is training.train with TinyLM's settings (nanoGPT's schedule:
    lr_schedule with hold=1): the logged means are the means of the loop's step losses,
    step for step."""
    from effx_lab.models import training

    config = TinyLMConfig(
        vocab_size=16, d_model=16, n_heads=2, n_layers=1, max_seq_len=16
    )
    data = np.random.default_rng(0).integers(0, 16, size=300)
    a, b = T.TinyLM.from_config(config, seed=1), T.TinyLM.from_config(config, seed=1)
    history = train_tinylm(
        a, data, steps=7, batch_size=4, seq_len=12, seed=5, log_every=3, warmup_steps=2
    )
    run = training.train(
        b,
        data,
        steps=7,
        batch_size=4,
        seq_len=12,
        lr=3e-3,
        warmup=2,
        hold=1,
        min_ratio=0.1,
        weight_decay=0.1,
        seed=5,
    )
    assert [h["step"] for h in history] == [3, 6, 7]
    assert [h["loss"] for h in history] == [
        sum(run.losses[0:3]) / 3,
        sum(run.losses[3:6]) / 3,
        run.losses[6],
    ]
    assert [h["lr"] for h in history] == [run.lrs[2], run.lrs[5], run.lrs[6]]
    # the peak after the 2 warm-up steps, then the decay
    assert history[0]["lr"] == 3e-3 and history[-1]["lr"] < 3e-3


def test_save_and_load_round_trip(tmp_path) -> None:
    config = CONFIGS[1].values[0]
    np_model, _ = _models(config)
    path = save_tinylm(np_model, tmp_path / "m.npz", dtype="float32", meta={"note": "test"})
    loaded = load_tinylm(path, backend="torch")
    assert loaded.config == config and loaded.meta == {"note": "test"}
    for name, value in loaded.to_params().items():
        np.testing.assert_array_equal(value, np_model.params[name])


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    from effx_lab.data import ByteTokenizer, load_corpus_splits

    train_text, val_text = load_corpus_splits()
    tok = ByteTokenizer()
    return tok.encode(train_text), tok.encode(val_text)


def test_pretrained_checkpoint_beats_unigram(corpus) -> None:
    path = pretrained_tinylm_path()
    assert path.is_file() and path.stat().st_size < 2_000_000
    torch_model = load_pretrained_tinylm("torch")
    np_model = load_pretrained_tinylm("numpy")
    assert torch_model.config == TinyLMConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, max_seq_len=256)
    train_tokens, val_tokens = corpus
    val = val_tokens[: 8 * 128 + 1]  # 8 windows: a small slice keeps the test fast
    ppl_torch = perplexity(torch_model, val, seq_len=128)
    ppl_numpy = perplexity(np_model, val, seq_len=128, max_batches=1, batch_size=8)
    unigram = unigram_perplexity(train_tokens, val)
    # float32 backends: as in test_train_tinylm_reduces_loss_and_backends_agree_after, exp(2 atol) - 1 relative
    logits = np_model.forward(val[:128][None])
    assert ppl_numpy == pytest.approx(ppl_torch, rel=math.expm1(2 * _tinylm_atol(torch_model.config, 128, logits)))
    assert ppl_torch < 0.5 * unigram, (ppl_torch, unigram)
    # the whole context was trained: windows of max_seq_len = 256 are predicted as well
    ppl_full = perplexity(torch_model, val_tokens[: 4 * 256 + 1], seq_len=256)
    assert ppl_full < 0.5 * unigram_perplexity(train_tokens, val_tokens[: 4 * 256 + 1]), ppl_full
    # the model learned English/Python text: greedy continuation of a prompt is printable ASCII
    from effx_lab.data import ByteTokenizer

    prompt = torch.from_numpy(ByteTokenizer().encode("The return statement"))
    out = torch_model.generate(prompt, 40)
    assert all(32 <= int(b) < 127 or int(b) == 10 for b in out[prompt.numel():])


# ------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------


def test_building_blocks_agree() -> None:
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((4, 7, 16))).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    tx, tw, tb = map(torch.from_numpy, (x, w, b))
    # float32, NumPy vs torch: twice the derived bound of each (_backends.layer_norm_bound, gelu_tanh_bound)
    assert_within(R.layer_norm(x, w, b), T.layer_norm(tx, tw, tb), 2 * layer_norm_bound(x, w, b, U32), "layer_norm")
    assert_within(R.gelu_tanh(x), T.gelu_tanh(tx), 2 * gelu_tanh_bound(x, U32), "gelu_tanh")
    # gelu_erf: NumPy's erf is Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) in float64, torch's erf is within
    # TRANSCENDENTAL_ULPS ulp; x / sqrt(2), 1 + erf and 0.5 x (...) add 4 roundings
    ax = np.abs(x.astype(np.float64))
    erf_bound = 0.5 * ax * (1.5e-7 + 2 * TRANSCENDENTAL_ULPS * U32 + 2 * U32 * ax) + 4 * U32 * ax
    assert_within(R.gelu_erf(x), T.gelu_erf(tx), erf_bound, "gelu_erf")
    # softmax over 7 values: exp (ulps, and the rounding of x - max, u |x - max| relative), a 7-term sum of
    # positive terms (gamma_7) and a division (u), per backend, relative to each probability
    p = R.softmax(x.astype(np.float64), axis=1)
    spread = np.abs(x - x.max(axis=1, keepdims=True)).astype(np.float64)
    spread_max = spread.max(axis=1, keepdims=True)  # the sum carries every term's exp error
    rel = 2 * (4 * TRANSCENDENTAL_ULPS * U32 + U32 * (spread + spread_max) + gamma(x.shape[1], U32) + U32)
    assert_within(R.softmax(x, axis=1), T.softmax(tx, axis=1), rel * p, "softmax")
    grid = np.linspace(-6, 6, 101)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in grid])
    np.testing.assert_allclose(R.gelu_erf(grid), exact, atol=1e-6)
    s = R.softmax(np.array([[0.0, -np.inf, 1.0]]))
    assert s[0, 1] == 0.0 and s.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"d_model": 30, "n_heads": 4}, ValueError, "divisible by n_heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, ValueError, "n_kv_heads must divide"),
        ({"n_heads": 4, "n_kv_heads": 8}, ValueError, "n_kv_heads"),
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"n_layers": True}, TypeError, "n_layers"),
        ({"d_ff": 2.5}, TypeError, "d_ff"),
        ({"norm_eps": 0.0}, ValueError, "norm_eps"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        TinyLMConfig(**kwargs)


def test_tinylm_rejects_bad_inputs() -> None:
    config = CONFIGS[0].values[0]
    np_model, torch_model = _models(config)
    good = _tokens(config, 2, 4)
    with pytest.raises(TypeError, match="tokens"):
        np_model.forward(good.astype(np.float32))
    with pytest.raises(ValueError, match="tokens must have 2 dimensions"):
        np_model.forward(good[0])
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 63\]"):
        np_model.forward(good + config.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len"):
        np_model.forward(_tokens(config, 1, config.max_seq_len + 1))
    with pytest.raises(TypeError, match="torch.Tensor"):
        torch_model(good)
    with pytest.raises(ValueError, match="tokens must be in"):
        torch_model(torch.full((1, 3), -1))
    cache = np_model.new_cache(2, max_seq_len=6)
    np_model.forward(good, cache)
    with pytest.raises(ValueError, match="do not fit in the cache"):
        np_model.forward(good, cache)
    with pytest.raises(ValueError, match="batch size 1"):
        np_model.forward(good[:1], np_model.new_cache(2))
    with pytest.raises(TypeError, match="reference.KVCache"):
        np_model.forward(good, torch_model.new_cache(2))
    with pytest.raises(TypeError, match="torch_ops.KVCache"):
        torch_model(torch.from_numpy(good), np_model.new_cache(2))
    other = TinyLMConfig(vocab_size=64, d_model=32, n_heads=2, max_seq_len=48)
    with pytest.raises(ValueError, match="cache was built for"):
        np_model.forward(good, R.KVCache(other, 2))
    with pytest.raises(ValueError, match="max_seq_len"):
        np_model.generate(good, config.max_seq_len)
    with pytest.raises(ValueError, match="temperature"):
        np_model.generate(good, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="max_seq_len must be an int"):
        R.KVCache(config, 1, max_seq_len=config.max_seq_len + 1)
    with pytest.raises(ValueError, match="batch_size"):
        torch_model.new_cache(0)


def test_params_are_validated() -> None:
    config = CONFIGS[0].values[0]
    params = init_tinylm_params(config)
    missing = dict(params)
    del missing["layers.1.mlp.w2"]
    with pytest.raises(ValueError, match="missing keys"):
        R.TinyLM(missing, config)
    wrong = dict(params, **{"layers.0.attn.wq": params["layers.0.attn.wq"].T[:, :5]})
    with pytest.raises(ValueError, match=r"params\['layers.0.attn.wq'\] must have shape"):
        T.TinyLM(wrong, config)
    with pytest.raises(ValueError, match="unexpected keys"):
        R.TinyLM(dict(params, extra=np.zeros(3, np.float32)), config)
    nan = dict(params, tok_emb=np.full_like(params["tok_emb"], np.nan))
    with pytest.raises(ValueError, match="finite"):
        R.TinyLM(nan, config)
    with pytest.raises(TypeError, match="config must be a TinyLMConfig"):
        R.TinyLM(params, {"d_model": 32})


def test_pretrained_checkpoint_float64_logits_are_unchanged() -> None:
    """The shipped checkpoint is not retrained: its float64 logits on a fixed prompt are
    the recorded ones (TinyLM's forward and the checkpoint file both stay as they were;
    relative 1e-9 leaves room for BLAS).
    """
    from effx_lab.data import ByteTokenizer

    model = load_pretrained_tinylm("torch").double()
    ids = torch.from_numpy(
        ByteTokenizer().encode("The return statement leaves the current function call")
    )
    with torch.no_grad():
        logits = model(ids.long()[None])[0]
    recorded = {
        0: (3.382162607094616, 3.7306555749914834, 1.1571306349567565),
        10: (0.9005590998659722, 2.8318611795933677, 4.837605965860308),
        40: (2.5714809013825413, 4.3584534145213105, 1.8446355532965337),
    }
    for t, values in recorded.items():
        got = [float(logits[t, v]) for v in (32, 101, 116)]  # ' ', 'e', 't'
        assert got == pytest.approx(values, rel=1e-9), t


def test_the_checkpoint_script_trains_a_few_steps(tmp_path) -> None:
    """``python -m effx_lab.models.train --scale 0.01`` (6 steps) writes a checkpoint
    whose metadata holds the measured perplexities. The numbers were recorded on the
    course's CPU before the training loop was shared; float32 training on another CPU
    may differ in the last bits, hence the tolerances (the unigram baseline is counting,
    exact)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "m.npz"
    env = dict(os.environ, EFFX_QUIET="1")
    args = ["-m", "effx_lab.models.train", "--scale", "0.01", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "step     6" in proc.stdout and f"wrote {out}" in proc.stdout
    with np.load(out) as data:
        meta = json.loads(str(data["__meta__"]))
    assert (
        meta["settings"] == {"steps": 6, "batch_size": 16, "seq_len": 256, "lr": 0.003}
        and meta["threads"] == 1
    )
    assert meta["final_train_loss"] == pytest.approx(4.509652813275655, rel=1e-3)
    measured = meta["measured"]
    assert measured["unigram_val_ppl"] == pytest.approx(26.250085499364985, rel=1e-12)
    assert measured["val_ppl_128"] == pytest.approx(48.854565879728966, rel=1e-2)
    assert measured["val_ppl_256"] == pytest.approx(48.88944726583365, rel=1e-2)
    assert measured["train_ppl_128"] == pytest.approx(48.93359309320809, rel=1e-2)
    # the checkpoint loads; its stored weights give the perplexity the script measured
    model = load_tinylm(out, backend="torch")
    assert model.meta == meta
    from effx_lab.data.pools import token_splits

    _, val = token_splits()
    # the script measured in float32 on one thread, this process may use several: the
    # summation order differs, so float32 rounding (u = 6e-8 per operation, a few hundred
    # terms per dot product) may move the perplexity in the 5th digit, never more
    assert perplexity(model, val, seq_len=128) == pytest.approx(
        measured["val_ppl_128"], rel=1e-4
    )


def test_training_helpers_reject_bad_inputs(tmp_path) -> None:
    config = CONFIGS[0].values[0]
    np_model, torch_model = _models(config)
    data = np.arange(100) % config.vocab_size
    with pytest.raises(TypeError, match="torch_ops.TinyLM"):
        train_tinylm(np_model, data, steps=1)
    with pytest.raises(ValueError, match="seq_len"):
        train_tinylm(torch_model, data, steps=1, seq_len=config.max_seq_len + 1)
    with pytest.raises(ValueError, match="steps"):
        train_tinylm(torch_model, data, steps=0)
    with pytest.raises(ValueError, match="at least 17 tokens"):
        perplexity(np_model, data[:10], seq_len=16)
    with pytest.raises(ValueError, match="tokens must lie in"):
        perplexity(torch_model, data + 1000, seq_len=16)
    with pytest.raises(TypeError, match="model must be"):
        perplexity("model", data)
    with pytest.raises(ValueError, match="backend"):
        load_pretrained_tinylm("jax")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a TinyLM checkpoint"):
        load_tinylm(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="no TinyLM checkpoint"):
        load_tinylm(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="dtype"):
        save_tinylm(np_model, tmp_path / "m.npz", dtype="int8")
    with pytest.raises(ValueError, match="alpha"):
        unigram_perplexity(data, data, vocab_size=64, alpha=0.0)


# ------------------------------------------------------------------------------------------------------
# MiniLM
# ------------------------------------------------------------------------------------------------------

SENTENCES = [
    "A man is playing a guitar.",
    "Quantization stores the weights of a neural network with fewer bits, which saves memory.",
    "Hello!",
    "The cat sleeps on the sofa.",
]


@pytest.fixture(scope="module")
def minilm():
    from effx_lab.models.minilm import MiniLMTokenizer, load_minilm

    config, params = load_minilm()
    return config, params, MiniLMTokenizer()


@pytest.fixture(scope="module")
def hf_bert(minilm):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from effx_lab.models.minilm import minilm_dir

    path = minilm_dir()
    hf_config = transformers.BertConfig.from_json_file(str(path / "config.json"))
    model = transformers.BertModel(hf_config, add_pooling_layer=False).eval()
    state = load_file(str(path / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    return model


def test_minilm_config_and_params(minilm) -> None:
    config, params, tok = minilm
    assert config == MiniLMConfig()  # the defaults are all-MiniLM-L6-v2's config.json
    assert params["encoder.layer.5.output.dense.weight"].shape == (384, 1536)
    assert all(v.dtype == np.float32 for v in params.values())
    assert len(params) == 5 + 16 * 6
    assert tok.vocab_size == config.vocab_size


def test_tokenizer_pads_to_longest_and_truncates(minilm) -> None:
    _, _, tok = minilm
    ids, mask = tok(SENTENCES)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    lengths = mask.sum(1)
    assert ids.shape[1] == lengths.max() and lengths[2] == 4  # [CLS] hello ! [SEP]
    assert (ids[:, 0] == 101).all() and (ids[np.arange(4), lengths - 1] == 102).all()
    assert (ids[mask == 0] == 0).all()
    ids8, mask8 = tok(SENTENCES, max_length=8)
    assert ids8.shape == (4, 8) and ids8[1, -1] == 102
    with pytest.raises(TypeError, match="list of str"):
        tok("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(ValueError, match="max_length"):
        tok(["x"], max_length=1)


def _minilm_k_path(config: MiniLMConfig, seq: int) -> int:
    """Terms summed along MiniLM's longest path, for :func:`_backends.network_atol` (as :func:`_tinylm_k_path`:
    per layer two LayerNorms, Q/K/V, a score, softmax and A V over ``seq``, the output projection, the FFN, the
    ulps of exp and erf; plus the embeddings' sum and LayerNorm)."""
    d = config.hidden_size
    head = d // config.num_attention_heads
    block = 2 * (d + 2) + d + head + 2 * seq + d + d + config.intermediate_size + 4 * TRANSCENDENTAL_ULPS
    return config.num_hidden_layers * block + (d + 2) + 3


def test_minilm_forward_matches_transformers(minilm, hf_bert) -> None:
    config, params, tok = minilm
    ids, mask = tok(SENTENCES)
    real = mask.astype(bool)  # compare at the real tokens (padded rows are never used downstream)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    # the same function: proved in float64, every hidden state (transformers' BertModel and ours on float64 weights)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    with torch.no_grad():
        hf64 = copy.deepcopy(hf_bert).double()(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=True)
        ours64, hidden64 = T.minilm_forward(p64, config, ids_t, mask_t, return_hidden_states=True)
    assert ours64.dtype == torch.float64 and len(hidden64) == len(hf64.hidden_states) == 7
    for layer, (a, ref) in enumerate(zip(hidden64, hf64.hidden_states)):
        np.testing.assert_allclose(a.numpy()[real], ref.numpy()[real], rtol=1e-10, atol=1e-10, err_msg=f"layer {layer}")
    # float32, both backends against transformers' float32 run: the derived tolerance of the whole encoder
    with torch.no_grad():
        hf = hf_bert(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=True)
    ours_np, hidden_np = R.minilm_forward(params, config, ids, mask, return_hidden_states=True)
    with torch.no_grad():
        ours_t, hidden_t = T.minilm_forward(params, config, ids_t, mask_t, return_hidden_states=True)
    assert ours_np.shape == (4, ids.shape[1], 384) and ours_np.dtype == np.float32
    assert ours_t.dtype == torch.float32
    assert len(hidden_np) == len(hidden_t) == len(hf.hidden_states) == 7
    expected = hf.last_hidden_state.numpy()
    atol = network_atol(_minilm_k_path(config, ids.shape[1]), expected[real], U32)
    np.testing.assert_allclose(ours_np[real], expected[real], atol=atol, rtol=0)
    np.testing.assert_allclose(ours_t.numpy()[real], expected[real], atol=atol, rtol=0)
    for layer, (a, b, ref) in enumerate(zip(hidden_np, hidden_t, hf.hidden_states)):
        atol = network_atol(_minilm_k_path(config, ids.shape[1]), ref.numpy()[real], U32)
        np.testing.assert_allclose(a[real], ref.numpy()[real], atol=atol, rtol=0, err_msg=f"layer {layer}")
        np.testing.assert_allclose(b.numpy()[real], ref.numpy()[real], atol=atol, rtol=0, err_msg=f"layer {layer}")


def test_sentence_embeddings(minilm) -> None:
    config, params, tok = minilm
    from effx_lab.models.minilm import encode

    ids, mask = tok(SENTENCES)
    hidden = R.minilm_forward(params, config, ids, mask)
    emb_np = R.mean_pool_normalize(hidden, mask)
    emb_t = T.mean_pool_normalize(torch.from_numpy(hidden), torch.from_numpy(mask)).numpy()
    # float32 pooling and normalising of the same hidden states, NumPy vs torch (derived, twice per backend):
    # the masked mean is within gamma_{T+1} mean|h| of the exact one, e = v / |v| adds gamma_{d+3} relative
    h64, m64 = hidden.astype(np.float64), mask.astype(np.float64)[:, :, None]
    n_tok = m64.sum(axis=1)
    v = (h64 * m64).sum(axis=1) / n_tok
    v_norm = np.linalg.norm(v, axis=1, keepdims=True)
    mean_abs = (np.abs(h64) * m64).sum(axis=1) / n_tok
    pool_bound = 2 * (gamma(ids.shape[1] + 1, U32) * mean_abs / v_norm + gamma(384 + 3, U32) * np.abs(v) / v_norm)
    assert_within(emb_t, emb_np, pool_bound, "mean_pool_normalize")
    np.testing.assert_allclose(np.linalg.norm(emb_np, axis=1), 1.0, atol=gamma(384 + 4, U32))  # |v/|v|| = 1
    # other batch shapes and backends: the encoder's derived tolerance on h, divided by the pooled norm
    atol = network_atol(_minilm_k_path(config, ids.shape[1]), hidden[mask.astype(bool)], U32) / v_norm.min()
    # padding does not change an embedding: "Hello!" alone equals "Hello!" padded inside the batch
    alone_ids, alone_mask = tok([SENTENCES[2]])
    alone = R.mean_pool_normalize(R.minilm_forward(params, config, alone_ids, alone_mask), alone_mask)
    np.testing.assert_allclose(alone[0], emb_np[2], atol=atol)
    np.testing.assert_allclose(encode(SENTENCES, backend="numpy"), emb_np, atol=atol)
    np.testing.assert_allclose(encode(SENTENCES, backend="torch", batch_size=3), emb_np, atol=atol)


def test_semantically_close_sentences_are_closer(minilm) -> None:
    from effx_lab.models.minilm import encode

    triples = [
        ("A man is playing a guitar.", "Someone is playing a musical instrument.", "The stock market fell sharply today."),
        ("How do I reset my password?", "I forgot my login credentials.", "The cat sleeps on the sofa."),
        ("Python is a programming language.", "I write software in Python.", "It rained all day in London."),
    ]
    emb = encode([s for t in triples for s in t]).reshape(len(triples), 3, -1)
    for (anchor, close, far), e in zip(triples, emb):
        sim_close, sim_far = float(e[0] @ e[1]), float(e[0] @ e[2])
        assert sim_close > sim_far + 0.2, (anchor, close, far, sim_close, sim_far)


def test_minilm_rejects_bad_inputs(minilm) -> None:
    config, params, tok = minilm
    ids, mask = tok(SENTENCES[:2])
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        R.minilm_forward(params, config, ids, mask[:, :-1])
    zero = mask.copy()
    zero[1] = 0
    with pytest.raises(ValueError, match="row of zeros"):
        R.minilm_forward(params, config, ids, zero)
    with pytest.raises(ValueError, match="input_ids must be in"):
        R.minilm_forward(params, config, ids + config.vocab_size, mask)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        T.minilm_forward(params, config, ids, mask)
    with pytest.raises(TypeError, match="input_ids"):
        R.minilm_forward(params, config, ids.astype(np.float32), mask)
    with pytest.raises(ValueError, match="missing keys"):
        R.minilm_forward({"embeddings.word_embeddings.weight": params["embeddings.word_embeddings.weight"]}, config, ids, mask)
    with pytest.raises(TypeError, match="config must be a MiniLMConfig"):
        R.minilm_forward(params, TinyLMConfig(), ids, mask)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        R.mean_pool_normalize(np.zeros((2, 3, 4), np.float32), mask)
    from effx_lab.models.minilm import encode

    with pytest.raises(ValueError, match="backend"):
        encode(["x"], backend="jax")
    with pytest.raises(TypeError, match="list of str"):
        encode("x")
