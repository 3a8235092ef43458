"""The checkers of notebook 03.2 (gradual magnitude pruning) accept right answers and
reject the wrong answers students write, each with the hint that names its mistake."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _checks import fails

from effx_lab.models.lm import LM, LMSpec
from effx_lab.prune import experiments as X
from effx_lab.prune import schedule as S
from effx_lab.prune.exercises import check_cubic_sparsity, check_matched_width
from effx_lab.prune.exercises import gradual as G


# ----------------------------------------------------------------------------- schedule
def cubic_plain(step, *, s_init, s_final, t0, n_steps, dt):
    """What a student writes: the last pruning step reached, then the formula."""
    if step < t0:
        return s_init
    k = min((step - t0) // dt, n_steps)
    return s_final + (s_init - s_final) * (1 - k / n_steps) ** 3


def cubic_positional(step, s_init, s_final, t0, n_steps, dt):
    """The same with positional-or-keyword parameters and the time in steps."""
    t = t0 + ((step - t0) // dt) * dt
    progress = min(max((t - t0) / (n_steps * dt), 0.0), 1.0)
    return float(s_final + (s_init - s_final) * (1.0 - progress) ** 3)


def cubic_numpy(step, *, s_init, s_final, t0, n_steps, dt):
    """With NumPy clipping (returns a NumPy float)."""
    k = np.clip(np.floor((step - t0) / dt), 0, n_steps)
    return s_final + (s_init - s_final) * (1 - k / n_steps) ** 3


@pytest.mark.parametrize(
    "fn", [S.cubic_sparsity, cubic_plain, cubic_positional, cubic_numpy]
)
def test_right_schedules_pass(fn):
    result = check_cubic_sparsity(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 15


def _knobs(**kw):
    def wrong(step, *, s_init, s_final, t0, n_steps, dt):
        return G._cubic(step, s_init, s_final, t0, n_steps, dt, **kw)

    return wrong


def test_the_knobs_default_to_the_right_schedule():
    rng = np.random.default_rng(0)
    for case in G._cubic_cases(rng):
        got = _knobs()(*case.args, **case.kwargs)
        assert math.isclose(got, S.cubic_sparsity(*case.args, **case.kwargs),
                            rel_tol=1e-12, abs_tol=1e-15)  # fmt: skip


def linear_ramp(step, *, s_init, s_final, t0, n_steps, dt):
    if step < t0:
        return s_init
    k = min((step - t0) // dt, n_steps)
    return s_init + (s_final - s_init) * k / n_steps


def cube_on_progress(step, *, s_init, s_final, t0, n_steps, dt):
    if step < t0:
        return s_init
    k = min((step - t0) // dt, n_steps)
    return s_final + (s_init - s_final) * (k / n_steps) ** 3


def swapped(step, *, s_init, s_final, t0, n_steps, dt):
    if step < t0:
        return s_init
    k = min((step - t0) // dt, n_steps)
    return s_init + (s_final - s_init) * (1 - k / n_steps) ** 3


def no_clamp(step, *, s_init, s_final, t0, n_steps, dt):
    k = (step - t0) // dt
    return s_final + (s_init - s_final) * (1 - k / n_steps) ** 3


def no_end_clamp(step, *, s_init, s_final, t0, n_steps, dt):
    if step < t0:
        return s_init
    k = (step - t0) // dt
    return s_final + (s_init - s_final) * (1 - k / n_steps) ** 3


def no_start_clamp(step, *, s_init, s_final, t0, n_steps, dt):
    k = min((step - t0) // dt, n_steps)
    return s_final + (s_init - s_final) * (1 - k / n_steps) ** 3


def continuous(step, *, s_init, s_final, t0, n_steps, dt):
    progress = min(max((step - t0) / (n_steps * dt), 0.0), 1.0)
    return s_final + (s_init - s_final) * (1 - progress) ** 3


def nearest_pruning_step(step, *, s_init, s_final, t0, n_steps, dt):
    if step < t0:
        return s_init
    k = min(round((step - t0) / dt), n_steps)
    return s_final + (s_init - s_final) * (1 - k / n_steps) ** 3


def without_dt(step, *, s_init, s_final, t0, n_steps, dt):
    progress = min(max((step - t0) / n_steps, 0.0), 1.0)
    return s_final + (s_init - s_final) * (1 - progress) ** 3


def k_over_n_dt(step, *, s_init, s_final, t0, n_steps, dt):
    if step < t0:
        return s_init
    k = (step - t0) // dt
    progress = min(k / (n_steps * dt), 1.0)
    return s_final + (s_init - s_final) * (1 - progress) ** 3


@pytest.mark.parametrize(
    "fn, facts",
    [
        (linear_ramp, ["mid-schedule", "linear ramp"]),
        (cube_on_progress, ["mid-schedule", "the cube belongs on 1 - (t - t0)"]),
        (swapped, ["mid-schedule", "s_i and s_f are swapped"]),
        (no_clamp, ["before the start", "before t0 nothing is pruned yet"]),
        (no_start_clamp, ["before the start", "before t0 nothing is pruned yet"]),
        (no_end_clamp, ["after the end", "the sparsity stays s_f"]),
        (continuous, ["between pruning steps", "the masks change only every dt"]),
        (nearest_pruning_step, ["between pruning steps", "(floor), not the nearest"]),
        (without_dt, ["between pruning steps", "divide t - t0 by n dt, not by n"]),
        (k_over_n_dt, ["between pruning steps", "the progress is k / n, not"]),
    ],
)
def test_wrong_schedules_fail_with_their_hint(fn, facts):
    fails(check_cubic_sparsity(fn), "hint:", *facts)


def test_every_schedule_mistake_is_caught_with_its_own_hint():
    for mistake in G._CUBIC_MISTAKES:
        result = check_cubic_sparsity(mistake.wrong)
        fails(result, "hint: " + mistake.hint[:40])


def test_a_schedule_that_ignores_s_init_fails():
    def from_zero(step, *, s_init, s_final, t0, n_steps, dt):
        return cubic_plain(step, s_init=0.0, s_final=s_final, t0=t0,
                           n_steps=n_steps, dt=dt)  # fmt: skip

    fails(check_cubic_sparsity(from_zero), "s_i = 0.1")


# ----------------------------------------------------------------------------- width
def width_plain(d_large, sparsity, *, n_layers, n_heads, max_len):
    def count(d):
        return (256 + max_len + 2) * d + n_layers * (12 * d * d + 13 * d)

    target = count(d_large) - sparsity * n_layers * 12 * d_large**2
    best, d = n_heads, n_heads
    while True:
        if abs(count(d) - target) < abs(count(best) - target):
            best = d
        if count(d) > target:
            return best
        d += n_heads


def width_quadratic(d_large, sparsity, *, n_layers, n_heads, max_len):
    """Solve the quadratic, then look at the two multiples of n_heads around the root."""
    a, b = 12 * n_layers, 256 + max_len + 2 + 13 * n_layers
    target = a * d_large**2 + b * d_large - sparsity * 12 * n_layers * d_large**2
    root = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
    lo = max(n_heads, int(root // n_heads) * n_heads)
    hi = lo + n_heads
    count = lambda d: a * d * d + b * d  # noqa: E731
    return lo if abs(count(lo) - target) <= abs(count(hi) - target) else hi


def width_by_building_models(d_large, sparsity, *, n_layers, n_heads, max_len):
    """What a student with the course's LM at hand writes: count real parameters."""
    def model(d):
        spec = LMSpec(d_model=d, n_layers=n_layers, max_len=max_len,
                      mixer_options={"n_heads": n_heads})  # fmt: skip
        return LM(spec)

    big = model(d_large)
    prunable = sum(p.numel() for k, p in big.named_parameters() if ".w" in k)
    target = big.num_params() - sparsity * prunable
    best, d = n_heads, n_heads
    while True:
        n = model(d).num_params()
        if abs(n - target) < abs(model(best).num_params() - target):
            best = d
        if n > target:
            return best
        d += n_heads


@pytest.mark.parametrize("fn", [width_plain, width_quadratic, width_by_building_models])
def test_right_widths_pass(fn):
    result = check_matched_width(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10


def test_the_width_knobs_default_to_the_reference():
    rng = np.random.default_rng(3)
    for case in G._width_cases(rng):
        d, s = case.args
        kw = case.kwargs
        assert G._width(d, s, kw["n_layers"], kw["n_heads"], kw["max_len"]) == (
            G._width_reference(*case.args, **case.kwargs)
        )


def test_the_reference_sizes_the_experiment_as_the_script_does():
    """The script matches the large sparse model's measured non-zeros; the count from
    the formula gives the same width at the experiment's settings."""
    cfg = X.SETTINGS[False]
    d_large = cfg["gmp"]["d_large"]
    shape = dict(n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], max_len=cfg["seq_len"])
    for s in cfg["gmp"]["sparsities"]:
        spec = LMSpec(d_model=d_large, n_layers=cfg["n_layers"], max_len=cfg["seq_len"],
                      mixer_options={"n_heads": cfg["n_heads"]})  # fmt: skip
        large = LM(spec)
        prunable = [p for k, p in large.named_parameters() if ".w" in k]
        # layer scope: each matrix keeps numel - round(s numel) weights
        kept = sum(p.numel() - round(s * p.numel()) for p in prunable)
        measured = large.num_params() - sum(p.numel() for p in prunable) + kept
        assert X.matching_width(measured, cfg) == G._width_reference(d_large, s, **shape)


def _width_knobs(**kw):
    def wrong(d_large, sparsity, *, n_layers, n_heads, max_len):
        return G._width(d_large, sparsity, n_layers, n_heads, max_len, **kw)

    return wrong


def width_linear(d_large, sparsity, *, n_layers, n_heads, max_len):
    return max(n_heads, n_heads * round(d_large * (1 - sparsity) / n_heads))


def width_sqrt(d_large, sparsity, *, n_layers, n_heads, max_len):
    """Matching the pruned matrices only: d = D sqrt(1 - s), to a multiple of heads."""
    return max(n_heads, n_heads * round(d_large * math.sqrt(1 - sparsity) / n_heads))


@pytest.mark.parametrize(
    "fn, facts",
    [
        (width_linear, ["grow as d^2"]),
        (width_sqrt, ["the pruned matrices only"]),
        (_width_knobs(pruned="all"), ["only the prunable matrices lose the fraction s"]),
        (_width_knobs(count="no positions"), ["position table"]),
        (_width_knobs(count="untied head"), ["tied to the token embedding"]),
        (_width_knobs(count="no biases or norms"), ["count the biases"]),
        (_width_knobs(step=1), ["a multiple of n_heads"]),
        (_width_knobs(rule="floor"), ["nearest the target"]),
    ],
)
def test_wrong_widths_fail_with_their_hint(fn, facts):
    fails(check_matched_width(fn), "hint:", *facts)


def test_a_float_width_fails():
    def as_float(d_large, sparsity, *, n_layers, n_heads, max_len):
        return float(width_plain(d_large, sparsity, n_layers=n_layers,
                                 n_heads=n_heads, max_len=max_len))  # fmt: skip

    fails(check_matched_width(as_float), "int")


# ----------------------------------------------------------------------------- never crash
@pytest.mark.parametrize("checker", [check_cubic_sparsity, check_matched_width])
def test_not_attempted_and_non_functions(checker):
    def todo(*args, **kwargs):
        raise NotImplementedError

    res = checker(todo)
    assert res.passed is False and res.attempted is False
    assert "not attempted" in res.message
    res = checker(42)
    assert res.passed is False and "expected a function" in res.message
