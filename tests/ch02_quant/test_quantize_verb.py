"""Tests of effx_lab.quant.quantize_ (torchao's whole-model verb) and its configs (effx_lab.quant.configs)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import effx_lab.quant as Q
from effx_lab.data import calibration_tokens, eval_tokens
from effx_lab.models import load_minilm, load_pretrained_tinylm
from effx_lab.models import surgery as S
from effx_lab.quant import configs as C
from effx_lab.quant import models as M

TINY_LINEARS = [f"layers.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]

# one config per method, with non-default settings where the method has them, and the quantize_tinylm call
# with the same settings written out by hand (not through tinylm_kwargs, which is what is tested)
CASES = [
    (C.RTNConfig(bits=3, group_size=32, symmetric=True), "rtn", {"bits": 3, "group_size": 32, "symmetric": True}),
    (C.GPTQConfig(bits=4, group_size=32, calib_seq_len=32, max_calib_tokens=256), "gptq",
     {"bits": 4, "group_size": 32, "calib_seq_len": 32, "max_calib_tokens": 256}),
    (C.W8A8Config(bits=6, a_bits=7, act_granularity="token"), "w8a8",
     {"bits": 6, "a_bits": 7, "act_granularity": "token"}),
    (C.W8A8Config(a_bits=None), "w8a8", {"a_bits": None}),
    (C.LLMInt8Config(bits=8, threshold=2.0), "llm_int8", {"threshold": 2.0}),
    (C.SmoothQuantConfig(alpha=0.75, smooth_layers="all", act_granularity="token", calib_seq_len=128), "smoothquant",
     {"alpha": 0.75, "smooth_layers": "all", "act_granularity": "token", "calib_seq_len": 128}),
    (C.ZeroQuantConfig(bits=4, group_size=32, a_bits=6), "zeroquant", {"bits": 4, "group_size": 32, "a_bits": 6}),
]


@pytest.fixture(scope="module")
def tiny64():
    """TinyLM in float64: the verb and quantize_tinylm are compared there (one implementation: equal outputs)."""
    return load_pretrained_tinylm("torch").double()


@pytest.fixture(scope="module")
def windows():
    return torch.from_numpy(eval_tokens(256)).view(2, 128)


@pytest.mark.parametrize("config,method,kwargs", CASES, ids=[f"{type(c).__name__}-{i}" for i, (c, _, _) in
                                                               enumerate(CASES)])
def test_quantize_equals_quantize_tinylm(tiny64, windows, config, method, kwargs):
    calib = calibration_tokens(1024)
    ref = M.quantize_tinylm(tiny64, method, calib_tokens=calib, **kwargs)
    model = copy.deepcopy(tiny64)
    emb = model.tok_emb
    out = Q.quantize_(model, config, calib_tokens=calib)
    assert out is model and model.tok_emb is emb  # in place: the same model, its other modules untouched
    for name in TINY_LINEARS:
        got, want = model.get_submodule(name), ref.get_submodule(name)
        assert isinstance(got, M.QuantizedLinear) and got.scheme == want.scheme, name
        assert torch.equal(got.weight, want.weight), name
    with torch.no_grad():
        assert torch.equal(model(windows), ref(windows))
    assert not torch.equal(model(windows), tiny64(windows))  # it did quantize


def test_defaults_are_quantize_tinylm_defaults(tiny64, windows):
    # quantize_tinylm's defaults, but 4 bits for the weight-only methods
    assert C.RTNConfig() == C.RTNConfig(bits=4, group_size=None, symmetric=False)
    assert C.GPTQConfig().tinylm_kwargs() == {
        "bits": 4, "group_size": None, "symmetric": False, "calib_seq_len": 64, "max_calib_tokens": None
    }
    for config, method in ((C.RTNConfig(bits=8), "rtn"), (C.W8A8Config(), "w8a8"), (C.LLMInt8Config(), "llm_int8"),
                           (C.ZeroQuantConfig(), "zeroquant")):
        model = Q.quantize_(copy.deepcopy(tiny64), config)
        with torch.no_grad():
            assert torch.equal(model(windows), M.quantize_tinylm(tiny64, method)(windows)), method
    calib = calibration_tokens(512)
    model = Q.quantize_(copy.deepcopy(tiny64), C.SmoothQuantConfig(), calib_tokens=calib)
    with torch.no_grad():
        assert torch.equal(model(windows), M.quantize_tinylm(tiny64, "smoothquant", calib_tokens=calib)(windows))


def test_quantize_skip_and_the_float_model_untouched(tiny64):
    model = copy.deepcopy(tiny64)
    kept = model.get_submodule("layers.1.mlp.fc2")
    Q.quantize_(model, C.RTNConfig(), skip=(n for n in ["layers.1.mlp.fc2"]))  # any iterable, read once
    assert model.get_submodule("layers.1.mlp.fc2") is kept
    assert S.linear_names(model, is_linear=lambda m: isinstance(m, nn.Linear)) == ["layers.1.mlp.fc2"]
    assert all(isinstance(model.get_submodule(n), M.QuantizedLinear) for n in TINY_LINEARS[:-1])
    assert isinstance(tiny64.get_submodule("layers.0.attn.qkv"), nn.Linear)  # the fixture was not touched


@pytest.mark.parametrize("bad", ["rtn", {"bits": 4}, None, C.RTNConfig, 4])
def test_quantize_rejects_what_is_not_a_config(tiny64, bad):
    with pytest.raises(TypeError, match=r"config must be a quantization config \(an instance of GPTQConfig, .*, got"):
        Q.quantize_(tiny64, bad)


@pytest.mark.parametrize("config", [C.GPTQConfig(), C.SmoothQuantConfig()], ids=["gptq", "smoothquant"])
def test_quantize_needs_calibration_tokens(tiny64, config):
    model = copy.deepcopy(tiny64)
    with pytest.raises(ValueError, match=f"{type(config).__name__} needs calib_tokens .*, got None"):
        Q.quantize_(model, config)
    assert S.linear_names(model, is_linear=lambda m: isinstance(m, nn.Linear)) == TINY_LINEARS  # nothing changed


def test_quantize_bad_arguments_change_nothing(tiny64):
    model = copy.deepcopy(tiny64)
    with pytest.raises(ValueError, match="group_size must divide"):
        Q.quantize_(model, C.RTNConfig(group_size=48))
    with pytest.raises(ValueError, match="skip"):
        Q.quantize_(model, C.RTNConfig(), skip=["layers.0.attn.qkvv"])
    with pytest.raises(TypeError, match="skip"):
        Q.quantize_(model, C.RTNConfig(), skip="layers.0.attn.qkv")
    with pytest.raises(ValueError, match="calib_seq_len"):
        Q.quantize_(model, C.GPTQConfig(calib_seq_len=4096), calib_tokens=calibration_tokens(8192))
    with pytest.raises(TypeError, match="tokens"):
        Q.quantize_(model, C.GPTQConfig(), calib_tokens=calibration_tokens(256).astype(float))
    assert S.linear_names(model, is_linear=lambda m: isinstance(m, nn.Linear)) == TINY_LINEARS
    with pytest.raises(TypeError, match="model must be an effx_lab.models.torch_ops.TinyLM"):
        Q.quantize_(nn.Linear(4, 4), C.RTNConfig())
    with pytest.raises(TypeError, match="model"):
        Q.quantize_(load_minilm()[1], C.RTNConfig())  # MiniLM's params: minilm_quant_hook / gptq_minilm


@pytest.mark.parametrize(
    "build,error,says",
    [
        (lambda: C.RTNConfig(bits=9), ValueError, "bits must be an int in \\[2, 8\\], got 9"),
        (lambda: C.RTNConfig(group_size=0), ValueError, "group_size"),
        (lambda: C.RTNConfig(symmetric=1), TypeError, "symmetric must be a bool"),
        (lambda: C.GPTQConfig(calib_seq_len=0), ValueError, "calib_seq_len"),
        (lambda: C.GPTQConfig(max_calib_tokens=2.5), TypeError, "max_calib_tokens"),
        (lambda: C.W8A8Config(a_bits=1), ValueError, "a_bits"),
        (lambda: C.W8A8Config(act_granularity="channel"), ValueError, "act_granularity"),
        (lambda: C.LLMInt8Config(threshold=-1.0), ValueError, "threshold"),
        (lambda: C.SmoothQuantConfig(alpha=1.5), ValueError, "alpha"),
        (lambda: C.SmoothQuantConfig(smooth_layers="fc"), ValueError, "smooth_layers"),
        (lambda: C.ZeroQuantConfig(a_bits=None), TypeError, "a_bits"),
        (lambda: C.ZeroQuantConfig(group_size=-64), ValueError, "group_size"),
        (lambda: C.QuantConfig(), TypeError, "QuantConfig is the base class"),
    ],
)
def test_configs_check_their_fields(build, error, says):
    with pytest.raises(error, match=says):
        build()


def test_configs_are_frozen_values():
    cfg = C.RTNConfig(bits=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 4
    assert cfg == C.RTNConfig(bits=3) and hash(cfg) == hash(C.RTNConfig(bits=3)) and cfg != C.GPTQConfig(bits=3)
    import numpy as np

    assert type(C.RTNConfig(bits=np.int64(3)).bits) is int  # normalised on construction
    methods = {c.method for c in (C.RTNConfig, C.GPTQConfig, C.W8A8Config, C.LLMInt8Config, C.SmoothQuantConfig,
                                  C.ZeroQuantConfig)}
    assert methods == set(M.TINYLM_METHODS)
    assert {c.__name__ for c in (C.GPTQConfig, C.SmoothQuantConfig)} == {
        n for n in C.__all__ if n.endswith("Config") and getattr(C, n).needs_calibration
    }


def test_verb_and_configs_exported():
    assert Q.quantize_ is M.quantize_
    for name in C.__all__:
        if name.endswith("Config"):
            assert name in Q.__all__ and getattr(Q, name) is getattr(C, name), name
    assert "quantize_" in Q.__all__ and "quantize_" in (Q.__doc__ or "")
