"""Tests of effx_lab.flash.bench (chapter 7 benchmarks): structure, correctness of what is timed, bad input.

Timings are never asserted (the machine is shared and noisy); sizes are tiny and min_run_time short.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _backends import TRANSCENDENTAL_ULPS, network_atol, unit_roundoff

from effx_lab.attention import torch_ops as AT
from effx_lab.attention.params import init_transformer_layer_params, to_torch
from effx_lab.bench import __main__ as cli
from effx_lab.flash import bench as B
from effx_lab.flash import kernels as FK

TINY = {"d_model": 32, "n_heads": 2, "expansion": 2, "s": 16, "chunk_size": 16}
FAST = {"min_run_time": 0.01, "rounds": 1}
U32 = unit_roundoff(torch.float32)


def _layer_k_path(d: int, n: int, d_ff: int, head: int) -> int:
    """Terms summed along one Transformer layer's longest path, for :func:`_backends.network_atol`: two
    LayerNorms (d + 2 each), Q/K/V (d), a score (head), the softmax sum and A V (n each), the output projection
    (d), the FFN (d, then d_ff), the ulps of exp and GELU, the residuals."""
    return 2 * (d + 2) + d + head + 2 * n + d + d + d_ff + 4 * TRANSCENDENTAL_ULPS + 2


def _attention_k_path(n: int, head: int) -> int:
    """Softmax attention alone: a score (head), the softmax (exp's ulps, the n-term sum), A V (n terms)."""
    return head + 2 * TRANSCENDENTAL_ULPS + 2 * n + 2


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_chapter_seven(capsys):
    assert cli.REGISTRY["ch07"] == cli.REGISTRY["flash"] == "effx_lab.flash.bench"
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "flash" in out and "ch07" in out and "effx_lab.flash.bench" in out


# ------------------------------------------------------------------------------- the SDPA Transformer layer
@pytest.mark.parametrize("causal", [True, False])
def test_transformer_layer_sdpa_equals_transformer_layer(causal):
    params = to_torch(init_transformer_layer_params(32, 4, seed=3, std=0.2), dtype=torch.float64)
    x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = AT.transformer_layer(x, params, 4, causal)
    got = B.transformer_layer_sdpa(x, params, 4, causal)
    assert got.shape == want.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (want - x).abs().max() > 1e-2  # the layer does something, so agreeing means something
    # no batch dimension, float32 (two kernels: the derived tolerance of one layer)
    x1 = x[0].float()
    p32 = {k: v.float() for k, v in params.items()}
    want32 = AT.transformer_layer(x1, p32, 4, causal)
    atol = network_atol(_layer_k_path(32, 24, params["w1"].shape[1], 8), want32, U32)
    torch.testing.assert_close(B.transformer_layer_sdpa(x1, p32, 4, causal), want32, rtol=0, atol=atol)


def test_transformer_layer_sdpa_causality():
    """Changing a later token must not change an earlier output when causal."""
    params = to_torch(init_transformer_layer_params(16, 2, seed=1, std=0.2))
    x = torch.randn(1, 10, 16, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 7] += 1.0
    a, b = B.transformer_layer_sdpa(x, params, 2, True), B.transformer_layer_sdpa(y, params, 2, True)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


def test_transformer_layer_sdpa_bad_inputs():
    params = to_torch(init_transformer_layer_params(16, 2))
    x = torch.zeros(1, 4, 16)
    with pytest.raises(TypeError, match="x must be"):
        B.transformer_layer_sdpa(np.zeros((1, 4, 16), dtype=np.float32), params, 2)
    with pytest.raises(ValueError, match="n_heads must divide"):
        B.transformer_layer_sdpa(x, params, 3)
    with pytest.raises(ValueError, match="params"):
        B.transformer_layer_sdpa(x, {"wq": params["wq"]}, 2)
    with pytest.raises(ValueError, match=r"params\['w2'\]"):
        B.transformer_layer_sdpa(x, {**params, "w2": torch.zeros(3, 16)}, 2)
    with pytest.raises(TypeError, match="causal"):
        B.transformer_layer_sdpa(x, params, 2, causal="yes")


# --------------------------------------------------------------------------------------- operators to time
def test_make_inputs_seeded():
    x = B.make_inputs(12, 8, batch=3, seed=5, device="cpu")
    assert x.shape == (3, 12, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.equal(x, B.make_inputs(12, 8, batch=3, seed=5, device="cpu"))
    assert not torch.equal(x, B.make_inputs(12, 8, batch=3, seed=6, device="cpu"))
    assert B.make_inputs(4, 8, dtype=torch.float64, device="cpu").dtype == torch.float64


def test_mixing_fns_shapes_and_agreement():
    n, batch = 40, 2  # 40 is not a multiple of the chunk: FLASH pads
    fns = B.mixing_fns(n, batch=batch, device="cpu", **TINY)
    assert list(fns) == list(B.MIXING_KINDS)
    out = {k: f() for k, f in fns.items()}
    dh, e = TINY["d_model"] // TINY["n_heads"], TINY["expansion"] * TINY["d_model"]
    assert out["softmax"].shape == out["sdpa"].shape == (batch, TINY["n_heads"], n, dh)
    assert out["gau_quad"].shape == out["flash"].shape == (batch, n, e)
    for y in out.values():
        assert torch.isfinite(y).all() and not y.requires_grad
    # ours and PyTorch's softmax attention see the same inputs and must agree (float32: the derived tolerance)
    atol = network_atol(_attention_k_path(n, dh), out["sdpa"], U32)
    torch.testing.assert_close(out["softmax"], out["sdpa"], rtol=0, atol=atol)
    assert list(B.mixing_fns(n, kinds=["flash", "sdpa"], device="cpu", **TINY)) == ["flash", "sdpa"]


def test_layer_fns_shapes_and_sdpa_variant_agrees():
    n, batch = 24, 2
    fns = B.layer_fns(n, batch=batch, device="cpu", **TINY)
    assert list(fns) == list(B.LAYER_KINDS)
    out = {k: f() for k, f in fns.items()}
    for y in out.values():
        assert y.shape == (batch, n, TINY["d_model"]) and torch.isfinite(y).all()
    d = TINY["d_model"]  # float32, two kernels: the derived tolerance of one layer (d_ff <= 4 d)
    atol = network_atol(_layer_k_path(d, n, 4 * d, d // TINY["n_heads"]), out["transformer"], U32)
    torch.testing.assert_close(out["transformer_sdpa"], out["transformer"], rtol=0, atol=atol)
    x = B.make_inputs(n, TINY["d_model"], batch=batch, device="cpu")
    assert (out["transformer"] - x).abs().max() > 1e-3  # (GAU/FLASH at init change x by ~1e-6 only)


def test_model_fns_are_the_chapter_language_models():
    """model_fns(kind) is build_lm(LMConfig(kind, ...)) on seeded random tokens: same
    logits as building the model by hand; kinds and arguments are validated."""
    from effx_lab.flash.models import LMConfig, build_lm

    n = 32
    fns = B.model_fns(n, batch=2, device="cpu", seed=3, **TINY)
    assert list(fns) == list(B.MODEL_KINDS)
    tokens = torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(3))
    for kind, fn in fns.items():
        out = fn()
        assert out.shape == (2, n, 256) and torch.isfinite(out).all()
        opts = {"n_heads": 2} if kind == "transformer" else {"expansion": 2, "s": 16}
        if kind == "flash":
            opts["chunk_size"] = 16
        cfg = LMConfig(kind=kind, d_model=32, n_layers=1, max_len=n, **opts)
        with torch.no_grad():
            want = build_lm(cfg, seed=3)(tokens)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert list(B.model_fns(n, kinds=["flash"], **TINY)) == ["flash"]
    with pytest.raises(ValueError, match="kinds must be one of"):
        B.model_fns(16, kinds=["transformer_sdpa"], **TINY)
    with pytest.raises(ValueError, match="n must be"):
        B.model_fns(0, **TINY)


def test_time_vs_length_times_whole_models():
    res = B.time_vs_length([16, 32], level="model", threads=1, **FAST, **TINY)
    assert set(res["times_s"]) == set(B.MODEL_KINDS)
    assert all(t > 0 for times in res["times_s"].values() for t in times)
    assert res["settings"]["level"] == "model"
    with pytest.raises(ValueError, match="level must be one of"):
        B.time_vs_length([16], level="models", **TINY)


def test_models_have_about_the_same_parameter_count():
    counts = B._layer_param_counts(256, 4, 2, 128)
    assert counts["transformer"] == counts["transformer_sdpa"]
    for kind in ("flash_quad", "flash"):
        assert 0.8 < counts[kind] / counts["transformer"] < 1.3


def test_operator_builders_bad_inputs():
    with pytest.raises(ValueError, match="n must be"):
        B.make_inputs(0)
    with pytest.raises(TypeError, match="dtype must be"):
        B.make_inputs(4, 8, dtype=torch.int32)
    with pytest.raises(TypeError, match="dtype must be"):
        B.make_inputs(4, 8, dtype="float32")
    with pytest.raises(ValueError, match="device must be"):
        B.make_inputs(4, 8, device="tpu")
    with pytest.raises(TypeError, match="device must be"):
        B.make_inputs(4, 8, device=3)
    with pytest.raises(ValueError, match="n_heads must divide"):
        B.mixing_fns(16, d_model=32, n_heads=3)
    with pytest.raises(ValueError, match="kinds must be one of"):
        B.mixing_fns(16, kinds=["transformer"], **TINY)
    with pytest.raises(ValueError, match="kinds must not repeat"):
        B.layer_fns(16, kinds=["flash", "flash"], **TINY)
    with pytest.raises(TypeError, match="kinds must be"):
        B.layer_fns(16, kinds=[], **TINY)
    with pytest.raises(ValueError, match="chunk_size"):
        B.layer_fns(16, **{**TINY, "chunk_size": 0})
    with pytest.raises(TypeError, match="causal"):
        B.mixing_fns(16, causal=1, **TINY)
    with pytest.raises(TypeError, match="s must be an int"):
        B.mixing_fns(16, **{**TINY, "s": 2.5})


# ----------------------------------------------------------------------------------------------- timing
def test_time_vs_length_structure():
    before = torch.get_num_threads()
    res = B.time_vs_length([16, 32], level="mixing", threads=1, **FAST, **TINY)
    assert torch.get_num_threads() == before  # restored
    assert res["lengths"] == [16, 32] and set(res["times_s"]) == set(B.MIXING_KINDS)
    for times in res["times_s"].values():
        assert len(times) == 2 and all(isinstance(t, float) and t > 0 for t in times)
    assert set(res["comparisons"]) == {"16", "32"} and res["comparisons"]["16"]["baseline"] == "flash"
    assert res["skipped_from"] == {} and isinstance(res["device"], str)
    assert res["settings"]["threads"] == 1 and res["settings"]["rounds"] == [1, 1]
    assert res["settings"]["level"] == "mixing" and res["settings"]["chunk_size"] == 16
    json.dumps(res, allow_nan=False)


def test_time_vs_length_skips_slow_kinds_and_rounds_per_length():
    res = B.time_vs_length(
        [8, 16, 32],
        level="layer",
        kinds=["flash", "transformer"],
        min_run_time=0.01,
        rounds=[1, 2, 1],
        max_seconds_per_call=1e-12,  # every call is slower than that: each kind is timed once, then skipped
        **TINY,
    )
    assert list(res["times_s"]) == ["flash", "transformer"]
    for times in res["times_s"].values():
        assert times[0] > 0 and times[1:] == [None, None]
    assert res["skipped_from"] == {"flash": 16, "transformer": 16}
    assert set(res["comparisons"]) == {"8"} and res["settings"]["rounds"] == [1, 2, 1]
    assert res["comparisons"]["8"]["rounds"] == 1


def test_time_vs_length_bad_inputs():
    with pytest.raises(ValueError, match="strictly increasing"):
        B.time_vs_length([32, 16], **TINY)
    with pytest.raises(TypeError, match="lengths must be"):
        B.time_vs_length(32)
    with pytest.raises(TypeError, match="lengths must be"):
        B.time_vs_length([])
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        B.time_vs_length([16, 0])
    with pytest.raises(ValueError, match="level must be one of"):
        B.time_vs_length([16], level="operator")  # "model" is a level (whole models)
    with pytest.raises(ValueError, match="kinds must be one of"):
        B.time_vs_length([16], level="layer", kinds=["sdpa"])
    with pytest.raises(ValueError, match="min_run_time"):
        B.time_vs_length([16], min_run_time=0)
    with pytest.raises(ValueError, match="rounds must be an int or one int per length"):
        B.time_vs_length([16, 32], rounds=[1])
    with pytest.raises(ValueError, match="rounds"):
        B.time_vs_length([16], rounds=0)
    with pytest.raises(ValueError, match="threads"):
        B.time_vs_length([16], threads=0)
    with pytest.raises(ValueError, match="max_seconds_per_call"):
        B.time_vs_length([16], max_seconds_per_call=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        B.time_vs_length([16], d_modle=32)
    with pytest.raises(ValueError, match="n_heads must divide"):
        B.time_vs_length([16], d_model=32, n_heads=5)


def test_numpy_vs_torch_structure_and_agreement():
    res = B.numpy_vs_torch(48, 32, 16, 16, True, **FAST)
    assert {"numpy_s", "torch_s", "speedup", "max_abs_diff", "max_abs_update", "comparison"} <= set(res)
    assert res["numpy_s"] > 0 and res["torch_s"] > 0
    assert res["speedup"] == pytest.approx(res["numpy_s"] / res["torch_s"])
    assert res["max_abs_update"] > 1e-4  # the check compares a real update
    # float32 NumPy vs torch on x + layer(x), x ~ N(0, 1) of shape (1, 48, 32) (the bench's seed 0): the
    # residual add rounds at |x + update| (u each), the update within the derived tolerance of one FLASH layer
    # (LayerNorm, the projections to e = 64, local logits s = 16, chunk c = 16, global state over n = 48 tokens)
    x_max = float(np.abs(np.random.default_rng(0).standard_normal((1, 48, 32)).astype(np.float32)).max())
    k_path = (32 + 2) + 32 + (TRANSCENDENTAL_ULPS + 2) + 2 + 16 + 2 + 16 + 48 + 16 + 1 + 64 + 2
    bound = 2 * U32 * (x_max + res["max_abs_update"]) + network_atol(k_path, res["max_abs_update"], U32)
    assert res["max_abs_diff"] <= bound
    assert res["config"]["n"] == 48 and res["torch_device"] == "cpu"
    json.dumps(res, allow_nan=False)
    with pytest.raises(ValueError, match="n must be"):
        B.numpy_vs_torch(0)
    with pytest.raises(TypeError, match="causal"):
        B.numpy_vs_torch(16, causal=None)
    with pytest.raises(ValueError, match="threads"):
        B.numpy_vs_torch(16, threads=0)
    with pytest.raises(ValueError, match="std"):
        B.numpy_vs_torch(16, std=0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU answer")
def test_triton_vs_torch_is_skipped_without_gpu():
    res = B.triton_vs_torch(64)
    assert set(res) == {"skipped"} and "CUDA" in res["skipped"]
    with pytest.raises(ValueError, match="chunk_size"):
        B.triton_vs_torch(64, chunk_size=0)
    with pytest.raises(TypeError, match="dtype"):
        B.triton_vs_torch(64, dtype=torch.int8)


@pytest.mark.skipif(not FK.available(), reason=f"Triton kernel unavailable: {FK.why_unavailable()}")
def test_triton_vs_torch_code_path_in_the_interpreter(monkeypatch):
    """device="cpu" runs the GPU code path in Triton's CPU interpreter (tiny sizes; times are not checked)."""
    seen = {}

    def fake_fla(q, k, v, scale=None, normalize=True, head_first=True):  # stands in for fla's chunk_linear_attn
        seen.update(shape=tuple(q.shape), scale=scale, normalize=normalize, head_first=head_first)
        return v, None

    monkeypatch.setattr(B, "_fla_chunk_linear_attn", lambda: (fake_fla, None))
    res = B.triton_vs_torch(
        32, batch=1, d_model=16, expansion=2, s=16, chunk_size=16, dtype=torch.float32, device="cpu", **FAST
    )
    json.dumps(res, allow_nan=False)
    assert set(res["times_s"]) == {"torch", "triton", "triton_global", "fla"}
    # float32 kernel vs torch: the derived tolerance of the mixed chunk attention (s = 16 logits twice, chunk
    # c = 16, the global state over n = 32 tokens and its product with the queries) on the output's scale
    k_path = 3 * 16 + 16 + 32 + 8
    assert 0 < res["max_abs_torch"] and res["max_abs_diff"] <= network_atol(k_path, res["max_abs_torch"], U32)
    assert "interpreter" in res["triton_mode"] and res["config"]["e"] == 32
    assert seen == {"shape": (1, 32, 1, 16), "scale": 1 / 16, "normalize": False, "head_first": False}


# ------------------------------------------------------------------------------------------------- goals
def _fake_sweep(lengths: list[int], times: dict[str, list[float | None]]) -> dict:
    return {"lengths": lengths, "times_s": times}


def test_goals_are_computed_ratios():
    lengths = [1024, 2048, 8192]
    linear = [1.0, 2.0, 9.0]  # growth 9 <= 10: met
    quadratic = [1.0, 4.0, 30.0]  # growth 30 < 40: not met; 30 / 9 < 5: not met
    sweep = _fake_sweep(lengths, {"flash": linear, "transformer": quadratic})
    g = B._goals(sweep, "layer", 1024, 8192)
    assert g["flash_growth_8192_over_1024"] == {"value": 9.0, "goal": "<= 10", "met": True}
    assert g["transformer_growth_8192_over_1024"] == {"value": 30.0, "goal": ">= 40", "met": False}
    assert g["transformer_over_flash_at_8192"]["value"] == pytest.approx(30 / 9)
    assert g["transformer_over_flash_at_8192"]["met"] is False
    # a length ratio of 4 rescales the growth targets: <= 5 and >= 10
    g4 = B._goals(_fake_sweep([256, 1024], {"flash": [1.0, 4.5], "softmax": [1.0, 12.0]}), "mixing", 256, 1024)
    assert g4["flash_growth_1024_over_256"] == {"value": 4.5, "goal": "<= 5", "met": True}
    assert g4["softmax_growth_1024_over_256"] == {"value": 12.0, "goal": ">= 10", "met": True}
    assert g4["softmax_over_flash_at_1024"]["met"] is False  # 12 / 4.5 < 5
    # a skipped measurement gives no value and is not met
    g_none = B._goals(_fake_sweep([256, 1024], {"flash": [1.0, None], "softmax": [1.0, 2.0]}), "mixing", 256, 1024)
    assert g_none["flash_growth_1024_over_256"] == {"value": None, "goal": "<= 5", "met": False}


def test_run_quick_structure(monkeypatch):
    tiny = {
        "lengths": [16, 32],
        "rounds": [1, 1],
        "min_run_time": 0.01,
        "goal_lengths": (16, 32),
        "shape": {**TINY, "causal": True},
        "numpy_n": 32,
        "triton_n": 32,
        "cpu_threads": 1,
    }
    monkeypatch.setitem(B.RUN_CONFIG, True, tiny)
    threads_before = torch.get_num_threads()
    res = B.run(quick=True)
    assert torch.get_num_threads() == threads_before
    json.dumps(res, allow_nan=False)
    assert res["chapter"] == "ch07" and res["quick"] is True
    for level, kinds in (("mixing", B.MIXING_KINDS), ("layer", B.LAYER_KINDS)):
        assert res[level]["lengths"] == [16, 32] and set(res[level]["times_s"]) == set(kinds)
        goals = res["goals"][level]
        assert len(goals) == 3
        for goal in goals.values():
            assert set(goal) == {"value", "goal", "met"} and isinstance(goal["met"], bool)
            assert goal["value"] > 0
        assert all(isinstance(p, float) and math.isfinite(p) for p in res["growth_exponents"][level].values())
        assert len(res["ratios_at_longest"][level]) == 3
    assert "quick mode" in res["goals"]["note"] and "rescaled" in res["goals"]["note"]
    nvt = res["goals"]["torch_over_numpy_flash_layer"]
    assert nvt["goal"] == ">= 10" and nvt["value"] == pytest.approx(res["numpy_vs_torch"]["speedup"])
    assert res["params_per_model"]["transformer"] > 0
    if not torch.cuda.is_available():
        assert "skipped" in res["triton_vs_torch"]
        assert res["torch_threads"] == 1 and res["layer"]["settings"]["threads"] == 1
        assert res["numpy_vs_torch"]["config"]["threads"] == 1
    with pytest.raises(TypeError, match="quick"):
        B.run(quick="yes")


def test_run_config_full_sizes():
    """The full run measures the goal lengths the chapter states (the goals are read at these lengths)."""
    full = B.RUN_CONFIG[False]
    assert full["goal_lengths"] == (1024, 8192) and set(full["goal_lengths"]) <= set(full["lengths"])
    assert len(full["rounds"]) == len(full["lengths"])
    quick = B.RUN_CONFIG[True]
    assert set(quick["goal_lengths"]) <= set(quick["lengths"]) and max(quick["lengths"]) <= 1024
