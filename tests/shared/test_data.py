"""Tests of effx_lab.data: the offline corpus, its split, the byte tokenizer, batches and MQAR."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effx_lab.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    MQARBatch,
    corpus_stats,
    get_batch,
    load_corpus,
    load_corpus_splits,
    mqar,
    mqar_accuracy,
)
from effx_lab.data.corpus import DOC_SEPARATOR
from effx_lab.data.mqar import _sample_without_replacement

# ----------------------------------------------------------------------------------------------- corpus


def test_load_corpus_is_sorted_real_text():
    docs = load_corpus()
    names = [name for name, _ in docs]
    assert names == sorted(names)
    assert len(set(names)) == len(names) > 50
    assert all(isinstance(text, str) and text for _, text in docs)
    # real English prose about Python, not placeholder text
    joined = " ".join(text for _, text in docs)
    assert "statement" in joined and "the" in joined.split()
    assert load_corpus() == docs  # deterministic


def test_split_covers_all_topics_without_overlap():
    docs = load_corpus()
    train, val = load_corpus_splits(val_every=10)
    val_expected = [text for i, (_, text) in enumerate(docs) if (i + 1) % 10 == 0]
    train_expected = [text for i, (_, text) in enumerate(docs) if (i + 1) % 10 != 0]
    assert val == DOC_SEPARATOR.join(val_expected)
    assert train == DOC_SEPARATOR.join(train_expected)
    # no validation document leaks into the training text
    for i, (_, text) in enumerate(docs):
        if (i + 1) % 10 == 0:
            assert text not in train
    assert len(train) + len(val) == sum(len(t) for _, t in docs) + len(DOC_SEPARATOR) * (len(docs) - 2)
    assert load_corpus_splits(val_every=10) == (train, val)  # deterministic


def test_split_every_doc_in_exactly_one_side_by_name():
    stats = corpus_stats(val_every=5)
    names = [name for name, _ in load_corpus()]
    assert stats["val_topics"] == names[4::5]
    assert stats["n_docs_train"] + stats["n_docs_val"] == stats["n_docs"] == len(names)
    train, val = load_corpus_splits(val_every=5)
    assert stats["n_bytes_train"] == len(train.encode()) and stats["n_bytes_val"] == len(val.encode())
    assert stats["n_bytes"] == stats["n_bytes_train"] + stats["n_bytes_val"]
    assert 50 < stats["n_unique_bytes"] <= 256


@pytest.mark.parametrize("bad", [1, 0, -3, 10_000])
def test_split_rejects_bad_val_every(bad):
    with pytest.raises(ValueError, match="val_every"):
        load_corpus_splits(val_every=bad)


def test_split_rejects_non_int_val_every():
    with pytest.raises(TypeError, match="val_every"):
        load_corpus_splits(val_every=2.5)


def test_tokenizer_round_trip_on_real_corpus():
    tok = ByteTokenizer()
    train, val = load_corpus_splits()
    for text in (train, val):
        ids = tok.encode(text)
        assert ids.dtype == np.int64 and ids.ndim == 1
        assert ids.min() >= 0 and ids.max() < tok.vocab_size == 256
        assert len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    # the corpus has non-ASCII characters (curly quotes, dashes): multi-byte round trip
    assert any(ord(c) > 127 for c in train)
    assert tok.decode(tok.encode("naïve — “quoted” 🚀")) == "naïve — “quoted” 🚀"
    assert tok.decode([104, 105]) == "hi"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_round_trip_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) == len(text.encode("utf-8"))


def test_tokenizer_decode_broken_utf8_replaces():
    tok = ByteTokenizer()
    ids = tok.encode("é")[:1]  # half of a two-byte character
    assert tok.decode(ids) == "\ufffd"


def test_tokenizer_decode_accepts_torch():
    torch = pytest.importorskip("torch")
    tok = ByteTokenizer()
    assert tok.decode(torch.tensor([79, 75])) == "OK"


def test_tokenizer_bad_inputs():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 256\)"):
        tok.decode(np.array([65, 256]))
    with pytest.raises(ValueError, match="ids"):
        tok.decode(np.array([-1, 65]))
    with pytest.raises(TypeError, match="ids"):
        tok.decode(np.array([65.0]))
    with pytest.raises(ValueError, match="ids"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="ids"):
        tok.decode(["a"])


def test_get_batch_shift_and_windows():
    tok = ByteTokenizer()
    tokens = tok.encode(load_corpus_splits()[1])
    x, y = get_batch(tokens, 8, 32, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # every row is a contiguous window of the stream
    for row_x, row_y in zip(x, y):
        starts = np.flatnonzero(tokens[: len(tokens) - 32] == row_x[0])
        assert any(
            np.array_equal(tokens[s : s + 32], row_x) and np.array_equal(tokens[s + 1 : s + 33], row_y) for s in starts
        )
    x2, y2 = get_batch(tokens, 8, 32, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    x3, _ = get_batch(tokens, 8, 32, np.random.default_rng(1))
    assert not np.array_equal(x, x3)


def test_get_batch_uses_the_whole_range_including_the_last_window():
    tokens = np.arange(5, dtype=np.int64)
    x, y = get_batch(tokens, 200, 4, np.random.default_rng(0))  # only one window fits
    assert (x == np.arange(4)).all() and (y == np.arange(1, 5)).all()
    tokens = np.arange(10, dtype=np.int64)
    x, _ = get_batch(tokens, 500, 3, np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == set(range(7))  # starts 0..6 all reachable, never beyond


def test_get_batch_bad_inputs():
    rng = np.random.default_rng(0)
    tokens = np.arange(10, dtype=np.int64)
    with pytest.raises(ValueError, match="tokens must hold at least seq_len \\+ 1 = 11"):
        get_batch(tokens, 2, 10, rng)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(tokens, 0, 4, rng)
    with pytest.raises(ValueError, match="seq_len"):
        get_batch(tokens, 2, -3, rng)
    with pytest.raises(TypeError, match="rng"):
        get_batch(tokens, 2, 4, 0)
    with pytest.raises(TypeError, match="tokens"):
        get_batch(tokens.astype(np.float32), 2, 4, rng)
    with pytest.raises(ValueError, match="tokens"):
        get_batch(tokens.reshape(2, 5), 2, 2, rng)
    with pytest.raises(TypeError, match="tokens"):
        get_batch(list(range(10)), 2, 4, rng)


# ------------------------------------------------------------------------------------------------- MQAR


def _check_mqar_invariants(b: MQARBatch, n: int, t: int, k: int, v: int) -> None:
    assert b.inputs.shape == b.targets.shape == (n, t)
    assert b.inputs.dtype == b.targets.dtype == np.int64
    half = v // 2
    scored = b.targets != IGNORE_INDEX
    assert (scored.sum(axis=1) == k).all()
    assert ((b.inputs >= 0) & (b.inputs < v)).all()
    for i in range(n):
        ctx_keys = b.inputs[i, 0 : 2 * k : 2]
        ctx_vals = b.inputs[i, 1 : 2 * k : 2]
        # keys from the first half (never 0), values from the second half, keys distinct
        assert ((ctx_keys >= 1) & (ctx_keys < half)).all()
        assert ((ctx_vals >= half) & (ctx_vals < v)).all()
        assert len(set(ctx_keys.tolist())) == k
        bound = dict(zip(ctx_keys.tolist(), ctx_vals.tolist()))
        positions = np.flatnonzero(scored[i])
        assert (positions >= 2 * k).all()  # queries come after the context
        assert ((positions - 2 * k) % 2 == 0).all()  # at the first token of a 2-token slot
        queried = b.inputs[i, positions].tolist()
        assert sorted(queried) == sorted(ctx_keys.tolist())  # each key queried exactly once
        for pos in positions:
            assert b.targets[i, pos] == bound[int(b.inputs[i, pos])]
        np.testing.assert_array_equal(np.sort(positions), np.sort(b.query_positions[i]))
    np.testing.assert_array_equal(b.inputs[:, 0 : 2 * k : 2], b.keys)
    np.testing.assert_array_equal(b.inputs[:, 1 : 2 * k : 2], b.values)


@pytest.mark.parametrize(
    "n,t,k,v",
    [(64, 64, 4, 8192), (32, 128, 16, 256), (50, 16, 4, 10), (20, 33, 8, 40), (10, 8, 2, 6)],
)
def test_mqar_invariants(n, t, k, v):
    b = mqar(n, t, k, v, seed=1)
    _check_mqar_invariants(b, n, t, k, v)
    assert b.metadata["num_kv_pairs"] == k and b.metadata["vocab_size"] == v
    assert b.num_examples == n and b.seq_len == t


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 6),
    k=st.integers(1, 12),
    extra=st.integers(0, 40),
    v_extra=st.integers(0, 300),
    power_a=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**31),
)
def test_mqar_invariants_random_sizes(n, k, extra, v_extra, power_a, seed):
    t, v = 4 * k + extra, 2 * k + 2 + v_extra
    _check_mqar_invariants(mqar(n, t, k, v, power_a=power_a, seed=seed), n, t, k, v)


def test_mqar_is_deterministic_and_seed_dependent():
    a = mqar(16, 64, 8, 512, seed=7)
    b = mqar(16, 64, 8, 512, seed=7)
    c = mqar(16, 64, 8, 512, seed=8)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)


def test_mqar_zero_filler_matches_zoology_layout():
    b = mqar(8, 16, 2, 12, random_non_queries=False, seed=0)
    _check_mqar_invariants(b, 8, 16, 2, 12)
    scored = b.targets != IGNORE_INDEX
    context = np.zeros_like(scored)
    context[:, :4] = True
    assert (b.inputs[~scored & ~context] == 0).all()


def test_mqar_noise_is_uniform_over_vocab():
    v = 64
    b = mqar(400, 256, 4, v, seed=0)
    noise = b.inputs[:, 8:][b.targets[:, 8:] == IGNORE_INDEX]
    counts = np.bincount(noise, minlength=v)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_mqar_power_law_puts_queries_early():
    # small power_a: gaps follow p(g) ∝ (g+1)^(a-1), strongly favouring the first slots
    skewed = mqar(2000, 256, 4, 1024, power_a=0.01, seed=0)
    uniform = mqar(2000, 256, 4, 1024, power_a=1.0, seed=0)
    space = (256 - 8) // 2
    slots_skewed = (skewed.query_positions - 8) // 2
    slots_uniform = (uniform.query_positions - 8) // 2
    assert slots_skewed.max() < space and slots_uniform.max() < space
    assert np.median(slots_skewed) < 0.5 * np.median(slots_uniform)
    assert abs(slots_uniform.mean() - (space - 1) / 2) < 3


def test_sample_without_replacement_matches_sequential_choice():
    # both code paths (rejection and Gumbel-top-k) against numpy's sequential choice, first draw marginals
    rng = np.random.default_rng(0)
    n = 40_000
    uniform = _sample_without_replacement(rng, n, 50, 3)
    assert all(len(set(r)) == 3 for r in uniform[:2000].tolist())
    np.testing.assert_allclose(np.bincount(uniform[:, 0], minlength=50) / n, 1 / 50, atol=0.006)
    w = np.log(np.arange(1, 7, dtype=float))
    p = np.exp(w) / np.exp(w).sum()
    weighted = _sample_without_replacement(rng, n, 6, 2, log_weights=w)
    assert (weighted[:, 0] != weighted[:, 1]).all()
    np.testing.assert_allclose(np.bincount(weighted[:, 0], minlength=6) / n, p, atol=0.01)
    # second draw: P(j second) = sum_i p_i p_j / (1 - p_i)
    second = np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(6) if i != j) for j in range(6)])
    np.testing.assert_allclose(np.bincount(weighted[:, 1], minlength=6) / n, second, atol=0.01)


def test_mqar_accuracy():
    b = mqar(8, 32, 4, 64, seed=0)
    assert mqar_accuracy(b.targets.clip(min=0), b.targets) == 1.0
    wrong = b.targets.clip(min=0).copy()
    pos = b.query_positions[:, 0]
    wrong[np.arange(8), pos] += 1  # one of 4 scored positions wrong in each example
    assert mqar_accuracy(wrong, b.targets) == pytest.approx(0.75)
    # unscored positions never count
    noisy = b.targets.clip(min=0).copy()
    noisy[b.targets == IGNORE_INDEX] = 3
    assert mqar_accuracy(noisy, b.targets) == 1.0
    # logits: argmax over the last axis
    logits = np.zeros((8, 32, 64), dtype=np.float32)
    np.put_along_axis(logits, b.targets.clip(min=0)[..., None], 1.0, axis=-1)
    assert mqar_accuracy(logits, b.targets) == 1.0


def test_mqar_accuracy_torch():
    torch = pytest.importorskip("torch")
    b = mqar(4, 16, 2, 32, seed=0)
    inputs, targets = b.to_torch()
    assert inputs.dtype == targets.dtype == torch.int64
    assert mqar_accuracy(targets.clamp(min=0), targets) == 1.0
    assert mqar_accuracy(torch.zeros(4, 16, dtype=torch.int64), targets) == 0.0


def test_mqar_accuracy_bad_inputs():
    t = np.full((2, 4), IGNORE_INDEX)
    with pytest.raises(ValueError, match="at least one scored position"):
        mqar_accuracy(np.zeros((2, 4), dtype=np.int64), t)
    t[0, 1] = 5
    with pytest.raises(ValueError, match="predictions must have the shape of targets"):
        mqar_accuracy(np.zeros((2, 5), dtype=np.int64), t)
    with pytest.raises(TypeError, match="predictions"):
        mqar_accuracy(np.zeros((2, 4)), t)
    with pytest.raises(TypeError, match="targets"):
        mqar_accuracy(np.zeros((2, 4), dtype=np.int64), t.astype(float))
    with pytest.raises(TypeError, match="predictions"):
        mqar_accuracy([[0, 0, 0, 0]], t)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_examples=4, seq_len=15, num_kv_pairs=4), ValueError, "seq_len must be >= 4 \\* num_kv_pairs = 16"),
        (dict(num_examples=4, seq_len=64, num_kv_pairs=4, vocab_size=9), ValueError, "vocab_size must be >= .* = 10"),
        (dict(num_examples=0, seq_len=64, num_kv_pairs=4), ValueError, "num_examples"),
        (dict(num_examples=4, seq_len=64, num_kv_pairs=0), ValueError, "num_kv_pairs"),
        (dict(num_examples=4, seq_len=64, num_kv_pairs=4, power_a=0.0), ValueError, "power_a"),
        (dict(num_examples=4, seq_len=64, num_kv_pairs=4, power_a=float("nan")), ValueError, "power_a"),
        (dict(num_examples=4, seq_len=64, num_kv_pairs=4, seed=-1), ValueError, "seed"),
        (dict(num_examples=4.0, seq_len=64, num_kv_pairs=4), TypeError, "num_examples"),
        (dict(num_examples=4, seq_len="64", num_kv_pairs=4), TypeError, "seq_len"),
        (dict(num_examples=4, seq_len=64, num_kv_pairs=4, random_non_queries=1), TypeError, "random_non_queries"),
    ],
)
def test_mqar_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mqar(**kwargs)


# ----------------------------------------------------------------------------------------------- pools
def test_pools_are_exported_by_the_package():
    """The shared pools (tested in tests/shared/test_pools.py) are importable from effx_lab.data, the same objects."""
    import effx_lab.data as D
    from effx_lab.data import pools

    for name in pools.__all__:
        assert name in D.__all__ and getattr(D, name) is getattr(pools, name), name
    assert set(pools.__all__) == {
        "calibration_sentences", "calibration_tokens", "check_token_stream", "eval_sentences", "eval_tokens",
        "token_splits", "tokenize_sentences",
    }
    assert sorted(D.__all__) == sorted(set(D.__all__)) and all(hasattr(D, n) for n in D.__all__)
