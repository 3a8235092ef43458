"""Tests of effx_lab.models.surgery: finding, replacing and recording the linear layers of TinyLM (an
nn.Module) and MiniLM (a parameter dict run through minilm_forward's hook)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _backends import abs_matmul, assert_within, gamma, unit_roundoff
from torch import nn

from effx_lab.data import calibration_sentences, calibration_tokens, eval_sentences, tokenize_sentences
from effx_lab.models import load_minilm, load_pretrained_tinylm
from effx_lab.models import surgery as S
from effx_lab.models.torch_ops import minilm_forward

TINY_LINEARS = [f"layers.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
U32 = unit_roundoff(torch.float32)
ULP32 = 2 * U32  # one float32 ulp, relative


class MaskedLinear(nn.Module):
    """What a pruning chapter puts in place of an nn.Linear: a weight, a 0/1 mask, a bias."""

    def __init__(self, lin: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone())
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def _strict(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained_tinylm("torch")


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def sentences():
    ids, mask = tokenize_sentences(eval_sentences(8), max_length=24)
    cids, cmask = tokenize_sentences(calibration_sentences(8), max_length=24)
    return ids, mask, cids, cmask


def _params64(params: dict) -> dict:
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in params.items()}


# ---------------------------------------------------------------------------------------------- is_linear
def test_is_linear():
    assert S.is_linear(nn.Linear(3, 2)) and S.is_linear(nn.Linear(3, 2, bias=False))
    assert S.is_linear(MaskedLinear(nn.Linear(3, 2), torch.ones(2, 3)))
    assert not S.is_linear(nn.Embedding(5, 3))  # a 2-D weight that is looked up, not multiplied
    assert not S.is_linear(nn.EmbeddingBag(5, 3))
    assert not S.is_linear(nn.LayerNorm(3))  # 1-D weight
    assert not S.is_linear(nn.Conv1d(2, 2, 3))  # 3-D weight
    assert not S.is_linear(nn.Sequential(nn.Linear(3, 2)))  # a container is not a layer
    int_weight = nn.Module()
    int_weight.register_buffer("weight", torch.ones(2, 3, dtype=torch.int8))
    assert not S.is_linear(int_weight)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        S.is_linear(torch.ones(2, 3))


# ---------------------------------------------------------------------------------------------- names, replace
def test_linear_names(tiny):
    assert S.linear_names(tiny) == TINY_LINEARS  # embeddings and LayerNorms are not linear layers
    assert S.linear_names(tiny, is_linear=_strict) == TINY_LINEARS
    assert S.linear_names(tiny, is_linear=lambda m: isinstance(m, nn.LayerNorm))[:2] == [
        "layers.0.ln1", "layers.0.ln2",
    ]
    # a linear-like module holding a linear: only the outer one is a layer (replacing it replaces both)
    outer = MaskedLinear(nn.Linear(3, 2), torch.ones(2, 3))
    outer.inner = nn.Linear(3, 2)
    model = nn.Sequential(outer, nn.Linear(2, 2))
    assert S.linear_names(model) == ["0", "1"]
    assert S.linear_names(model, is_linear=_strict) == ["0.inner", "1"]
    assert S.linear_names(nn.Linear(2, 2)) == []  # the model itself is never listed
    with pytest.raises(TypeError, match="model"):
        S.linear_names("model")
    with pytest.raises(TypeError, match="is_linear must be None or a callable"):
        S.linear_names(tiny, is_linear="nn.Linear")


def test_replace_linears_copy(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    seen = []

    def make(name, lin):
        seen.append(name)
        lin.weight.data.zero_()  # mutating the layer handed over must not reach the original model
        return MaskedLinear(lin, torch.zeros_like(lin.weight))

    pruned = S.replace_linears(tiny, make)
    assert seen == TINY_LINEARS
    assert all(isinstance(pruned.get_submodule(n), MaskedLinear) for n in TINY_LINEARS)
    assert S.linear_names(pruned) == TINY_LINEARS  # a masked linear is still a linear layer
    assert S.linear_names(pruned, is_linear=_strict) == []
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    kept = S.replace_linears(tiny, lambda n, lin: MaskedLinear(lin, torch.ones_like(lin.weight)),
                             skip=["layers.1.mlp.fc2"])
    assert S.linear_names(kept, is_linear=_strict) == ["layers.1.mlp.fc2"]
    x = torch.from_numpy(calibration_tokens(64)).view(1, 64)
    with torch.no_grad():  # an all-ones mask changes nothing: same float32 ops as nn.Linear
        torch.testing.assert_close(kept(x), tiny(x), rtol=0, atol=0)


def test_replace_linears_in_place_and_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 2))
    first = model[0]
    states = []

    def make(name, lin):
        # when layer k is made, the model already holds the replacements of layers 0..k-1
        states.append([type(m).__name__ for m in model if not isinstance(m, nn.ReLU)])
        return MaskedLinear(lin, torch.ones_like(lin.weight))

    out = S.replace_linears(model, make, inplace=True, skip=("3",))
    assert out is model and model[0] is not first
    assert states == [["Linear", "Linear", "Linear"], ["MaskedLinear", "Linear", "Linear"]]
    assert isinstance(model[3], nn.Linear)  # skipped
    with pytest.raises(TypeError, match="inplace"):
        S.replace_linears(model, make, inplace=1)


def test_replace_linears_bad_inputs(tiny):
    with pytest.raises(TypeError, match="model"):
        S.replace_linears("not a model", lambda n, lin: lin)
    with pytest.raises(TypeError, match="make"):
        S.replace_linears(tiny, 3)
    with pytest.raises(ValueError, match="skip"):
        S.replace_linears(tiny, lambda n, lin: lin, skip=["layers.0.attn.qkvv"])
    with pytest.raises(TypeError, match="skip"):
        S.replace_linears(tiny, lambda n, lin: lin, skip="layers.0.attn.qkv")
    with pytest.raises(TypeError, match="make"):
        S.replace_linears(tiny, lambda n, lin: lin.weight)
    with pytest.raises(TypeError, match="is_linear"):
        S.replace_linears(tiny, lambda n, lin: lin, is_linear=3)


def test_set_submodule_and_model_device():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    new = nn.Identity()
    S.set_submodule(model, "1.0", new)
    assert model[1][0] is new
    S.set_submodule(model, "0", nn.Tanh())
    assert isinstance(model[0], nn.Tanh)
    with pytest.raises(ValueError, match="name must be a qualified name under model.*'2'"):
        S.set_submodule(model, "2.fc", nn.Identity())
    with pytest.raises(TypeError, match="name"):
        S.set_submodule(model, "", nn.Identity())
    with pytest.raises(TypeError, match="new"):
        S.set_submodule(model, "0", torch.ones(2))
    assert S.model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert S.model_device(nn.ReLU()) == torch.device("cpu")  # neither parameters nor buffers
    with pytest.raises(TypeError, match="model"):
        S.model_device(None)


# ---------------------------------------------------------------------------------------------- recording
def test_collect_linear_inputs_tinylm(tiny):
    tokens = calibration_tokens(300)
    xs = S.collect_linear_inputs(tiny, tokens, batch_size=2, seq_len=64)
    assert list(xs) == TINY_LINEARS
    n = (300 // 64) * 64  # the 44-token tail is dropped
    for name, x in xs.items():
        assert x.shape == (n, tiny.get_submodule(name).in_features) and x.dtype == torch.float32
    # values: on a float64 copy (batches of 2 vs 3 vs all windows are different float32 GEMMs), recorded in
    # float32 (rounded once: the copies agree to one float32 ulp)
    tiny64 = copy.deepcopy(tiny).double()
    xs = S.collect_linear_inputs(tiny64, tokens, batch_size=2, seq_len=64)
    assert all(x.dtype == torch.float32 for x in xs.values())
    win = torch.from_numpy(tokens[:n].reshape(-1, 64))
    with torch.no_grad():  # the first layer's input is ln1 of the embeddings, window by window
        h = tiny64.layers[0].ln1(tiny64.tok_emb(win) + tiny64.pos_emb(torch.arange(64)))
    torch.testing.assert_close(xs["layers.0.attn.qkv"], h.reshape(n, -1).float(), rtol=ULP32, atol=0)
    capped = S.collect_linear_inputs(tiny64, tokens, max_tokens=100, names=["layers.1.mlp.fc2"])
    assert list(capped) == ["layers.1.mlp.fc2"]
    torch.testing.assert_close(capped["layers.1.mlp.fc2"], xs["layers.1.mlp.fc2"][:100], rtol=ULP32, atol=0)
    # stopping each pass after the layer: the same computations up to it, so the same values exactly
    early = S.collect_linear_inputs(tiny64, tokens, batch_size=2, names=["layers.0.attn.proj"], stop_early=True)
    assert torch.equal(early["layers.0.attn.proj"], xs["layers.0.attn.proj"])
    amax = S.linear_input_absmax(tiny64, tokens, batch_size=3)
    for name in TINY_LINEARS:
        torch.testing.assert_close(amax[name], xs[name].abs().amax(dim=0), rtol=ULP32, atol=0)
    torch.testing.assert_close(  # a torch stream reads the same as a NumPy one
        S.linear_input_absmax(tiny64, torch.from_numpy(tokens), batch_size=3, names=["layers.1.mlp.fc1"])[
            "layers.1.mlp.fc1"], amax["layers.1.mlp.fc1"], rtol=0, atol=0,
    )


def test_collect_linear_inputs_of_a_replaced_model(tiny):
    """Layers put in place of nn.Linear are recorded like any linear layer (sequential calibration)."""
    tokens = calibration_tokens(256)
    tiny64 = copy.deepcopy(tiny).double()
    half = S.replace_linears(tiny64, lambda n, lin: MaskedLinear(lin, torch.ones_like(lin.weight)),
                             skip=TINY_LINEARS[4:])
    got = S.collect_linear_inputs(half, tokens)
    ref = S.collect_linear_inputs(tiny64, tokens)
    assert list(got) == TINY_LINEARS
    for name in TINY_LINEARS:  # an all-ones mask: the same model, the same inputs
        assert torch.equal(got[name], ref[name]), name
    only_plain = S.collect_linear_inputs(half, tokens, is_linear=_strict)
    assert list(only_plain) == TINY_LINEARS[4:]
    with pytest.raises(ValueError, match="names .* are not linear layers"):
        S.collect_linear_inputs(half, tokens, names=["layers.0.attn.qkv"], is_linear=_strict)


def test_collect_linear_inputs_bad_inputs(tiny):
    tokens = calibration_tokens(300)
    with pytest.raises(ValueError, match="tokens"):
        S.collect_linear_inputs(tiny, tokens[:10], seq_len=64)
    with pytest.raises(TypeError, match="tokens"):
        S.collect_linear_inputs(tiny, tokens.astype(np.float32))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 255\]"):
        S.collect_linear_inputs(tiny, tokens + 1000)
    with pytest.raises(ValueError, match="names"):
        S.collect_linear_inputs(tiny, tokens, names=["layers.9.mlp.fc1"])
    with pytest.raises(TypeError, match="names"):
        S.collect_linear_inputs(tiny, tokens, names="layers.0.mlp.fc1")
    with pytest.raises(ValueError, match="seq_len"):
        S.collect_linear_inputs(tiny, tokens, seq_len=1000)
    with pytest.raises(ValueError, match="max_tokens"):
        S.linear_input_absmax(tiny, tokens, max_tokens=0)
    with pytest.raises(TypeError, match="stop_early"):
        S.collect_linear_inputs(tiny, tokens, stop_early="yes")
    with pytest.raises(ValueError, match="no linear layer"):
        S.collect_linear_inputs(nn.Sequential(nn.Embedding(256, 4)), tokens)
    # a layer the forward pass never calls
    class OneUsed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.used, self.unused = nn.Embedding(256, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(self.emb(x))

    model = OneUsed()
    assert list(S.collect_linear_inputs(model, tokens, names=["used"])) == ["used"]
    with pytest.raises(ValueError, match=r"layers \['unused'\] were never called"):
        S.collect_linear_inputs(model, tokens)


# ---------------------------------------------------------------------------------------------- MiniLM
def test_minilm_linear_names(minilm):
    cfg, params = minilm
    names = S.minilm_linear_names(cfg)
    assert len(names) == 36 and names[0] == "encoder.layer.0.attention.self.query"
    assert names[-1] == "encoder.layer.5.output.dense"
    assert all(n + ".weight" in params for n in names)
    assert names[:6] == [f"encoder.layer.0.{s}" for s in S.MINILM_LINEAR_SUFFIXES]
    assert S.check_minilm_linear_weights(params, cfg) is params
    with pytest.raises(TypeError, match=r"config must be a MiniLMConfig \(effx_lab\.models\.config"):
        S.minilm_linear_names(None)
    with pytest.raises(TypeError, match="params must be a dict"):
        S.check_minilm_linear_weights([1], cfg)
    with pytest.raises(ValueError, match="params is missing 1 linear weights, e.g. 'encoder.layer.2.output"):
        S.check_minilm_linear_weights({k: v for k, v in params.items() if "layer.2.output.dense.w" not in k}, cfg)


def test_identity_hook_calls_every_linear_in_order(minilm, sentences):
    cfg, params = minilm
    ids, mask = torch.from_numpy(sentences[0][:6]), torch.from_numpy(sentences[1][:6])
    called = []

    def plain(name, x, w, b):
        called.append(name)
        return F.linear(x, w, b)

    with torch.no_grad():
        assert torch.equal(minilm_forward(params, cfg, ids, mask, linear=plain), minilm_forward(params, cfg, ids, mask))
    assert called == S.minilm_linear_names(cfg)


def test_ids_mask_and_batches():
    ids = np.array([[5, 6, 0, 0], [7, 0, 0, 0], [8, 9, 10, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    ids_t, mask_t = S.check_ids_mask(ids, mask)
    assert ids_t.dtype == mask_t.dtype == torch.int64 and torch.equal(ids_t, torch.from_numpy(ids))
    batches = list(S.minilm_batches(ids, mask, 2))
    assert [tuple(i.shape) for i, _ in batches] == [(2, 2), (1, 3)]  # each cut to its longest sentence
    assert torch.equal(batches[1][0], torch.tensor([[8, 9, 10]]))
    assert [tuple(i.shape) for i, _ in S.minilm_batches(ids, mask.astype(bool), 5)] == [(3, 3)]
    with pytest.raises(ValueError, match=r"mask must have the shape of ids \(3, 4\)"):
        S.check_ids_mask(ids, mask[:2])
    with pytest.raises(TypeError, match="ids"):
        S.check_ids_mask(ids.astype(float), mask)
    with pytest.raises(ValueError, match="ids must have shape"):
        S.check_ids_mask(ids[:0], mask[:0])
    with pytest.raises(ValueError, match="batch_size"):
        S.minilm_batches(ids, mask, 0)  # checked at the call, not at the first batch


def test_record_minilm_linears(minilm, sentences):
    cfg, params = minilm
    cids, cmask = sentences[2], sentences[3]
    calib = S.record_minilm_linears(params, cfg, cids, cmask)
    assert list(calib) == S.minilm_linear_names(cfg)
    n_real = int(cmask.sum())
    q = calib["encoder.layer.0.attention.self.query"]
    assert q["inputs"].shape == (n_real, 384) and q["in_absmax"].shape == (384,) and q["out_absmax"].shape == (384,)
    torch.testing.assert_close(q["in_absmax"], q["inputs"].abs().amax(dim=0), rtol=0, atol=0)
    assert calib["encoder.layer.0.output.dense"]["inputs"].shape == (n_real, 1536)
    # the recorded inputs are the real tokens' rows: the query output rebuilt from them matches the forward's
    # (two float32 GEMMs of different batch shapes: each output within gamma_{K+1} (|x| @ |w|^T + |b|) of the
    # exact one, so each column's max within twice the largest such bound of that column)
    w = torch.from_numpy(params["encoder.layer.0.attention.self.query.weight"])
    b = torch.from_numpy(params["encoder.layer.0.attention.self.query.bias"])
    bound = 2 * gamma(384 + 1, U32) * (abs_matmul(q["inputs"], w.T) + np.abs(b.numpy()))
    assert_within(F.linear(q["inputs"], w, b).abs().amax(dim=0), q["out_absmax"], bound.max(axis=0), "out_absmax")
    # a different batch size and cap, proved on float64 parameters (recorded in float32, rounded once)
    p64 = _params64(params)
    full = S.record_minilm_linears(p64, cfg, cids, cmask)
    small = S.record_minilm_linears(p64, cfg, cids, cmask, max_tokens=10, keep_inputs=True, batch_size=5)
    assert small["encoder.layer.3.intermediate.dense"]["inputs"].shape == (10, 384)
    assert small["encoder.layer.3.intermediate.dense"]["inputs"].dtype == torch.float32
    key = "encoder.layer.0.attention.self.key"
    torch.testing.assert_close(small[key]["inputs"], full[key]["inputs"][:10], rtol=ULP32, atol=0)
    torch.testing.assert_close(
        small["encoder.layer.4.output.dense"]["in_absmax"], full["encoder.layer.4.output.dense"]["in_absmax"],
        rtol=ULP32, atol=0,
    )
    no_inputs = S.record_minilm_linears(params, cfg, cids[:2], cmask[:2], keep_inputs=False)
    assert "inputs" not in no_inputs["encoder.layer.0.output.dense"]


def test_record_minilm_linears_through_a_hook(minilm, sentences):
    """The statistics of the model a hook computes: here every query output doubled (float64)."""
    cfg, params = minilm
    p64 = _params64(params)
    cids, cmask = sentences[2][:4], sentences[3][:4]
    calls = []

    def same(name, x, w, b):
        calls.append(name)
        return F.linear(x, w, b)

    def doubled_query(name, x, w, b):
        y = F.linear(x, w, b)
        return 2 * y if name.endswith("query") else y

    ref = S.record_minilm_linears(p64, cfg, cids, cmask)
    via = S.record_minilm_linears(p64, cfg, cids, cmask, linear=same)
    assert calls == S.minilm_linear_names(cfg)  # one batch: each layer once, in order
    assert all(torch.equal(ref[n][k], via[n][k]) for n in ref for k in ref[n])
    got = S.record_minilm_linears(p64, cfg, cids, cmask, linear=doubled_query)
    first = "encoder.layer.0.attention.self.query"
    assert torch.equal(got[first]["in_absmax"], ref[first]["in_absmax"])  # its input comes before the hook
    assert torch.equal(got[first]["out_absmax"], 2 * ref[first]["out_absmax"])  # x2 is exact in floating point
    assert not torch.equal(got["encoder.layer.1.attention.self.query"]["inputs"],
                           ref["encoder.layer.1.attention.self.query"]["inputs"])  # later layers see it
    with pytest.raises(TypeError, match="linear must be None or a callable"):
        S.record_minilm_linears(p64, cfg, cids, cmask, linear="F.linear")


def test_minilm_layer_inputs(minilm, sentences):
    cfg, params = minilm
    p64 = _params64(params)
    cids, cmask = sentences[2], sentences[3]
    full = S.record_minilm_linears(p64, cfg, cids, cmask, max_tokens=None, batch_size=3)
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.2.output.dense"):
        # each pass stops at the layer: the same computations up to it, so the same inputs exactly
        x = S.minilm_layer_inputs(p64, cfg, cids, cmask, name, max_tokens=None, batch_size=3)
        assert torch.equal(x, full[name]["inputs"]), name
        capped = S.minilm_layer_inputs(p64, cfg, cids, cmask, name, max_tokens=7, batch_size=3)
        assert torch.equal(capped, full[name]["inputs"][:7]), name
    # a hook for the layers before it: the inputs of the model it computes
    target = "encoder.layer.1.attention.self.query"
    zeroed = S.minilm_layer_inputs(
        p64, cfg, cids, cmask, target, linear=lambda n, x, w, b: F.linear(x, 0 * w, b)
    )
    assert not torch.equal(zeroed, full[target]["inputs"])
    with pytest.raises(ValueError, match="name must be one of MiniLM's linear layers"):
        S.minilm_layer_inputs(p64, cfg, cids, cmask, "encoder.layer.9.output.dense")
    with pytest.raises(ValueError, match="max_tokens"):
        S.minilm_layer_inputs(p64, cfg, cids, cmask, target, max_tokens=0)
    empty = cmask.copy()
    empty[3] = 0
    with pytest.raises(ValueError, match="mask must select at least one real token .* row 3 is all zeros"):
        S.minilm_layer_inputs(p64, cfg, cids, empty, target)
    with pytest.raises(ValueError, match="mask must select at least one real token .* row 3 is all zeros"):
        S.record_minilm_linears(p64, cfg, cids, empty)
