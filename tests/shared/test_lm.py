"""Tests of effx_lab.models.lm: the shared language model with registered mixing and FFN
sublayers."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from effx_lab.attention import reference as AR
from effx_lab.attention.params import init_transformer_layer_params
from effx_lab.models import lm
from effx_lab.models import training
from effx_lab.models.reference import layer_norm

SPEC = dict(
    vocab_size=40, d_model=16, n_layers=2, max_len=32, mixer_options={"n_heads": 2}
)


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch: pytest.MonkeyPatch):
    """Registrations made by a test do not outlive it."""
    monkeypatch.setattr(lm, "_MIXERS", dict(lm._MIXERS))
    monkeypatch.setattr(lm, "_FFNS", dict(lm._FFNS))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(model: lm.LM, seed: int = 0) -> lm.LM:
    """Every parameter moved off its initial value (LayerNorm gains of 1 and zero biases
    hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _tokens(spec: lm.LMSpec, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).integers(0, spec.vocab_size, size=(batch, n))
    )


@pytest.mark.parametrize("causal", [True, False])
def test_softmax_and_gelu_make_the_transformer_layer(causal: bool) -> None:
    """Float64: the shared LM is embeddings + AR.transformer_layer per layer + final
    LayerNorm + tied head."""
    spec = lm.LMSpec(causal=causal, **SPEC)
    model = _perturbed(lm.LM(spec, seed=1)).double()
    tokens = _tokens(spec, 2, 11)
    with torch.no_grad():
        got = model(tokens).numpy()
    w = {k: v.detach().numpy() for k, v in model.named_parameters()}
    h = w["tok_emb"][tokens.numpy()] + w["pos_emb"][:11]
    for layer in model.layers:
        h = AR.transformer_layer(
            h, {k: v.detach().numpy() for k, v in layer.items()}, 2, causal
        )
    want = layer_norm(h, w["ln_f_g"], w["ln_f_b"]) @ w["tok_emb"].T
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert np.abs(want).std() > 0.1


def test_layer_weights_and_names() -> None:
    spec = lm.LMSpec(ffn_options={"d_ff": 24}, **SPEC)
    model = lm.LM(spec, seed=5)
    for i, layer in enumerate(model.layers):
        seed = int(np.random.SeedSequence([5, i + 1]).generate_state(1)[0])
        want = init_transformer_layer_params(16, 2, 24, seed=seed)
        assert sorted(layer.keys()) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(
                layer[key].detach().numpy(), value, err_msg=key
            )
    names = [n for n, _ in model.named_parameters()]
    assert (
        names[:4] == ["tok_emb", "pos_emb", "ln_f_g", "ln_f_b"]
        and "layers.1.w1" in names
    )
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.no_weight_decay() == ()
    other = lm.LM(spec, seed=6)
    assert not torch.equal(model.layers[0]["wq"], other.layers[0]["wq"])


def test_the_model_is_causal() -> None:
    spec = lm.LMSpec(**SPEC)
    model = _perturbed(lm.LM(spec, seed=2))
    tokens = _tokens(spec, 1, 20, seed=3)
    changed = tokens.clone()
    changed[0, 9] = (changed[0, 9] + 1) % spec.vocab_size
    with torch.no_grad():
        d = (model(changed) - model(tokens)).abs().amax(dim=(0, 2))
    assert float(d[:9].max()) == 0.0 and float(d[9:].min()) > 1e-4
    bidir = _perturbed(lm.LM(lm.LMSpec(causal=False, **SPEC), seed=2))
    with torch.no_grad():
        assert float((bidir(changed) - bidir(tokens))[0, :9].abs().max()) > 1e-4


# --------------------------------------------------------------------------------------
# registering a sublayer (what chapters 5 and 6 do)
# --------------------------------------------------------------------------------------


def _relu_apply(x: torch.Tensor, p: dict, *, scale: float) -> torch.Tensor:
    h = F.layer_norm(x, (x.shape[-1],), p["g"], p["b"], eps=1e-5)
    return x + scale * torch.relu(h @ p["w_in"]) @ p["w_out"]


def relu_ffn(
    d_model: int, *, seed: int, causal: bool, width: int = 8, scale: float = 1.0
) -> lm.Sublayer:
    rng = np.random.default_rng(seed)
    params = {
        "g": np.ones(d_model, np.float32),
        "b": np.zeros(d_model, np.float32),
        "w_in": rng.normal(0, 0.2, (d_model, width)).astype(np.float32),
        "w_out": rng.normal(0, 0.2, (width, d_model)).astype(np.float32),
    }
    return lm.Sublayer(
        params, functools.partial(_relu_apply, scale=scale), no_decay=("w_out",)
    )


def test_a_registered_ffn_is_built_run_and_trained() -> None:
    lm.register_ffn("relu_test", relu_ffn)
    assert "relu_test" in lm.ffns() and "softmax" in lm.mixers()
    spec = lm.LMSpec(ffn="relu_test", ffn_options={"width": 12, "scale": 0.5}, **SPEC)
    model = _perturbed(lm.LM(spec, seed=0))
    assert sorted(model.layers[0].keys()) == sorted(
        [
            "ln1_g",
            "ln1_b",
            "wq",
            "bq",
            "wk",
            "bk",
            "wv",
            "bv",
            "wo",
            "bo",
            "g",
            "b",
            "w_in",
            "w_out",
        ]
    )
    assert model.no_weight_decay() == ("layers.0.w_out", "layers.1.w_out")
    tokens = _tokens(spec, 2, 9)
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        got = m64(tokens)
        h = m64.tok_emb[tokens] + m64.pos_emb[:9]
        for layer in m64.layers:
            p = dict(layer.items())
            mixed = h + torch.from_numpy(
                AR.multi_head_attention(
                    layer_norm(h.numpy(), p["ln1_g"].numpy(), p["ln1_b"].numpy()),
                    {k: p[k].numpy() for k in lm._MHA_KEYS},
                    2,
                    True,
                )
            )
            h = _relu_apply(mixed, p, scale=0.5)
        want = F.layer_norm(h, (16,), m64.ln_f_g, m64.ln_f_b, 1e-5) @ m64.tok_emb.t()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # it trains with the shared loop
    data = np.tile(np.arange(1, 9), 80)
    run = training.train(model, data, steps=15, batch_size=4, seq_len=16, lr=1e-2)
    assert np.mean(run.losses[-3:]) < np.mean(run.losses[:3])


def test_registry_and_spec_errors() -> None:
    with pytest.raises(
        ValueError,
        match=r"mixer must be a registered mixer name.*import effx_lab\.flash",
    ):
        lm.LMSpec(mixer="no_such_mixer")
    with pytest.raises(
        TypeError, match=r"mixer_options \{'heads': 2\} do not fit the mixer 'softmax'"
    ):
        lm.LMSpec(mixer_options={"heads": 2})
    with pytest.raises(ValueError, match="ffn_options need an ffn"):
        lm.LMSpec(ffn=None, ffn_options={"d_ff": 8})
    with pytest.raises(ValueError, match="n_layers must be an int >= 1, got 0"):
        lm.LMSpec(n_layers=0)
    with pytest.raises(TypeError, match="spec must be an LMSpec"):
        lm.LM({"d_model": 8})
    with pytest.raises(ValueError, match="already registered"):
        lm.register_ffn("gelu", relu_ffn)
    lm.register_ffn("gelu", lm.gelu_ffn)  # the same function again: a module reload
    lm.register_ffn("gelu", relu_ffn, replace=True)
    assert lm.LM(lm.LMSpec(**SPEC)).layers[0]["w_in"].shape == (16, 8)
    with pytest.raises(TypeError, match="factory must be a callable"):
        lm.register_mixer("broken", 3)
    with pytest.raises(ValueError, match="name must be an identifier-like str"):
        lm.register_mixer("not a name", relu_ffn)
    lm.register_mixer(
        "not_a_sublayer",
        lambda d_model, *, seed, causal: {"w": np.zeros((2, 2), np.float32)},
    )
    with pytest.raises(TypeError, match="must return an lm.Sublayer"):
        lm.LM(lm.LMSpec(mixer="not_a_sublayer", vocab_size=8, d_model=4))
    lm.register_mixer(
        "clash",
        lambda d_model, *, seed, causal: relu_ffn(d_model, seed=seed, causal=causal),
    )
    lm.register_ffn("clash", relu_ffn)
    with pytest.raises(
        ValueError, match=r"both name parameters \['b', 'g', 'w_in', 'w_out'\]"
    ):
        lm.LM(lm.LMSpec(mixer="clash", ffn="clash", vocab_size=8, d_model=4))
    with pytest.raises(
        ValueError, match="no_decay names parameters the sublayer does not have"
    ):
        lm.Sublayer({"w": np.zeros((2, 2), np.float32)}, _relu_apply, no_decay=("v",))
    with pytest.raises(TypeError, match=r"params\['w'\] must be a float NumPy array"):
        lm.Sublayer({"w": np.zeros((2, 2), np.int64)}, _relu_apply)


def test_spec_round_trip_and_allocation_check() -> None:
    spec = lm.LMSpec(ffn_options={"d_ff": 24}, **SPEC)
    assert lm.LMSpec.from_dict(spec.to_dict()) == spec and hash(spec) == hash(
        lm.LMSpec.from_dict(spec.to_dict())
    )
    with pytest.raises(ValueError, match="unknown LMSpec fields"):
        lm.LMSpec.from_dict({"d_model": 8, "heads": 2})
    with pytest.raises(ValueError, match=r"would allocate .* bytes\), more than"):
        lm.LM(lm.LMSpec(d_model=10**9, mixer_options={"n_heads": 1}))
    with pytest.raises(ValueError, match=r"would allocate .* bytes\), more than"):
        lm.LM(lm.LMSpec(vocab_size=10**12, d_model=8, mixer_options={"n_heads": 1}))
    # every layer is small but the stack is not: refused after one layer
    with pytest.raises(ValueError, match=r"would allocate .* bytes\), more than"):
        lm.LM(
            lm.LMSpec(
                d_model=512,
                n_layers=10**6,
                vocab_size=8,
                max_len=8,
                mixer_options={"n_heads": 1},
            )
        )


def test_bad_tokens_raise_clear_errors() -> None:
    model = lm.LM(lm.LMSpec(**SPEC))
    with pytest.raises(TypeError, match="tokens must be a torch.LongTensor"):
        model(np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="max_len is 32"):
        model(torch.zeros(1, 33, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"must lie in \[0, 39\], got values in \[0, 40\]"
    ):
        model(torch.tensor([[0, 40]]))


def test_softmax_mixer_with_narrow_heads_is_the_layer_with_heads_removed() -> None:
    """Float64: the 'softmax' mixer with head_dim (heads fewer than d_model needs), fed
    the columns of some heads of a full layer, computes the full layer with the other
    heads' outputs set to zero (their rows of wo zeroed)."""
    d, heads, dh, kept = 16, 4, 4, [0, 3]
    full = lm.softmax_attention_mixer(d, seed=3, causal=True, n_heads=heads)
    narrow = lm.softmax_attention_mixer(
        d, seed=3, causal=True, n_heads=len(kept), head_dim=dh
    )
    assert narrow.params["wq"].shape == (d, 8) and narrow.params["wo"].shape == (8, d)
    assert narrow.params["bq"].shape == (8,) and narrow.params["ln1_g"].shape == (d,)
    gen = torch.Generator().manual_seed(0)
    p = {
        k: torch.from_numpy(v).double() + 0.1 * torch.randn(v.shape, generator=gen,
                                                             dtype=torch.float64)
        for k, v in full.params.items()
    }  # fmt: skip
    cols = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in kept])
    q = dict(p)
    for c in "qkv":
        q[f"w{c}"], q[f"b{c}"] = p[f"w{c}"][:, cols], p[f"b{c}"][cols]
    q["wo"] = p["wo"][cols]
    zeroed = dict(p)
    zeroed["wo"] = p["wo"].clone()
    for h in set(range(heads)) - set(kept):
        zeroed["wo"][h * dh : (h + 1) * dh] = 0
    x = torch.randn(2, 7, d, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        narrow.apply(x, q), full.apply(x, zeroed), rtol=1e-12, atol=1e-12
    )
    # head_dim * n_heads == d_model is the ordinary layer
    same = lm.softmax_attention_mixer(d, seed=3, causal=True, n_heads=4, head_dim=4)
    assert all(np.array_equal(same.params[k], full.params[k]) for k in full.params)
    with pytest.raises(ValueError, match="head_dim must be an int >= 1, got 0"):
        lm.softmax_attention_mixer(d, seed=0, causal=True, head_dim=0)
    with pytest.raises(ValueError, match="n_heads must divide d_model = 16"):
        lm.softmax_attention_mixer(d, seed=0, causal=True, n_heads=3)
    with pytest.raises(ValueError, match=r"would allocate .* bytes\), more than"):
        lm.softmax_attention_mixer(d, seed=0, causal=True, n_heads=10**9, head_dim=4)


def test_rebuild_sublayer_shrinks_a_layer_in_place() -> None:
    spec = lm.LMSpec(ffn_options={"d_ff": 24}, **SPEC)
    model = _perturbed(lm.LM(spec, seed=2)).double()
    ref = copy.deepcopy(model)
    layer = model.layers[1]
    keys = list(layer)
    keep = torch.tensor([0, 5, 6, 20])
    params = {k: layer[k].detach() for k in ("ln2_g", "ln2_b", "b2")}
    params |= {
        "w1": layer["w1"].detach()[:, keep], "b1": layer["b1"].detach()[keep],
        "w2": layer["w2"].detach()[keep],
    }  # fmt: skip
    old_w1 = layer["w1"]
    model.rebuild_sublayer(1, "ffn", params, d_ff=4)
    assert list(model.layers[1]) == keys  # names keep their place
    assert model.layers[1]["w1"] is not old_w1
    assert model.layers[1]["w1"].shape == (16, 4)
    assert model.layers[1]["w1"].dtype == torch.float64
    assert model.sublayer_options(1, "ffn") == {"d_ff": 4}
    assert model.sublayer_options(0, "ffn") == {"d_ff": 24}
    assert model.sublayer_options(1, "mixer") == {"n_heads": 2}
    assert ref.num_params() - model.num_params() == 20 * (16 + 1 + 16)
    with torch.no_grad():
        drop = torch.ones(24, dtype=torch.bool)
        drop[keep] = False
        ref.layers[1]["w2"][drop] = 0
    tokens = _tokens(spec, 2, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens), rtol=1e-12, atol=1e-12)
    # it trains: the new parameters are the model's parameters
    run = training.train(
        model.float(), np.arange(200) % 40, steps=2, batch_size=2, seq_len=8
    )
    assert run.steps == 2
    # errors, checked before anything changes
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="index must be an int in \\[0, 1\\], got 2"):
        model.rebuild_sublayer(2, "ffn", params, d_ff=4)
    with pytest.raises(ValueError, match="role must be one of 'mixer', 'ffn'"):
        model.rebuild_sublayer(0, "attention", params)
    with pytest.raises(TypeError, match="ffn_options .* do not fit the ffn 'gelu'"):
        model.rebuild_sublayer(0, "ffn", params, width=4)
    with pytest.raises(ValueError, match=r"params must hold the parameters of the ffn"):
        model.rebuild_sublayer(0, "ffn", {"w1": params["w1"]}, d_ff=4)
    with pytest.raises(ValueError, match=r"params\['w1'\] must have shape \(16, 5\)"):
        model.rebuild_sublayer(0, "ffn", params, d_ff=5)
    bad = dict(params, b1=np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match=r"params\['b1'\] must be a float torch tensor"):
        model.rebuild_sublayer(0, "ffn", bad, d_ff=4)
    with pytest.raises(TypeError, match="params must be a dict"):
        model.rebuild_sublayer(0, "ffn", [1, 2])
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    no_ffn = lm.LM(lm.LMSpec(ffn=None, **SPEC))
    with pytest.raises(ValueError, match="role must be one of 'mixer'; got 'ffn'"):
        no_ffn.rebuild_sublayer(0, "ffn", {})


def _scaled_gelu_apply(x, p, *, scale):
    return x + scale * (lm.gelu_ffn(x.shape[-1], seed=0, causal=True).apply(x, p) - x)


def _scaled_gelu_ffn(d_model, *, seed, causal, d_ff=None, scale=0.5):
    part = lm.gelu_ffn(d_model, seed=seed, causal=causal, d_ff=d_ff)
    return lm.Sublayer(part.params, functools.partial(_scaled_gelu_apply, scale=scale))


def test_rebuild_sublayer_can_change_the_kind() -> None:
    """``kind=`` swaps a layer's sublayer for another registered one (chapter 5's
    upcycling of dense FFNs into experts): the options start afresh, the kind is
    recorded, and going back to the spec's kind leaves no trace in the repr."""
    lm.register_ffn("scaled_gelu_test", _scaled_gelu_ffn)
    spec = lm.LMSpec(
        d_model=16, n_layers=2, mixer_options={"n_heads": 2}, ffn_options={"d_ff": 32}
    )
    model = lm.LM(spec, seed=0).double()
    x = torch.arange(8).view(1, 8)
    keys = ("ln2_g", "ln2_b", "w1", "b1", "w2", "b2")
    params = {k: model.layers[1][k] for k in keys}
    with torch.no_grad():
        before = model(x)
    model.rebuild_sublayer(1, "ffn", params, kind="scaled_gelu_test", d_ff=32, scale=1.0)
    assert model.sublayer_kind(1, "ffn") == "scaled_gelu_test"
    assert model.sublayer_kind(0, "ffn") == "gelu"
    assert model.sublayer_options(1, "ffn") == {"d_ff": 32, "scale": 1.0}
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)
    assert "'kind': 'scaled_gelu_test'" in model.extra_repr()
    model.rebuild_sublayer(1, "ffn", params, scale=0.0)  # same kind: options merged
    assert model.sublayer_options(1, "ffn") == {"d_ff": 32, "scale": 0.0}
    with torch.no_grad():
        assert not torch.allclose(model(x), before)
    with pytest.raises(ValueError, match="registered"):
        model.rebuild_sublayer(1, "ffn", params, kind="no_such_ffn")
    with pytest.raises(TypeError, match="do not fit"):
        model.rebuild_sublayer(0, "ffn", params, kind="gelu", scale=1.0)
    model.rebuild_sublayer(1, "ffn", params, kind="gelu", d_ff=32)
    assert model.sublayer_kind(1, "ffn") == "gelu"
    assert "rebuilt" not in model.extra_repr()
