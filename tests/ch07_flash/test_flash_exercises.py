"""The chapter 7 checkers accept the reference and plain student solutions and reject the classic wrong answers;
effx_lab.flash.analysis.scaling_exponent recovers power-law exponents and rejects bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.attention.reference import linear_attention
from effx_lab.flash import analysis as A
from effx_lab.flash import costs as C
from effx_lab.flash import exercises as E
from effx_lab.flash import reference as R


def _swish(x):
    return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------- references pass
def gau_param_count_ref(d_model, expansion, s, max_rel):
    return C.layer_params("gau", d_model, expansion=expansion, s=s, max_rel=max_rel)


def mixed_chunk_flops_ref(n, d_model, expansion, s, chunk_size):
    return C.layer_flops("flash", n, d_model, expansion=expansion, s=s, chunk_size=chunk_size)["mixing"]


def flash_crossover_ref(d_model, expansion, s, chunk_size):
    return C.mixing_crossover(d_model, expansion=expansion, s=s, chunk_size=chunk_size)


def causal_linear_attention_ref(q, k, v):
    return linear_attention(q, k, v, causal=True, normalize=True, eps=1e-6)


REFERENCES = [
    (E.check_relu2_attention, R.relu2_attention),
    (E.check_glu, R.glu),
    (E.check_gau_param_count, gau_param_count_ref),
    (E.check_chunk_linear_states, R.chunk_linear_states),
    (E.check_mixed_chunk_flops, mixed_chunk_flops_ref),
    (E.check_flash_crossover, flash_crossover_ref),
    (E.check_scaling_exponent, A.scaling_exponent),
    (E.check_causal_linear_attention, causal_linear_attention_ref),
]


@pytest.mark.parametrize("checker, fn", REFERENCES)
def test_reference_passes(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- plain student versions pass
def relu2_loops(q, k, bias=None, causal=False):
    n, m = q.shape[-2], k.shape[-2]
    out = np.zeros(q.shape[:-2] + (n, m))
    for idx in np.ndindex(*q.shape[:-2]):
        for i in range(n):
            for j in range(m):
                if causal and j > i:
                    continue
                t = sum(float(a) * float(b) for a, b in zip(q[idx][i], k[idx][j])) / m
                if bias is not None:
                    t += float(bias[i, j])
                out[idx + (i, j)] = max(t, 0.0) ** 2
    return out


def glu_loops(x, params):
    out = np.zeros(x.shape[:-1] + (params["w_o"].shape[1],))
    for idx in np.ndindex(*x.shape[:-1]):
        u = _swish(x[idx] @ params["w_u"] + params["b_u"])
        v = _swish(x[idx] @ params["w_v"] + params["b_v"])
        out[idx] = (u * v) @ params["w_o"] + params["b_o"]
    return out


def gau_param_count_plain(d_model, expansion, s, max_rel):
    d, e = d_model, expansion * d_model
    layer_norm = 2 * d
    uvz = d * (2 * e + s) + (2 * e + s)
    gamma_beta = 2 * (2 * s)
    rel = 2 * max_rel + 1
    out = e * d + d
    return layer_norm + uvz + gamma_beta + rel + out


def chunk_states_loops(lin_k, v, chunk_size, causal):
    n, s, e = lin_k.shape[-2], lin_k.shape[-1], v.shape[-1]
    g_count = n // chunk_size
    out = np.zeros(lin_k.shape[:-2] + (g_count, s, e))
    for idx in np.ndindex(*lin_k.shape[:-2]):
        for g in range(g_count):
            for h in range(g_count):
                if causal and h >= g:
                    continue
                rows = slice(h * chunk_size, (h + 1) * chunk_size)
                out[idx + (g,)] += lin_k[idx][rows].T @ v[idx][rows]
    return out


def mixed_chunk_flops_plain(n, d_model, expansion, s, chunk_size):
    e = expansion * d_model
    padded = math.ceil(n / chunk_size) * chunk_size
    local = 2 * padded * chunk_size * (s + e)
    global_ = 2 * padded * s * e + 2 * padded * s * e  # K^T V states, then the Q_lin read-out
    return local + global_


def flash_crossover_loop(d_model, expansion, s, chunk_size):
    """What most students write: try n = 1, 2, ... until FLASH's mixing is cheaper."""
    e, c = expansion * d_model, chunk_size
    n = 1
    while True:
        padded = math.ceil(n / c) * c
        flash = 2 * padded * c * (s + e) + 4 * padded * s * e
        if flash < 4 * n * n * d_model:
            return n
        n += 1


def scaling_polyfit(lengths, times):
    return float(np.polyfit(np.log(lengths), np.log(times), 1)[0])


def causal_linear_attention_loops(q, k, v):
    out = np.zeros(v.shape)
    for idx in np.ndindex(*q.shape[:-2]):
        state = np.zeros((q.shape[-1], v.shape[-1]))
        z = np.zeros(q.shape[-1])
        for i in range(q.shape[-2]):
            state += np.outer(k[idx][i], v[idx][i])
            z += k[idx][i]
            out[idx + (i,)] = (q[idx][i] @ state) / (q[idx][i] @ z + 1e-6)
    return out


@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_relu2_attention, relu2_loops),
        (E.check_glu, glu_loops),
        (E.check_gau_param_count, gau_param_count_plain),
        (E.check_chunk_linear_states, chunk_states_loops),
        (E.check_mixed_chunk_flops, mixed_chunk_flops_plain),
        (E.check_flash_crossover, flash_crossover_loop),
        (E.check_scaling_exponent, scaling_polyfit),
        (E.check_causal_linear_attention, causal_linear_attention_loops),
    ],
)
def test_straightforward_student_solutions_pass(checker, fn):
    result = checker(fn)
    assert result.passed is True, result.message


def test_scaling_exponent_accepts_any_log_base():
    def log10_fit(lengths, times):
        return float(np.polyfit(np.log10(lengths), np.log10(times), 1)[0])

    def log2_by_hand(lengths, times):
        x = [math.log2(n) for n in lengths]
        y = [math.log2(t) for t in times]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)

    assert E.check_scaling_exponent(log10_fit).passed
    assert E.check_scaling_exponent(log2_by_hand).passed


# ---------------------------------------------------------------------------------- never crash
@pytest.mark.parametrize("checker", [checker for checker, _ in REFERENCES])
def test_not_attempted_and_non_functions(checker):
    def todo(*args, **kwargs):
        raise NotImplementedError

    res = checker(todo)
    assert res.passed is False and res.attempted is False
    assert "not attempted" in res.message
    res = checker(42)
    assert res.passed is False and "expected a function" in res.message


# ---------------------------------------------------------------------------------- 07.1 relu2_attention
def _relu2(q, k, bias=None, causal=False, *, div="m", act="relu2", bias_at="logits", keep=np.tril):
    """A student's GAU attention, written plainly, with one knob per classic mistake."""
    n, m, s = q.shape[-2], k.shape[-2], q.shape[-1]
    logits = q @ np.swapaxes(k, -1, -2) / {"m": m, "n": n, "sqrt_s": np.sqrt(s)}[div]
    if bias is not None and bias_at == "logits":
        logits = logits + bias
    if act == "softmax":
        if causal:
            logits = np.where(keep(np.ones((n, m))) > 0, logits, -np.inf)
        w = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return w / w.sum(axis=-1, keepdims=True)
    a = {"relu2": np.maximum(logits, 0) ** 2, "relu": np.maximum(logits, 0), "square": logits**2}[act]
    if bias is not None and bias_at == "after relu^2":
        a = a + bias
    if bias is not None and bias_at == "between relu and square":
        a = (np.maximum(logits, 0) + bias) ** 2
    if causal:
        a = a * keep(np.ones((n, m)))
    return a


def test_relu2_knobs_default_to_the_reference():
    assert E.check_relu2_attention(_relu2).passed


@pytest.mark.parametrize(
    "change, facts",
    [
        ({"div": "sqrt_s"}, ["not by sqrt(s)"]),
        ({"div": "n"}, ["q and k only", "number of keys, not by n"]),
        ({"act": "relu"}, ["square the relu"]),
        ({"act": "square"}, ["apply the relu before squaring"]),
        ({"bias_at": "forgotten"}, ["add the bias"]),
        ({"bias_at": "after relu^2"}, ["inside the relu"]),
        ({"bias_at": "between relu and square"}, ["inside the relu"]),
        ({"keep": lambda a: np.tril(a, -1)}, ["causal", "removes the diagonal (j < i)"]),
        ({"keep": np.triu}, ["keeps the future"]),
        ({"act": "softmax"}, ["replaces the softmax"]),
    ],
)
def test_relu2_rejects(change, facts):
    def wrong(q, k, bias=None, causal=False):
        return _relu2(q, k, bias, causal, **change)

    _fails(E.check_relu2_attention(wrong), "relu2_attention", "hint:", *facts)


def test_relu2_rejects_missing_defaults_and_in_place_changes():
    def no_defaults(q, k, bias, causal):
        return R.relu2_attention(q, k, bias, causal)

    _fails(E.check_relu2_attention(no_defaults), "defaults", "could not call your function")

    def scales_q_in_place(q, k, bias=None, causal=False):
        q /= k.shape[-2]
        return _relu2(q * k.shape[-2], k, bias, causal)

    _fails(E.check_relu2_attention(scales_q_in_place), "in place")


# ---------------------------------------------------------------------------------- 07.1 glu
def _glu(x, p, *, act_u=_swish, act_v=_swish, act_out=None, b_o=True):
    out = (act_u(x @ p["w_u"] + p["b_u"]) * act_v(x @ p["w_v"] + p["b_v"])) @ p["w_o"]
    if b_o:
        out = out + p["b_o"]
    return act_out(out) if act_out is not None else out


def _identity(x):
    return x


@pytest.mark.parametrize(
    "change, facts",
    [
        ({"act_v": _identity}, ["both branches go through Swish"]),
        ({"act_u": _sigmoid, "act_v": _sigmoid}, ["not the sigmoid itself"]),
        ({"b_o": False}, ["b_o"]),
        ({"act_u": _identity, "act_v": _identity, "act_out": _swish}, ["not after W_o"]),
        ({"act_out": _swish}, []),
    ],
)
def test_glu_rejects(change, facts):
    def wrong(x, params):
        return _glu(x, params, **change)

    _fails(E.check_glu(wrong), "glu", *facts)


def test_glu_knobs_default_to_the_reference():
    assert E.check_glu(_glu).passed


# ---------------------------------------------------------------------------------- 07.1 gau_param_count
@pytest.mark.parametrize(
    "wrong, fact",
    [
        (lambda d, x, s, r: gau_param_count_plain(d, x, s, r) - (2 * x * d + s) - d, "biases"),
        (lambda d, x, s, r: gau_param_count_plain(d, x, s, r) - 2 * d, "LayerNorm"),
        (lambda d, x, s, r: gau_param_count_plain(d, x, s, r) - 2 * s, "2 rows"),
        (lambda d, x, s, r: gau_param_count_plain(d, 1, s, r), "e = expansion * d_model"),
    ],
    ids=["no biases", "no layernorm", "gamma with one row", "e = d"],
)
def test_gau_param_count_rejects(wrong, fact):
    def student(d_model, expansion, s, max_rel):
        return wrong(d_model, expansion, s, max_rel)

    _fails(E.check_gau_param_count(student), "gau_param_count", "hint:", fact)


def test_gau_param_count_rejects_a_float():
    _fails(E.check_gau_param_count(lambda d, x, s, r: float(gau_param_count_plain(d, x, s, r))), "a float")


# ---------------------------------------------------------------------------------- 07.2 chunk_linear_states
def _chunk_kv(lin_k, v, c):
    g = lin_k.shape[-2] // c
    kc = lin_k.reshape(lin_k.shape[:-2] + (g, c, lin_k.shape[-1]))
    vc = v.reshape(v.shape[:-2] + (g, c, v.shape[-1]))
    return np.swapaxes(kc, -1, -2) @ vc


def test_chunk_states_rejects_inclusive_cumsum_with_a_causality_hint():
    def inclusive(lin_k, v, chunk_size, causal):
        kv = _chunk_kv(lin_k, v, chunk_size)
        if causal:
            return np.cumsum(kv, axis=-3)  # includes the current chunk
        return np.broadcast_to(kv.sum(axis=-3, keepdims=True), kv.shape).copy()

    res = E.check_chunk_linear_states(inclusive)
    _fails(res, "causal", "hint:", "causality leak", "h < g")


def test_chunk_states_hint_names_only_the_matching_mistake():
    def inclusive_always(lin_k, v, chunk_size, causal):
        return np.cumsum(_chunk_kv(lin_k, v, chunk_size), axis=-3)

    _fails(E.check_chunk_linear_states(inclusive_always), "causality leak")

    def off_by_one_everywhere(lin_k, v, chunk_size, causal):  # wrong, but no classic mistake: no hint
        return R.chunk_linear_states(lin_k, v, chunk_size, causal) + 1.0

    res = E.check_chunk_linear_states(off_by_one_everywhere)
    _fails(res, "largest absolute error")
    assert "hint:" not in res.message


def test_chunk_states_rejects_one_state_when_not_causal():
    def one_state(lin_k, v, chunk_size, causal):
        kv = _chunk_kv(lin_k, v, chunk_size)
        if causal:
            return R.chunk_linear_states(lin_k, v, chunk_size, True)
        return kv.sum(axis=-3)  # (..., s, e): the same state for every chunk, returned once

    _fails(E.check_chunk_linear_states(one_state), "non-causal", "shape", "one state per chunk")


def test_chunk_states_rejects_dividing_by_c():
    def scaled(lin_k, v, chunk_size, causal):
        return chunk_states_loops(lin_k, v, chunk_size, causal) / chunk_size

    _fails(E.check_chunk_linear_states(scaled), "unscaled")


def test_chunk_states_rejects_transposed_states():
    def transposed(lin_k, v, chunk_size, causal):
        return np.swapaxes(chunk_states_loops(lin_k, v, chunk_size, causal), -1, -2)  # (..., G, e, s)

    _fails(E.check_chunk_linear_states(transposed), "shape", "(s, e)")


def test_chunk_states_rejects_ignoring_causal():
    def always_global(lin_k, v, chunk_size, causal):
        return chunk_states_loops(lin_k, v, chunk_size, False)

    _fails(E.check_chunk_linear_states(always_global), "causal", "h < g")


# ---------------------------------------------------------------------------------- 07.2 mixed_chunk_flops
def _flops(n, d_model, expansion, s, chunk_size, *, pad=True, local=True, global_=True, per_mac=2):
    e = expansion * d_model
    tokens = math.ceil(n / chunk_size) * chunk_size if pad else n
    total = 0
    if local:
        total += per_mac * tokens * chunk_size * (s + e)
    if global_:
        total += per_mac * 2 * tokens * s * e
    return total


@pytest.mark.parametrize(
    "change, facts",
    [
        ({"pad": False}, ["n not a multiple of c", "padded"]),
        ({"global_": False}, ["global linear part"]),
        ({"per_mac": 1}, ["2 per multiply-add"]),
        ({"local": False}, ["local quadratic part"]),
    ],
)
def test_mixed_chunk_flops_rejects(change, facts):
    def wrong(n, d_model, expansion, s, chunk_size):
        return _flops(n, d_model, expansion, s, chunk_size, **change)

    _fails(E.check_mixed_chunk_flops(wrong), "mixed_chunk_flops", "hint:", *facts)


def test_mixed_chunk_flops_plain_knobs_pass_and_float_rejected():
    assert E.check_mixed_chunk_flops(_flops).passed
    _fails(E.check_mixed_chunk_flops(lambda *a: float(_flops(*a))), "a float", "expected an integer")


def test_mixed_chunk_flops_rejects_int32_overflow():
    def int32(n, d_model, expansion, s, chunk_size):
        x = _flops(n, d_model, expansion, s, chunk_size)
        return (x + 2**31) % 2**32 - 2**31  # what an int32 accumulator would hold

    _fails(E.check_mixed_chunk_flops(int32), "mixed_chunk_flops")


# ---------------------------------------------------------- 07.3 flash_crossover
def _crossover(d_model, expansion, s, chunk_size, *, pad=True, quad="softmax",
               local=True, global_=True, per_mac=2, e_is_d=False, step="token"):
    """A student's loop over n, with one knob per classic mistake."""
    e, c = (1 if e_is_d else expansion) * d_model, chunk_size
    n = c if step == "chunk" else 1
    while True:
        tokens = math.ceil(n / c) * c if pad else n
        flash = per_mac * tokens * c * (s + e) if local else 0
        flash += per_mac * 2 * tokens * s * e if global_ else 0
        other = {"softmax": 4 * n * n * d_model, "one product": 2 * n * n * d_model,
                 "gau": 2 * n * n * (s + e)}[quad]
        if flash < other:
            return n
        n += c if step == "chunk" else 1


def test_crossover_knobs_default_to_the_reference():
    assert E.check_flash_crossover(_crossover).passed


@pytest.mark.parametrize(
    "change, facts",
    [
        ({"pad": False}, ["pads the sequence to whole chunks", "ceil(n / c)"]),
        ({"step": "chunk"}, ["need not be a multiple of c"]),
        ({"quad": "gau"}, ["not with FLASH-Quad"]),
        ({"quad": "one product"}, ["two n x n products"]),
        ({"global_": False}, ["global linear part"]),
        ({"local": False}, ["local quadratic part"]),
        ({"per_mac": 1}, ["2 per multiply-add"]),
        ({"e_is_d": True}, ["e = expansion * d_model"]),
    ],
)
def test_crossover_rejects(change, facts):
    def wrong(d_model, expansion, s, chunk_size):
        return _crossover(d_model, expansion, s, chunk_size, **change)

    _fails(E.check_flash_crossover(wrong), "flash_crossover", "hint:", *facts)


def test_crossover_rejects_the_real_root_and_an_off_by_one():
    def root(d_model, expansion, s, chunk_size):  # solves 4dn^2 = 2nc(s + e) + 4nse
        e, c = expansion * d_model, chunk_size
        return (c * (s + e) + 2 * s * e) / (2 * d_model)

    _fails(E.check_flash_crossover(root), "flash_crossover", "a float")

    def last_not_cheaper(d_model, expansion, s, chunk_size):
        return _crossover(d_model, expansion, s, chunk_size) - 1

    res = E.check_flash_crossover(last_not_cheaper)
    _fails(res, "flash_crossover", "you returned 452, expected 453")
    assert "hint:" not in res.message


# ---------------------------------------------------------------------------------- 07.3 scaling_exponent
def _lsq(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.polyfit(x, y, 1)[0])


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (lambda n, t: _lsq(n, t), ["logarithms"]),
        (lambda n, t: float(np.log(t[-1] / t[0]) / np.log(n[-1] / n[0])), ["noisy", "every measurement"]),
        (lambda n, t: 1.0 / _lsq(np.log(n), np.log(t)), []),  # inverse of the right slope: exact only on power laws
        (lambda n, t: _lsq(np.log(t), np.log(n)), ["noisy", "swapping the axes"]),
        (lambda n, t: _lsq(np.log10(n), np.log(t)), ["same logarithm"]),
    ],
    ids=["no logs", "end points only", "inverse slope", "n fitted on t", "log10 vs ln mixed"],
)
def test_scaling_exponent_rejects(wrong, facts):
    def student(lengths, times):
        return wrong(lengths, times)

    _fails(E.check_scaling_exponent(student), "scaling_exponent", *facts)


# ---------------------------------------------------------------------------------- 07.3 causal_linear_attention
def _cla(q, k, v, *, causal=True, include_self=True, normalize=True, normaliser_causal=True):
    n = q.shape[-2]
    allowed = np.tril(np.ones((n, n)), 0 if include_self else -1) if causal else np.ones((n, n))
    a = (q @ np.swapaxes(k, -1, -2)) * allowed
    out = a @ v
    if not normalize:
        return out
    if normaliser_causal:
        den = a.sum(axis=-1, keepdims=True)
    else:
        den = q @ k.sum(axis=-2)[..., None]
    return out / (den + 1e-6)


def test_causal_linear_attention_quadratic_form_passes():
    assert E.check_causal_linear_attention(_cla).passed


@pytest.mark.parametrize(
    "change, facts",
    [
        ({"causal": False}, ["j <= i", "not all keys"]),
        ({"include_self": False}, ["its own key", "inclusive"]),
        ({"normalize": False}, ["normalise"]),
        ({"normaliser_causal": False}, ["normaliser is causal"]),
    ],
)
def test_causal_linear_attention_rejects(change, facts):
    def wrong(q, k, v):
        return _cla(q, k, v, **change)

    _fails(E.check_causal_linear_attention(wrong), "causal_linear_attention", "hint:", *facts)


# ---------------------------------------------------------------------------------- analysis.scaling_exponent
@pytest.mark.parametrize("p", [1.0, 2.0, 0.5, 3.0])
def test_scaling_exponent_recovers_power_laws(p):
    n = np.array([128, 256, 512, 1024, 2048, 4096, 8192])
    t = 3e-7 * n.astype(float) ** p
    assert A.scaling_exponent(n, t) == pytest.approx(p, rel=1e-12, abs=1e-12)
    assert A.scaling_exponent(n.tolist(), (t * 1000).tolist()) == pytest.approx(p, rel=1e-12)  # ms vs s
    assert isinstance(A.scaling_exponent(n, t), float)


def test_scaling_exponent_is_least_squares_on_noisy_data():
    rng = np.random.default_rng(0)
    n = np.array([100, 300, 1000, 3000, 10000, 30000], dtype=float)
    t = 1e-8 * n**1.7 * np.exp(rng.normal(0, 0.3, n.size))
    got = A.scaling_exponent(n, t)
    assert got == pytest.approx(np.polyfit(np.log(n), np.log(t), 1)[0], rel=1e-12)
    assert got != pytest.approx(np.log(t[-1] / t[0]) / np.log(n[-1] / n[0]), rel=1e-3)
    order = rng.permutation(n.size)
    assert A.scaling_exponent(n[order], t[order]) == pytest.approx(got, rel=1e-12)
    assert A.scaling_exponent((1000, 4000), (0.5, 8.0)) == pytest.approx(2.0, rel=1e-12)  # two points, tuples


@pytest.mark.parametrize(
    "lengths, times, error, match",
    [
        ([1, 2, 3], [1.0, 2.0], ValueError, "same length"),
        ([5], [1.0], ValueError, "at least 2"),
        ([4, 4, 4], [1.0, 2.0, 3.0], ValueError, "two different values"),
        ([0, 1, 2], [1.0, 2.0, 3.0], ValueError, "lengths must be > 0"),
        ([1, 2, 3], [1.0, -2.0, 3.0], ValueError, "times must be > 0"),
        ([1, 2, 3], [1.0, np.nan, 3.0], ValueError, "finite"),
        ([1, 2, 3], [1.0, np.inf, 3.0], ValueError, "finite"),
        (np.ones((2, 3)), np.ones((2, 3)), ValueError, "1-D"),
        (["a", "b"], [1.0, 2.0], TypeError, "real numbers"),
        (np.array([True, False]), [1.0, 2.0], TypeError, "real numbers"),
        ([[1, 2], [3]], [1.0, 2.0], ValueError, "flat sequence"),
        (1024, 0.5, TypeError, "lengths must be a list"),
        ([1, 2], {"a": 1.0}, TypeError, "times must be a list"),
        ([1, 2], None, TypeError, "times must be a list"),
    ],
)
def test_scaling_exponent_rejects_bad_input(lengths, times, error, match):
    with pytest.raises(error, match=match):
        A.scaling_exponent(lengths, times)
