"""Tests of effx_lab.data.pools: the token streams and sentence pools every chapter shares."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from effx_lab.data import ByteTokenizer, load_corpus_splits, pools

# ----------------------------------------------------------------------------------- same outputs
# Fingerprints of the outputs of the chapter-2 functions these replaced (effx_lab.quant.models before
# the move), recorded with CPython 3.11.7, whose help text (pydoc_data.topics) has the hash below: the
# quantization notebooks assert numbers computed from these sentences and tokens, so for the same help
# text the move must not change a single sentence or token. The pools are built from the help text, so
# another Python (another help text) gives other, equally valid pools: the pinned check then skips.
TOPICS_SHA = "6c7d68cee92383c2"
SENTENCES = {  # (pool, n, seed) -> sha256 of the sentences joined by newlines (first 16 hex digits)
    ("calibration", 64, 0): "3b6f2cf5ec38a549",
    ("calibration", 16, 0): "abc71d43f5d9f27f",
    ("calibration", 32, 0): "3864d07de35fd743",
    ("calibration", 150, 3): "613e275129ca5836",
    ("calibration", 8, 0): "66133a64c2e19be2",
    ("evaluation", 256, 1): "12c0785282457f63",
    ("evaluation", 64, 1): "8732b64b12a39a25",
    ("evaluation", 300, 0): "dc049e76b49837c5",
    ("evaluation", 8, 1): "e77b611883a28518",
}
POOLS = (184, 368, "8dd0e96e6c92faf3", "51ff80cee43a25b4")
TOKENIZED = {  # (pool, n, max_length) -> (ids, mask) fingerprints
    ("calibration", 16, 64): ("57933a293978a7c3:int64:(16, 64)", "51733bd6ff047ec6:int64:(16, 64)"),
    ("evaluation", 8, 24): ("ff6324bfc29e28a2:int64:(8, 24)", "12d7275275e925f4:int64:(8, 24)"),
}
CALIB_TOKENS = {  # (n_tokens, seed) -> fingerprint
    (4096, 0): "912460ea0a8e9c7e:int64:(4096,)",
    (1024, 0): "8eaaf17edb4bccea:int64:(1024,)",
    (131072, 1): "55f666b661a8bd3f:int64:(131072,)",
    (260, 1): "419a2c6a0c4ad909:int64:(260,)",
    (8192, 0): "99e6aa88be14b695:int64:(8192,)",
}
EVAL_TOKENS = {None: "4672d806f5f46790:int64:(10933,)", 512: "d5a6c6ef63311307:int64:(512,)"}


def _topics_sha() -> str:
    from pydoc_data.topics import topics

    h = hashlib.sha256()
    for k in sorted(topics):
        h.update(k.encode() + b"\0" + topics[k].encode() + b"\0")
    return h.hexdigest()[:16]


def _hs(sentences) -> str:
    return hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]


def _ha(a: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
    return f"{digest}:{a.dtype}:{a.shape}"


def test_fingerprint_helpers_tell_outputs_apart():
    # the pinned test below is only as good as its fingerprints: one changed sentence, token or dtype shows
    assert _hs(["a b", "c"]) != _hs(["a b", "d"]) != _hs(["a", "b c"])
    a = np.arange(6, dtype=np.int64)
    b = a.copy()
    b[3] = 0
    assert _ha(a) != _ha(b) and _ha(a) != _ha(a.astype(np.int32)) and _ha(a) != _ha(a.reshape(2, 3))


@pytest.mark.skipif(
    _topics_sha() != TOPICS_SHA, reason="fingerprints pinned for CPython 3.11.7's help text"
)
def test_same_outputs_as_chapter_2_for_the_same_arguments():
    cal, ev = pools._sentence_pools()
    assert (len(cal), len(ev), _hs(cal), _hs(ev)) == POOLS
    draw = {"calibration": pools.calibration_sentences, "evaluation": pools.eval_sentences}
    for (pool, n, seed), want in SENTENCES.items():
        assert _hs(draw[pool](n, seed=seed)) == want, (pool, n, seed)
    for (pool, n, max_length), want in TOKENIZED.items():
        ids, mask = pools.tokenize_sentences(draw[pool](n), max_length=max_length)
        assert (_ha(ids), _ha(mask)) == want, (pool, n, max_length)
    for (n, seed), want in CALIB_TOKENS.items():
        assert _ha(pools.calibration_tokens(n, seed=seed)) == want, (n, seed)
    for n, want in EVAL_TOKENS.items():
        assert _ha(pools.eval_tokens(n)) == want, n


# ----------------------------------------------------------------------------------- sentences
def test_sentences_disjoint_and_deterministic():
    cal, ev = pools.calibration_sentences(64), pools.eval_sentences(256)
    assert len(cal) == 64 and len(ev) == 256 and len(set(ev)) == 256
    assert cal == pools.calibration_sentences(64) and ev == pools.eval_sentences(256)
    assert not set(pools.calibration_sentences(150, seed=3)) & set(pools.eval_sentences(300, seed=0))
    calib_pool, eval_pool = pools._sentence_pools()
    assert not set(calib_pool) & set(eval_pool)  # whatever the seeds
    assert pools.calibration_sentences(64, seed=1) != cal
    assert all(isinstance(s, str) and 8 <= len(s.split()) <= 40 and "\n" not in s for s in cal + ev)
    # the whole pool, in a seed's order
    assert sorted(pools.calibration_sentences(len(calib_pool), seed=5)) == sorted(calib_pool)
    ids, mask = pools.tokenize_sentences(ev[:50], max_length=64)
    assert ids.shape == mask.shape and ids.shape[1] <= 64 and ids.dtype == np.int64
    assert set(np.unique(mask)) <= {0, 1} and (mask.sum(axis=1) >= 3).all()  # [CLS] a word [SEP] at least


def test_sentences_bad_inputs():
    with pytest.raises(ValueError, match="n must be <="):
        pools.calibration_sentences(10_000)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        pools.eval_sentences(0)
    with pytest.raises(TypeError, match="seed"):
        pools.eval_sentences(4, seed=0.5)
    with pytest.raises(ValueError, match="seed"):
        pools.calibration_sentences(4, seed=-1)
    with pytest.raises(TypeError, match="texts"):
        pools.tokenize_sentences("one sentence")
    with pytest.raises(ValueError, match="max_length"):
        pools.tokenize_sentences(["a b c"], max_length=1)


# ----------------------------------------------------------------------------------- token streams
def test_token_splits_cached_read_only_and_exact():
    train, val = pools.token_splits()
    tok = ByteTokenizer()
    text_train, text_val = load_corpus_splits()
    assert np.array_equal(train, tok.encode(text_train)) and np.array_equal(val, tok.encode(text_val))
    assert train.dtype == val.dtype == np.int64 and not train.flags.writeable
    assert pools.token_splits()[0] is train  # cached
    v5 = pools.token_splits(5)[1]
    assert v5.shape[0] > val.shape[0]  # every 5th document instead of every 10th
    with pytest.raises(ValueError, match="val_every"):
        pools.token_splits(1)
    with pytest.raises(TypeError, match="val_every"):
        pools.token_splits(2.0)


def test_tokens_disjoint_and_deterministic():
    train, val = load_corpus_splits()
    tok = ByteTokenizer()
    cal = pools.calibration_tokens(4096, seed=0)
    assert cal.dtype == np.int64 and cal.shape == (4096,)
    assert np.array_equal(cal, pools.calibration_tokens(4096, seed=0))
    assert not np.array_equal(cal, pools.calibration_tokens(4096, seed=1))
    assert tok.decode(cal) in train
    ev = pools.eval_tokens(2000)
    assert np.array_equal(ev, tok.encode(val)[:2000])
    assert np.array_equal(pools.eval_tokens(), tok.encode(val))
    again = cal.copy()
    cal[:] = 0  # a copy is returned: the cached stream is not touched
    assert np.array_equal(pools.calibration_tokens(4096, seed=0), again)
    assert pools.calibration_tokens(8).flags.writeable
    with pytest.raises(ValueError, match="n_tokens"):
        pools.eval_tokens(10**7)
    with pytest.raises(ValueError, match="n_tokens"):
        pools.calibration_tokens(0)
    with pytest.raises(TypeError, match="seed"):
        pools.calibration_tokens(8, seed="0")


def test_check_token_stream():
    good = np.array([0, 5, 255], dtype=np.int64)
    assert pools.check_token_stream("tokens", good, min_len=3, vocab_size=256) is good
    t = torch.from_numpy(good)
    assert pools.check_token_stream("tokens", t, min_len=1, allow_torch=True) is t
    with pytest.raises(TypeError, match="tokens must be a NumPy array"):
        pools.check_token_stream("tokens", t, min_len=1)
    with pytest.raises(TypeError, match="ids must have a int/unsigned int dtype"):
        pools.check_token_stream("ids", good.astype(np.float32), min_len=1)
    with pytest.raises(ValueError, match="ids must have 1 dimensions"):
        pools.check_token_stream("ids", good[None], min_len=1)
    with pytest.raises(ValueError, match="tokens must hold at least 4 tokens, got 3"):
        pools.check_token_stream("tokens", good, min_len=4)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 99\].*got values in \[0, 255\]"):
        pools.check_token_stream("tokens", good, min_len=1, vocab_size=100)
    with pytest.raises(ValueError, match=r"got values in \[-1, 5\]"):
        pools.check_token_stream("tokens", np.array([-1, 5]), min_len=1, vocab_size=100)
