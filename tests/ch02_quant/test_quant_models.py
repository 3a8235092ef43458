"""Tests of effx_lab.quant.models: quantizing whole models (TinyLM, MiniLM) and evaluating them. The surgery and
the data they build on are tested in tests/shared/test_surgery.py and tests/shared/test_pools.py."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _backends import assert_within, gamma, quantized_linear_bound, unit_roundoff
from torch import nn

import effx_lab.data as D
from effx_lab.data import calibration_sentences, calibration_tokens, eval_sentences, eval_tokens, tokenize_sentences
from effx_lab.models import load_minilm, load_pretrained_tinylm
from effx_lab.models import evaluation as E
from effx_lab.models import surgery as S
from effx_lab.models.torch_ops import minilm_forward
from effx_lab.quant import models as M
from effx_lab.quant import torch_ops as T

TINY_LINEARS = [f"layers.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    return load_pretrained_tinylm("torch")


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


U32 = unit_roundoff(torch.float32)
ULP32 = 2 * U32  # one float32 ulp, relative: two float64 results a few 1e-16 apart round to float32 <= 1 ulp apart


def _params64(params: dict) -> dict:
    """MiniLM's parameters in float64: agreement between two code paths is proved there (float32 rounding
    differs between BLAS kernels, batch shapes, CPU generations and thread counts)."""
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in params.items()}


@pytest.fixture(scope="module")
def sentences():
    """Small evaluation and calibration sets (short sentences keep MiniLM fast)."""
    ids, mask = tokenize_sentences(eval_sentences(8), max_length=24)
    cids, cmask = tokenize_sentences(calibration_sentences(8), max_length=24)
    return ids, mask, cids, cmask


@pytest.fixture(scope="module")
def calib(minilm, sentences):
    cfg, params = minilm
    return S.record_minilm_linears(params, cfg, sentences[2], sentences[3])


@pytest.fixture(scope="module")
def ref_emb(minilm, sentences):
    cfg, params = minilm
    return E.minilm_embeddings(params, cfg, sentences[0], sentences[1])


def _distinct_per_row(w: torch.Tensor) -> int:
    return max(len(torch.unique(row)) for row in w)


def _is_float_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


# ---------------------------------------------------------------------------------------------------- QuantizedLinear
def test_replace_linears_with_quantized_linear(tiny):
    """QuantizedLinear in the shared surgery (tests/shared/test_surgery.py): still a linear layer, no longer nn.Linear."""
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    q = S.replace_linears(tiny, lambda name, lin: M.QuantizedLinear(lin.weight, lin.bias, name=name, scheme="zero"))
    assert all(isinstance(q.get_submodule(n), M.QuantizedLinear) for n in TINY_LINEARS)
    assert S.linear_names(q) == TINY_LINEARS and S.linear_names(q, is_linear=_is_float_linear) == []
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "scheme='zero'" in repr(q.get_submodule("layers.0.mlp.fc1"))
    # its inputs are recorded like those of the nn.Linear it replaced (the same model: the same values)
    tokens = calibration_tokens(256)
    got, ref = S.collect_linear_inputs(q, tokens), S.collect_linear_inputs(tiny, tokens)
    assert list(got) == TINY_LINEARS and all(torch.equal(got[n], ref[n]) for n in TINY_LINEARS)


def test_quantized_linear_default_is_linear():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    x = torch.randn(3, 5, 6)
    q = M.QuantizedLinear(lin.weight, lin.bias)
    torch.testing.assert_close(q(x), lin(x), rtol=0, atol=0)
    assert (q.in_features, q.out_features) == (6, 4)
    nob = M.QuantizedLinear(lin.weight, None, lambda x, w, b: 2 * F.linear(x, w))
    torch.testing.assert_close(nob(x), 2 * F.linear(x, lin.weight))
    assert {n for n, _ in q.named_buffers()} == {"weight", "bias"}


def test_quantized_linear_bad_inputs():
    with pytest.raises(TypeError, match="weight"):
        M.QuantizedLinear(torch.ones(3))
    with pytest.raises(ValueError, match="bias"):
        M.QuantizedLinear(torch.ones(3, 2), torch.ones(2))
    with pytest.raises(TypeError, match="matmul"):
        M.QuantizedLinear(torch.ones(3, 2), None, matmul="F.linear")


# ---------------------------------------------------------------------------------------------------- TinyLM
def test_quantize_tinylm_methods(tiny):
    calib, ev = calibration_tokens(1024), eval_tokens(641)
    base = M.tinylm_perplexity(tiny, ev, seq_len=64)
    before = tiny.layers[0].mlp.fc1.weight.clone()
    for method in M.TINYLM_METHODS:
        q = M.quantize_tinylm(tiny, method, calib_tokens=calib, bits=8)
        assert S.linear_names(q, is_linear=_is_float_linear) == [], method
        assert all(isinstance(q.get_submodule(n), M.QuantizedLinear) for n in TINY_LINEARS), method
        ppl = M.tinylm_perplexity(q, ev, seq_len=64)
        assert base * 0.98 < ppl < base * 1.05, (method, ppl, base)
    assert torch.equal(tiny.layers[0].mlp.fc1.weight, before)
    # SmoothQuant smooths the LayerNorm-fed qkv and fc1; proj and fc2 are plain W8A8
    sq = M.quantize_tinylm(tiny, "smoothquant", calib_tokens=calib)
    assert sq.get_submodule("layers.0.mlp.fc1").scheme.startswith("smoothquant")
    assert sq.get_submodule("layers.0.mlp.fc2").scheme.startswith("w8a8")
    sq_all = M.quantize_tinylm(tiny, "smoothquant", calib_tokens=calib, smooth_layers="all")
    assert S.linear_names(sq_all, is_linear=_is_float_linear) == [] and sq_all.get_submodule("layers.0.mlp.fc2").scheme.startswith("smoothquant")
    # threshold 0: every input column is an outlier, kept in float: the exact model (proved in float64: in
    # float32 the outlier GEMM and nn.Linear's are different kernels, rounding differently)
    tiny64 = copy.deepcopy(tiny).double()
    exact = M.quantize_tinylm(tiny64, "llm_int8", threshold=0.0)
    x = torch.from_numpy(ev[:128].reshape(2, 64))
    with torch.no_grad():
        torch.testing.assert_close(exact(x), tiny64(x), rtol=1e-10, atol=1e-10)


def test_gptq_beats_rtn_on_tinylm(tiny):
    calib, ev = calibration_tokens(1024), eval_tokens(2048)
    for kw in ({"bits": 4}, {"bits": 3, "group_size": 32}):
        q_rtn = M.quantize_tinylm(tiny, "rtn", **kw)
        q_gptq = M.quantize_tinylm(tiny, "gptq", calib_tokens=calib, **kw)
        for q in (q_rtn, q_gptq):  # at most 2**bits distinct values per output row (per group of 32)
            w = q.get_submodule("layers.1.mlp.fc2").weight
            assert _distinct_per_row(w.reshape(-1, kw.get("group_size", w.shape[1]))) <= 2 ** kw["bits"]
        rtn, gptq = M.tinylm_perplexity(q_rtn, ev), M.tinylm_perplexity(q_gptq, ev)
        assert gptq < rtn, (kw, gptq, rtn)


def test_quantize_tinylm_bad_inputs(tiny):
    with pytest.raises(ValueError, match="method"):
        M.quantize_tinylm(tiny, "awq")
    with pytest.raises(TypeError, match="model"):
        M.quantize_tinylm(nn.Linear(2, 2), "rtn")
    with pytest.raises(ValueError, match="calib_tokens"):
        M.quantize_tinylm(tiny, "gptq")
    with pytest.raises(ValueError, match="calib_tokens"):
        M.quantize_tinylm(tiny, "smoothquant")
    with pytest.raises(ValueError, match="bits"):
        M.quantize_tinylm(tiny, "rtn", bits=9)
    with pytest.raises(ValueError, match="group_size"):
        M.quantize_tinylm(tiny, "rtn", group_size=48)
    with pytest.raises(ValueError, match="threshold"):
        M.quantize_tinylm(tiny, "llm_int8", threshold=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        M.quantize_tinylm(tiny, "smoothquant", calib_tokens=calibration_tokens(256), alpha=1.5)
    with pytest.raises(ValueError, match="act_granularity"):
        M.quantize_tinylm(tiny, "w8a8", act_granularity="channel")
    with pytest.raises(TypeError, match="model"):
        M.tinylm_perplexity("model", eval_tokens(300))


def test_fold_smoothquant_computes_the_same_function(tiny):
    """The fold is exact algebra: proved in float64 (rounding ~1e-16 per operation)."""
    tiny64 = copy.deepcopy(tiny).double()
    before = copy.deepcopy(tiny64.state_dict())
    calib = calibration_tokens(1024)
    folded = M.fold_smoothquant(tiny64, calib, alpha=0.5)
    after = tiny64.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # a copy
    assert next(folded.parameters()).dtype == torch.float64
    x = torch.from_numpy(eval_tokens(512).reshape(4, 128))
    with torch.no_grad():
        want, got = tiny64(x), folded(x)
    atol = 1e-10 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=atol)
    # the fold did something: the LayerNorm-fed layers now read x / s, s far from 1
    assert not torch.allclose(folded.layers[0].ln1.weight, tiny64.layers[0].ln1.weight)


def test_fold_smoothquant_weights_are_the_smoothed_weights(tiny):
    calib = calibration_tokens(1024)
    for alpha in (0.0, 0.5, 0.8):
        folded = M.fold_smoothquant(tiny, calib, alpha=alpha, calib_seq_len=32)
        absmax = S.linear_input_absmax(tiny, calib, seq_len=32)
        for i in range(2):
            for ln, linear in (("ln1", "attn.qkv"), ("ln2", "mlp.fc1")):
                name = f"layers.{i}.{linear}"
                w = tiny.get_submodule(name).weight.detach()
                s = T.smooth_scales(absmax[name], w, alpha=alpha)
                got = folded.get_submodule(name).weight
                assert torch.equal(got, T.smooth_weight(w, s)), name
                ln0 = tiny.get_submodule(f"layers.{i}.{ln}")
                gain, shift = T.fold_smoothing(ln0.weight, ln0.bias, s)
                ln1 = folded.get_submodule(f"layers.{i}.{ln}")
                assert torch.equal(ln1.weight, gain), (alpha, ln)
                assert torch.equal(ln1.bias, shift), (alpha, ln)
            # not LayerNorm-fed: unchanged
            for name in (f"layers.{i}.attn.proj", f"layers.{i}.mlp.fc2"):
                got = folded.get_submodule(name).weight
                assert torch.equal(got, tiny.get_submodule(name).weight), name
        assert torch.equal(folded.tok_emb.weight, tiny.tok_emb.weight)
        assert torch.equal(folded.ln_f.weight, tiny.ln_f.weight)


def test_fold_smoothquant_then_w8a8_is_smoothquant(tiny):
    """W8A8 on the folded model quantizes x / s and W diag(s): SmoothQuant, as
    quantize_tinylm's "smoothquant" method computes it (in float64: the two paths round
    x / s differently, by ~1e-16)."""
    tiny64 = copy.deepcopy(tiny).double()
    calib = calibration_tokens(1024)
    sq = M.quantize_tinylm(tiny64, "smoothquant", calib_tokens=calib, alpha=0.5)
    folded = M.fold_smoothquant(tiny64, calib, alpha=0.5)
    folded_w8a8 = M.quantize_tinylm(folded, "w8a8")
    plain_w8a8 = M.quantize_tinylm(tiny64, "w8a8")
    x = torch.from_numpy(eval_tokens(256).reshape(2, 128))
    with torch.no_grad():
        want, got, plain = sq(x), folded_w8a8(x), plain_w8a8(x)
    atol = 1e-8 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-8, atol=atol)
    assert (plain - want).abs().max() > 1e-3  # smoothing changed the quantized model


def test_fold_smoothquant_bad_inputs(tiny):
    calib = calibration_tokens(256)
    with pytest.raises(TypeError, match="model"):
        M.fold_smoothquant(nn.Linear(2, 2), calib)
    with pytest.raises(ValueError, match="alpha"):
        M.fold_smoothquant(tiny, calib, alpha=1.5)
    with pytest.raises(TypeError, match="alpha"):
        M.fold_smoothquant(tiny, calib, alpha="half")
    with pytest.raises(TypeError, match="calib_tokens"):
        M.fold_smoothquant(tiny, calib.astype(np.float32))
    with pytest.raises(ValueError, match="calib_tokens"):
        M.fold_smoothquant(tiny, calib[:10])
    with pytest.raises(ValueError, match="calib_tokens"):
        M.fold_smoothquant(tiny, calib + 1000)
    with pytest.raises(ValueError, match="calib_seq_len"):
        M.fold_smoothquant(tiny, calib, calib_seq_len=0)
    with pytest.raises(ValueError, match="max_calib_tokens"):
        M.fold_smoothquant(tiny, calib, max_calib_tokens=0)


# ---------------------------------------------------------------------------------------------------- MiniLM
def test_identity_hook_reproduces_minilm_forward(minilm, sentences):
    cfg, params = minilm
    ids, mask = torch.from_numpy(sentences[0][:6]), torch.from_numpy(sentences[1][:6])
    called = []

    def plain(name, x, w, b):
        called.append(name)
        return F.linear(x, w, b)

    with torch.no_grad():
        ref = minilm_forward(params, cfg, ids, mask)
        assert torch.equal(minilm_forward(params, cfg, ids, mask, linear=plain), ref)
        hook = M.minilm_quant_hook("float", params=params, config=cfg)
        assert torch.equal(minilm_forward(params, cfg, ids, mask, linear=hook), ref)
    assert called == S.minilm_linear_names(cfg)


def test_embedding_agreement():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 16))
    same = E.embedding_agreement(a, a.copy(), k=5)
    assert same == {
        "cosine_mean": pytest.approx(1.0),
        "cosine_min": pytest.approx(1.0),
        "top1_agreement": 1.0,
        "topk_overlap": 1.0,
    }
    # scale does not matter (cosine), a torch tensor works the same
    assert E.embedding_agreement(torch.from_numpy(a), torch.from_numpy(3 * a))["top1_agreement"] == 1.0
    prev = same
    for sigma in (0.3, 1.0, 3.0):
        got = E.embedding_agreement(a, a + sigma * rng.normal(size=a.shape), k=5)
        assert got["cosine_mean"] < prev["cosine_mean"] and got["cosine_min"] <= got["cosine_mean"]
        assert got["topk_overlap"] <= prev["topk_overlap"]
        prev = got
    assert prev["top1_agreement"] < 0.5
    # a hand-made case: 4 points on a line of angles; swapping the neighbours of point 0 changes its top-1
    ang = np.array([0.0, 0.1, 0.3, 1.4])
    ref = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    test = ref.copy()
    test[1] = [np.cos(-0.5), np.sin(-0.5)]  # point 1 moves away: 0's nearest becomes 2, 1's nearest stays 0
    got = E.embedding_agreement(ref, test, k=1)
    # top-1 ref: 0->1, 1->0, 2->1, 3->2 ; test: 0->2, 1->0, 2->0, 3->2
    assert got["top1_agreement"] == pytest.approx(0.5)
    assert got["cosine_min"] == pytest.approx(math.cos(0.6))


def test_embedding_agreement_bad_inputs():
    a = np.ones((4, 3))
    with pytest.raises(ValueError, match="test"):
        E.embedding_agreement(a, np.ones((5, 3)))
    with pytest.raises(ValueError, match="k"):
        E.embedding_agreement(a, a, k=4)
    with pytest.raises(ValueError, match="ref"):
        E.embedding_agreement(np.ones((1, 3)), np.ones((1, 3)), k=1)
    with pytest.raises(TypeError, match="ref"):
        E.embedding_agreement([[1.0, 2.0]], a)
    with pytest.raises(ValueError, match="zero"):
        E.embedding_agreement(np.zeros((4, 3)), a, k=1)


METHODS_8BIT = [
    ("w8a32", {}),
    ("w32a8", {}),
    ("w8a8", {}),
    ("w8a8", {"act_granularity": "token"}),
    ("llm_int8", {}),
    ("smoothquant", {}),
    ("zeroquant", {}),
    ("rtn", {}),
]  # "gptq" runs 36 GPTQs (~9 s here): covered by test_minilm_weight_only_grids and test_gptq_minilm_sequential


@pytest.mark.parametrize(
    "method,kw", METHODS_8BIT, ids=[f"{m}-{'-'.join(map(str, kw.values()))}" for m, kw in METHODS_8BIT]
)
def test_minilm_methods_8bit(minilm, sentences, calib, ref_emb, method, kw):
    cfg, params = minilm
    hook = M.minilm_quant_hook(method, params=params, config=cfg, calib=calib, bits=8, **kw)
    emb = E.minilm_embeddings(params, cfg, sentences[0], sentences[1], hook)
    assert emb.shape == ref_emb.shape
    # unit norm up to float32 rounding: the normalising norm (a 384-term sum, a sqrt), the division and the
    # norm measured here: |norm - 1| <= gamma_{384+4}
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(emb.shape[0]), rtol=0, atol=gamma(384 + 4, U32))
    got = E.embedding_agreement(ref_emb, emb)
    assert 0.9 < got["cosine_min"] and got["cosine_mean"] < 1 - 1e-7, got


def test_minilm_llm_int8_extremes(minilm, sentences, calib):
    cfg, params = minilm
    ids, mask = sentences[0], sentences[1]
    # threshold 0: every column in float, the exact model; proved in float64 (in float32 the outlier GEMM and
    # F.linear are different kernels, rounding differently, through six layers)
    p64 = _params64(params)
    exact = M.minilm_quant_hook("llm_int8", params=p64, config=cfg, threshold=0.0)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        hidden = minilm_forward(p64, cfg, ids_t, mask_t)
        assert hidden.dtype == torch.float64
        hidden_exact = minilm_forward(p64, cfg, ids_t, mask_t, linear=exact)
    torch.testing.assert_close(hidden_exact, hidden, rtol=1e-10, atol=1e-10)
    # no outlier column: LLM.int8 is its vector-wise int8 part = W8A8 per token and per output channel (the same
    # codes; an exact int32 product vs a float32 GEMM: within the derived bound of _backends.quantized_linear_bound)
    no_outliers = M.minilm_quant_hook("llm_int8", params=params, config=cfg, threshold=math.inf)
    per_token = M.minilm_quant_hook("w8a8", params=params, config=cfg, act_granularity="token")
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.3.output.dense"):
        x = calib[name]["inputs"]
        w, b = torch.as_tensor(params[name + ".weight"]), torch.as_tensor(params[name + ".bias"])
        assert_within(no_outliers(name, x, w, b), per_token(name, x, w, b), quantized_linear_bound(x, w, b, 8, 8), name)


def test_minilm_weight_only_grids(minilm, calib):
    from effx_lab.quant.torch_ops import layer_output_error

    cfg, params = minilm
    name = "encoder.layer.1.intermediate.dense"
    w = torch.as_tensor(params[name + ".weight"])
    x = calib[name]["inputs"]
    err = {}
    for method in ("rtn", "gptq"):
        hook = M.minilm_quant_hook(method, params=params, config=cfg, calib=calib, bits=3)
        # the weight a weight-only hook uses, read back through the identity input: 3 bits per output row
        w_hat = hook(name, torch.eye(384), w, torch.zeros(1536)).T
        assert w_hat.shape == w.shape and _distinct_per_row(w_hat) <= 8, method
        err[method] = layer_output_error(w, w_hat, x)
    # GPTQ minimises the output error on its calibration inputs, which RTN ignores
    assert 0 < err["gptq"] < 0.8 * err["rtn"], err


def test_minilm_smoothquant_smooths_layernorm_fed_layers(minilm, calib):
    cfg, params = minilm
    sq = M.minilm_quant_hook("smoothquant", params=params, config=cfg, calib=calib, alpha=0.5)
    sq_all = M.minilm_quant_hook("smoothquant", params=params, config=cfg, calib=calib, alpha=0.5, smooth_layers="all")
    w8a8 = M.minilm_quant_hook("w8a8", params=params, config=cfg)
    gen = torch.Generator().manual_seed(0)
    for name, ln_fed in (
        ("encoder.layer.1.attention.self.query", True),
        ("encoder.layer.1.attention.output.dense", False),
    ):
        w, b = torch.as_tensor(params[name + ".weight"]), torch.as_tensor(params[name + ".bias"])
        x = torch.randn(2, 5, 384, generator=gen) * (1 + 10 * (torch.arange(384) == 7))  # one outlier channel
        ref = F.linear(x, w, b)
        y_sq, y_all, y_plain = sq(name, x, w, b), sq_all(name, x, w, b), w8a8(name, x, w, b)
        assert torch.equal(y_sq, y_plain) is not ln_fed, name  # only LayerNorm-fed layers are smoothed
        assert not torch.equal(y_all, y_plain), name
        for y in (y_sq, y_all, y_plain):
            assert float((y - ref).norm() / ref.norm()) < 0.05


def test_minilm_smoothing_factors_share_one_s_across_query_key_value(minilm, calib):
    """share_qkv: one s from max|X_j| and the stacked q/k/v weights (the foldable s); FC1 its own."""
    cfg, params = minilm
    shared = M.minilm_smoothing_factors(params, cfg, calib, alpha=0.5)
    apart = M.minilm_smoothing_factors(params, cfg, calib, alpha=0.5, share_qkv=False)
    p = "encoder.layer.2."
    qkv = [p + "attention.self." + k for k in ("query", "key", "value")]
    assert set(shared) == set(apart) and len(shared) == 4 * cfg.num_hidden_layers
    w = torch.cat([torch.as_tensor(params[n + ".weight"]) for n in qkv])
    want = T.smooth_scales(calib[qkv[0]]["in_absmax"], w, 0.5)
    for n in qkv:
        assert torch.equal(shared[n], want)
        own = T.smooth_scales(calib[n]["in_absmax"], torch.as_tensor(params[n + ".weight"]), 0.5)
        assert torch.equal(apart[n], own)
    assert not torch.equal(apart[qkv[0]], apart[qkv[1]])  # each layer's own weights differ
    fc1 = p + "intermediate.dense"
    assert torch.equal(shared[fc1], apart[fc1])
    with pytest.raises(TypeError, match="share_qkv"):
        M.minilm_smoothing_factors(params, cfg, calib, share_qkv="yes")
    with pytest.raises(ValueError, match="calib"):
        M.minilm_smoothing_factors(params, cfg, None)


def test_minilm_smoothquant_share_qkv_is_w8a8_of_the_smoothed_layer(minilm, calib):
    """In float64 the foldable hook is exactly w8a8_linear(x / s, w * s) with the shared s."""
    cfg, params = minilm
    params64 = _params64(params)
    calib64 = {n: {k: v.double() for k, v in c.items() if k == "in_absmax"} for n, c in calib.items()}
    hook = M.minilm_quant_hook(
        "smoothquant", params=params64, config=cfg, calib=calib64, alpha=0.5, share_qkv=True
    )
    s = M.minilm_smoothing_factors(params64, cfg, calib64, alpha=0.5)
    name = "encoder.layer.0.attention.self.key"
    w = torch.as_tensor(params64[name + ".weight"])
    b = torch.as_tensor(params64[name + ".bias"])
    x = torch.randn(2, 5, 384, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = T.w8a8_linear(x / s[name], w * s[name], b, act_granularity="tensor")
    assert torch.equal(hook(name, x, w, b), want)
    plain = M.minilm_quant_hook("smoothquant", params=params64, config=cfg, calib=calib64, alpha=0.5)
    assert not torch.equal(plain(name, x, w, b), want)  # per-layer s: a different smoothing


def test_gptq_minilm_sequential(minilm, sentences, ref_emb):
    cfg, params = minilm
    before = params["encoder.layer.0.attention.self.query.weight"].copy()
    new = M.gptq_minilm(params, cfg, sentences[2][:3], sentences[3][:3], bits=4, group_size=128, max_tokens=64)
    assert set(new) == set(params)
    assert np.array_equal(params["encoder.layer.0.attention.self.query.weight"], before)
    for n in S.minilm_linear_names(cfg):
        w = torch.from_numpy(new[n + ".weight"])
        assert w.dtype == torch.float32 and w.shape == params[n + ".weight"].shape
        groups = w.reshape(w.shape[0], -1, 128)
        assert max(len(torch.unique(g)) for g in groups[:8].reshape(-1, 128)) <= 16, n
    assert np.array_equal(
        new["encoder.layer.2.output.LayerNorm.weight"], params["encoder.layer.2.output.LayerNorm.weight"]
    )
    emb = E.minilm_embeddings(new, cfg, sentences[0], sentences[1])
    assert E.embedding_agreement(ref_emb, emb)["cosine_mean"] > 0.9


def test_minilm_hook_bad_inputs(minilm, sentences, calib):
    cfg, params = minilm
    with pytest.raises(ValueError, match="method"):
        M.minilm_quant_hook("int4", params=params, config=cfg)
    with pytest.raises(ValueError, match="calib"):
        M.minilm_quant_hook("smoothquant", params=params, config=cfg)
    with pytest.raises(ValueError, match="calib"):
        M.minilm_quant_hook(
            "gptq", params=params, config=cfg, calib={n: {"in_absmax": v["in_absmax"]} for n, v in calib.items()}
        )
    with pytest.raises(ValueError, match="group_size"):
        M.minilm_quant_hook("rtn", params=params, config=cfg, group_size=100)
    with pytest.raises(ValueError, match="smooth_layers"):
        M.minilm_quant_hook("smoothquant", params=params, config=cfg, calib=calib, smooth_layers="fc")
    with pytest.raises(ValueError, match="weight_bits"):
        M.minilm_quant_hook("w8a32", params=params, config=cfg, weight_bits=1)
    with pytest.raises(TypeError, match="config"):
        M.minilm_quant_hook("w8a8", params=params, config=None)
    with pytest.raises(TypeError, match="params"):
        M.minilm_quant_hook("w8a8", params=[1], config=cfg)
    hook = M.minilm_quant_hook("w8a32", params=params, config=cfg)
    other = {k: v * 2 if k.endswith("query.weight") else v for k, v in params.items()}
    with pytest.raises(ValueError, match="other weights"):
        minilm_forward(other, cfg, torch.from_numpy(sentences[0][:2]), torch.from_numpy(sentences[1][:2]), linear=hook)
    with pytest.raises(ValueError, match="unknown layer"):
        hook("encoder.layer.9.output.dense", torch.ones(1, 384), torch.ones(384, 384), None)
    with pytest.raises(ValueError, match="mask"):
        E.minilm_embeddings(params, cfg, sentences[0], sentences[1][:3])
    with pytest.raises(TypeError, match="hook"):
        E.minilm_embeddings(params, cfg, sentences[0], sentences[1], hook=3)


# ---------------------------------------------------------------------------------------------------- re-exports
def test_quant_models_exports_only_its_own_names():
    """The shared data and surgery live in effx_lab.data / effx_lab.models.surgery only."""
    for name in ("calibration_sentences", "eval_tokens", "record_minilm_linears", "tokenize_sentences"):
        assert name not in M.__all__ and not hasattr(M, name), name
    assert all(callable(getattr(M, n)) for n in M.__all__ if not n.isupper())


def test_quantize_tinylm_leaves_quantized_layers_alone(tiny):
    """quantize_tinylm replaces the model's nn.Linear layers only: a QuantizedLinear already there is kept."""
    first = "layers.0.attn.qkv"
    part = S.replace_linears(tiny, lambda n, lin: M.QuantizedLinear(lin.weight, lin.bias, name=n, scheme="kept"),
                             skip=TINY_LINEARS[1:])
    q = M.quantize_tinylm(part, "rtn", bits=4)
    assert q.get_submodule(first).scheme == "kept"
    assert torch.equal(q.get_submodule(first).weight, tiny.get_submodule(first).weight)
    assert all(q.get_submodule(n).scheme.startswith("rtn 4-bit") for n in TINY_LINEARS[1:])
    with pytest.raises(ValueError, match="skip"):  # the kept layer is no longer an nn.Linear to skip
        M.quantize_tinylm(part, "rtn", skip=[first])
