"""effx_lab.check: the checker must reject known-wrong answers, accept right ones, and never crash."""
from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from effx_lab.check import (
    RESULTS,
    Case,
    CheckerError,
    CheckResult,
    check_function,
    check_value,
    random_arrays,
    report,
    summary,
)


@pytest.fixture(autouse=True)
def _fresh_results(monkeypatch):
    monkeypatch.delenv("EFFX_CHECK_STRICT", raising=False)
    RESULTS.clear()
    yield
    RESULTS.clear()


# --------------------------------------------------------------------------------------------------
# The exercise used throughout: quantize to steps of 1/4 and clip to [-1, 1]
# --------------------------------------------------------------------------------------------------


def quantize_ref(x):
    return np.clip(np.round(x * 4) / 4, -1, 1)


TIES = np.array([[-0.625, -0.125, 0.125, 0.375, 0.625]], dtype=np.float32)  # x*4 is exactly halfway


def quantize_cases(rng):
    return [
        Case("small square: 4x4", (random_arrays(rng, (4, 4)),)),
        Case("odd sizes: 3x7", (random_arrays(rng, (3, 7)),)),
        Case("odd sizes: 1x5", (random_arrays(rng, (1, 5)),)),
        Case("ties: values exactly halfway between two steps", (TIES.copy(),)),
        Case("extreme values (1e30)", (np.array([[1e30, -1e30, 0.3], [2.0, -5.0, 0.0]], dtype=np.float32),)),
    ]


def run_quantize(fn, **kw):
    return check_function(fn, quantize_ref, quantize_cases, name="quantize", **kw)


def kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch, bytes_per_elem):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_elem


KV_CASES = [
    Case("small: 2 layers", (2, 4, 8, 16, 1, 2)),
    Case("odd sizes: 3 layers, seq 7", (3, 1, 5, 7, 3, 2)),
    Case("large: 80 layers, 32k tokens", (80, 8, 128, 32768, 4, 2)),
]


# --------------------------------------------------------------------------------------------------
# Strict: known-wrong answers are rejected, with the key facts in the message
# --------------------------------------------------------------------------------------------------


def test_accepts_the_reference_itself_and_lists_the_case_kinds():
    r = run_quantize(quantize_ref)
    assert r.passed and bool(r) and r.attempted
    assert (r.n_cases, r.n_passed, r.failed_case) == (5, 5, None)
    assert r.message == "✅ quantize: passed all 5 cases (small square, odd sizes, ties, extreme values (1e30))"


def test_missing_clip_is_caught_only_by_the_extreme_values_case():
    r = run_quantize(lambda x: np.round(x * 4) / 4)
    assert not r.passed and r.attempted
    assert r.failed_case == "extreme values (1e30)"
    assert r.n_passed == 4
    assert "case 5 of 5" in r.message
    assert "input: x = array of shape (2, 3) float32" in r.message
    assert "largest absolute error 1e+30 at index (0, 0): you returned 1e+30, expected 1.0" in r.message
    assert "4 of 6 elements are off" in r.message


def test_floor_instead_of_round_is_caught_on_the_first_case():
    r = run_quantize(lambda x: np.clip(np.floor(x * 4) / 4, -1, 1))
    assert not r.passed and r.failed_case == "small square: 4x4"
    assert "case 1 of 5" in r.message and "largest absolute error 0.25" in r.message
    assert "tolerance: atol + rtol·|expected|" in r.message


def test_round_half_away_from_zero_is_caught_only_by_the_ties_case():
    def half_away(x):
        return np.clip(np.sign(x) * np.floor(np.abs(x) * 4 + 0.5) / 4, -1, 1)

    r = run_quantize(half_away)
    assert not r.passed
    assert r.failed_case == "ties: values exactly halfway between two steps"
    assert r.n_passed == 3
    # -0.625*4 = -2.5: round-half-even gives -2 (-0.5), half-away gives -3 (-0.75)
    assert "index (0, 0): you returned -0.75, expected -0.5" in r.message
    assert "4 of 5 elements are off" in r.message


def test_transposed_output_caught_on_square_and_non_square_inputs():
    def transposed(x):
        return quantize_ref(x).T

    square = check_function(transposed, quantize_ref, [Case("square: 4x4", (random_arrays(np.random.default_rng(1), (4, 4)),))], name="q")
    assert not square.passed and "largest absolute error" in square.message  # same shape, wrong values
    odd = check_function(transposed, quantize_ref, [Case("odd sizes: 3x7", (np.zeros((3, 7), np.float32),))], name="q")
    assert not odd.passed
    assert "you returned shape (7, 3), expected (3, 7)" in odd.message and "transposed" in odd.message


def test_wrong_reduction_axis_is_caught_on_non_square_input():
    cases = [Case("odd sizes: 3x7", (np.arange(21.0).reshape(3, 7),))]
    r = check_function(lambda x: x.sum(axis=0), lambda x: x.sum(axis=1), cases, name="row_sums")
    assert not r.passed and "you returned shape (7,), expected (3,)" in r.message
    square = [Case("square: 3x3", (np.arange(9.0).reshape(3, 3),))]
    r = check_function(lambda x: x.sum(axis=0), lambda x: x.sum(axis=1), square, name="row_sums")
    assert not r.passed and "largest absolute error" in r.message


def test_off_by_one_in_a_size_is_caught():
    cases = [Case("odd sizes: 3x7", (np.arange(21.0).reshape(3, 7),))]

    def padded_diff(x):  # one difference too many
        return np.diff(np.concatenate([np.zeros((x.shape[0], 1)), x], axis=1), axis=1)

    r = check_function(padded_diff, lambda x: np.diff(x, axis=1), cases, name="diff")
    assert "you returned shape (3, 7), expected (3, 6)" in r.message and "off by one" in r.message

    def kv_off_by_one(L, H, D, S, B, nbytes):
        return 2 * L * H * D * (S - 1) * B * nbytes

    r = check_function(kv_off_by_one, kv_cache_bytes, KV_CASES, name="kv_cache_bytes", exact=True)
    assert not r.passed and r.failed_case == "small: 2 layers"
    assert "you returned 3840, expected 4096" in r.message
    assert "n_layers = 2, n_kv_heads = 4, head_dim = 8, seq_len = 16, batch = 1, bytes_per_elem = 2" in r.message


def test_integer_counts_are_exact_even_with_a_relative_tolerance():
    def off_by_one_byte(*args):
        return kv_cache_bytes(*args) + 1

    r = check_function(off_by_one_byte, kv_cache_bytes, KV_CASES, name="kv_cache_bytes", rtol=1e-3)
    assert not r.passed and "(off by 1)" in r.message


def test_float_where_an_exact_int_is_expected_is_rejected():
    def float_bytes(L, H, D, S, B, nbytes):
        return 2.0 * L * H * D * S * B * nbytes

    r = check_function(float_bytes, kv_cache_bytes, KV_CASES, name="kv_cache_bytes", exact=True)
    assert not r.passed and "you returned 4096.0 (a float), expected an integer (int)" in r.message
    # a non-whole number is wrong even without exact=True
    half = [Case("odd count: 3 int4 values", (3,))]
    r = check_function(lambda n: n / 2, lambda n: -(-n // 2), half, name="int4_bytes")
    assert "you returned 1.5, expected a whole number" in r.message
    # integer arrays: floats rejected with exact=True, non-whole floats rejected always
    cases = [Case("codes", (np.array([0.2, 1.7, 2.5]),))]
    r = check_function(lambda x: np.round(x), lambda x: np.round(x).astype(np.int64), cases, name="codes", exact=True)
    assert "you returned floats (float64), expected integers (int64)" in r.message
    r = check_function(lambda x: x, lambda x: np.round(x).astype(np.int64), cases, name="codes")
    assert "expected whole numbers (int64)" in r.message and "3 of 3 elements are not integers" in r.message


def test_returning_none_says_forgot_return():
    def no_return(x):
        np.clip(np.round(x * 4) / 4, -1, 1)

    r = run_quantize(no_return)
    assert not r.passed and "your function returned None — did you forget `return`?" in r.message


def test_in_place_mutation_is_reported_and_cannot_corrupt_the_expected_answer():
    original = np.linspace(-2, 2, 21, dtype=np.float32).reshape(3, 7)
    case = Case("odd sizes: 3x7", (original.copy(),))

    def in_place(x):  # right values, but written into the caller's array
        x *= 4
        np.round(x, out=x)
        x /= 4
        np.clip(x, -1, 1, out=x)
        return x

    r = check_function(in_place, quantize_ref, [case], name="quantize")
    assert not r.passed
    assert "your function modified its input argument 1 (`x`) in place" in r.message
    np.testing.assert_array_equal(case.args[0], original)  # the case itself was not touched

    def zero_after(x):  # computes the right answer first, then clobbers the input
        out = quantize_ref(x)
        x[:] = 0
        return out

    r = check_function(zero_after, quantize_ref, [case], name="quantize")
    assert "modified its input argument 1 (`x`) in place" in r.message and "largest" not in r.message


def test_in_place_exercise_compares_the_modified_input():
    def ref_inplace(x):
        x[:] = quantize_ref(x)

    case = [Case("odd sizes: 3x7", (np.linspace(-2, 2, 21).reshape(3, 7),))]
    assert check_function(ref_inplace, ref_inplace, case, name="q").passed

    def floor_inplace(x):
        x[:] = np.clip(np.floor(x * 4) / 4, -1, 1)

    r = check_function(floor_inplace, ref_inplace, case, name="q")
    assert not r.passed and "after your function ran, its input argument 1 (`x`) is wrong" in r.message
    r = check_function(lambda x: None, ref_inplace, case, name="q")
    assert not r.passed and "after your function ran" in r.message


def test_student_exception_is_caught_with_class_message_case_and_line():
    def bad_index(x):
        first = x[0]
        return x[7] + first

    r = run_quantize(bad_index)
    assert not r.passed and r.attempted
    assert "your function raised IndexError: index 7 is out of bounds for axis 0 with size 4" in r.message
    assert "on case 'small square: 4x4' (case 1 of 5)" in r.message
    assert "test_check.py, in bad_index: return x[7] + first" in r.message


def test_exception_raised_inside_numpy_points_at_the_students_line():
    def bad_matmul(x):
        return x @ np.ones((x.shape[1] + 1, 2))

    r = run_quantize(bad_matmul)
    assert "raised ValueError" in r.message and "in bad_matmul: return x @ np.ones" in r.message


def test_too_slow_is_stopped_by_the_time_limit():
    def slow(x):
        time.sleep(5)
        return quantize_ref(x)

    before = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    r = run_quantize(slow, time_limit_s=0.2)
    assert time.perf_counter() - start < 2.0
    assert not r.passed and r.failed_case == "small square: 4x4"
    assert "took longer than 0.2 s on case 'small square: 4x4'" in r.message
    assert "infinite loop" in r.message
    assert signal.getsignal(signal.SIGALRM) is before  # handler restored


def test_time_limit_is_not_swallowed_by_a_bare_except_exception():
    def stubborn(x):
        while True:
            try:
                time.sleep(1)
            except Exception:
                pass

    start = time.perf_counter()
    r = run_quantize(stubborn, time_limit_s=0.2)
    assert time.perf_counter() - start < 2.0 and "took longer than 0.2 s" in r.message


def test_time_limit_outside_the_main_thread_judges_after_the_call():
    out = {}

    def slow(x):
        time.sleep(0.3)
        return quantize_ref(x)

    thread = threading.Thread(target=lambda: out.setdefault("r", run_quantize(slow, time_limit_s=0.1)))
    thread.start()
    thread.join()
    assert not out["r"].passed and "took longer than 0.1 s" in out["r"].message


# A program that swallows every exception forever would hang the test session if the checker lost control:
# it runs in a child process with a generous wall-clock limit instead.
_STUBBORN_PROGRAM = textwrap.dedent(
    """
    import time
    import numpy as np
    from effx_lab.check import Case, check_function

    def ref(x):
        return x * 2

    def busy_forever(x):  # the time-out lands in the inner loop; the bare except swallows it
        while True:
            try:
                while True:
                    pass
            except:
                pass

    def sleeps_forever(x):
        while True:
            try:
                time.sleep(1)
            except:
                pass

    for fn in (busy_forever, sleeps_forever):
        r = check_function(fn, ref, [Case("one: x", (np.arange(3.0),))], name="double", time_limit_s=0.2)
        print(fn.__name__, r.passed, "took longer than 0.2 s" in r.message, flush=True)
    """
)


def test_time_limit_is_not_swallowed_by_a_bare_except_in_a_loop():
    try:
        done = subprocess.run(
            [sys.executable, "-c", _STUBBORN_PROGRAM], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the checker never stopped a function that swallows the time-out: {exc.stdout!r}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["busy_forever False True", "sleeps_forever False True"], done.stdout


def test_swallowed_time_limit_is_reported_as_too_slow_whatever_the_code_does_next():
    def swallows_then_answers(x):
        try:
            time.sleep(3)
        except:  # noqa: E722 - the point of the test
            pass
        return quantize_ref(x)

    def swallows_then_raises(x):
        try:
            time.sleep(3)
        except BaseException:
            raise ValueError("not the real problem") from None

    before = sys.gettrace()
    for fn in (swallows_then_answers, swallows_then_raises):
        r = run_quantize(fn, time_limit_s=0.2)
        assert not r.passed and "took longer than 0.2 s on case 'small square: 4x4'" in r.message, r.message
        assert "ValueError" not in r.message
    assert sys.gettrace() is before


def test_time_limit_gives_back_a_debuggers_trace_function():
    def debugger(frame, event, arg):
        return None

    def swallows(x):  # gives up by itself after 5 s, so that a regression cannot hang the test session
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline:
            try:
                time.sleep(0.05)
            except:  # noqa: E722
                pass

    before = sys.gettrace()
    sys.settrace(debugger)
    try:
        r = run_quantize(swallows, time_limit_s=0.2)
        now = sys.gettrace()
    finally:
        sys.settrace(before)
    assert not r.passed and "took longer than 0.2 s" in r.message
    assert now is debugger


def test_keyboard_interrupt_raised_by_the_students_code_is_a_failure():
    def interrupts(x):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    try:
        r = run_quantize(interrupts)
    except KeyboardInterrupt:
        pytest.fail("a KeyboardInterrupt raised by the student's code escaped the checker")
    assert not r.passed and r.attempted and r.failed_case == "small square: 4x4"
    assert "your function raised KeyboardInterrupt" in r.message
    assert "in interrupts: raise KeyboardInterrupt" in r.message and "nobody pressed stop" in r.message
    assert signal.getsignal(signal.SIGINT) is before


def test_keyboard_interrupt_of_the_students_code_in_a_thread_is_a_failure():
    out = {}

    def interrupts(x):
        raise KeyboardInterrupt("from the code")

    def run():
        try:
            out["r"] = run_quantize(interrupts)
        except BaseException as exc:  # reported below instead of being lost in the thread
            out["escaped"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert "escaped" not in out, out.get("escaped")
    assert not out["r"].passed and "KeyboardInterrupt: from the code" in out["r"].message


def test_any_base_exception_of_the_students_code_is_reported():
    class Unusual(BaseException):
        pass

    def raises_unusual(x):
        raise Unusual("not an Exception")

    r = run_quantize(raises_unusual)
    assert not r.passed and "your function raised Unusual: not an Exception" in r.message


def test_a_real_interrupt_stops_the_checker():
    def pressed_stop(x):
        signal.raise_signal(signal.SIGINT)  # what Ctrl-C or Jupyter's stop button delivers
        time.sleep(5)
        return quantize_ref(x)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_quantize(pressed_stop)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_real_interrupt_stops_the_checker_even_when_the_code_swallows_it():
    def swallows_stop(x):
        try:
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)
        except BaseException:
            pass
        return quantize_ref(x)

    with pytest.raises(KeyboardInterrupt):
        run_quantize(swallows_stop)
    assert RESULTS == []


def test_what_the_student_prints_is_captured_and_shown_bounded(capsys):
    def chatty(x):
        for i in range(20_000):
            print("debug line", i)
        print("a warning", file=sys.stderr)
        return quantize_ref(x)

    r = report(run_quantize(chatty))
    assert r.passed
    captured = capsys.readouterr()
    assert "debug line 19999" not in captured.out and captured.err == ""
    assert len(captured.out.splitlines()) < 15, captured.out[:2000]
    total = 5 * 20_001  # five cases
    assert f"your function printed {total:,} lines while it was checked; the first 6:" in r.message
    assert "   | debug line 0\n   | debug line 1\n" in r.message
    assert f"({total - 6:,} more lines hidden)" in r.message


def test_printed_output_appears_with_a_failure_too():
    def prints_then_fails(x):
        print("shape is", x.shape, end="")
        print("!")
        print("x" * 1000)
        print("no newline at the end", end="")
        return x

    r = run_quantize(prints_then_fails)
    assert not r.passed and "wrong answer" in r.message
    lines = r.message.splitlines()
    at = lines.index("   your function printed 3 lines while it was checked:")
    assert lines[at + 1] == "   | shape is (4, 4)!"
    assert lines[at + 2] == "   | " + "x" * 200 + " …"
    assert lines[at + 3] == "   | no newline at the end"
    assert len(lines) == at + 4


def test_nothing_printed_adds_nothing():
    assert "printed" not in run_quantize(quantize_ref).message


def test_placeholder_not_implemented_means_not_attempted():
    def placeholder(x):
        # YOUR CODE HERE
        raise NotImplementedError("Exercise: replace this line with your code")

    r = run_quantize(placeholder)
    assert not r.passed and not r.attempted and r.n_passed == 0
    assert r.message == (
        "✏️ quantize: not attempted yet — replace the placeholder in the exercise cell with your code"
    )


def test_not_implemented_from_a_library_or_after_a_pass_is_a_real_error():
    r = run_quantize(lambda x: torch.nn.Module()(x))  # torch: module without forward()
    assert r.attempted and "raised NotImplementedError" in r.message

    def partial(x):
        if x.shape[0] != 4:
            raise NotImplementedError("only 4 rows")
        return quantize_ref(x)

    r = run_quantize(partial)
    assert r.attempted and r.failed_case == "odd sizes: 3x7" and "raised NotImplementedError: only 4 rows" in r.message

    def stdlib(x):  # an abstract stdlib method raises it from inside the standard library
        asyncio.AbstractEventLoop().run_forever()

    assert run_quantize(stdlib).attempted


# --------------------------------------------------------------------------------------------------
# Accepts right answers
# --------------------------------------------------------------------------------------------------


def test_accepts_a_torch_implementation_of_a_numpy_reference():
    def torch_quantize(x):
        t = torch.as_tensor(x)
        return torch.clamp(torch.round(t * 4) / 4, -1, 1)

    r = run_quantize(torch_quantize)
    assert r.passed, r.message


def test_accepts_tiny_float_differences_within_tolerance_and_rejects_larger_ones():
    def scale(x):
        return x * 1.7

    cases = [Case("odd sizes: 3x7", (random_arrays(np.random.default_rng(2), (3, 7), "float64"),))]
    assert check_function(lambda x: x * 1.7 * (1 + 1e-9), scale, cases, name="s").passed
    assert check_function(lambda x: x * 1.7 + 1e-9, scale, cases, name="s", atol=1e-8).passed
    r = check_function(lambda x: x * 1.7 * (1 + 1e-4), scale, cases, name="s")
    assert not r.passed and "21 of 21 elements are off" in r.message
    r = check_function(lambda x: x * 1.7 * (1 + 1e-12), scale, cases, name="s", exact=True)
    assert not r.passed and "differ" in r.message


def test_torch_expected_and_numpy_returned_and_0d_tensors():
    cases = [Case("vector", (np.arange(5.0),))]
    assert check_function(lambda x: x * 2, lambda x: torch.as_tensor(x) * 2, cases, name="t").passed
    # a 0-d tensor is a fine float answer, unless exact=True asks for a Python number
    assert check_function(lambda x: torch.as_tensor(x).sum(), lambda x: float(x.sum()), cases, name="t").passed
    r = check_function(lambda x: torch.as_tensor(x).sum(), lambda x: float(x.sum()), cases, name="t", exact=True)
    assert not r.passed and "use .item()" in r.message


# --------------------------------------------------------------------------------------------------
# Comparison details
# --------------------------------------------------------------------------------------------------

ONE = [Case("one input", (np.arange(6.0).reshape(2, 3),))]


def _msg(student, reference, **kw):
    return check_function(student, reference, ONE, name="ex", **kw).message


def test_wrong_type_messages():
    assert "you returned a list, expected a NumPy array of shape (2, 3) float64" in _msg(lambda x: x.tolist(), lambda x: x)
    assert "you returned a NumPy array, expected a tuple of 2 items" in _msg(lambda x: x, lambda x: (x, x))
    assert "you returned a tuple of 1 item, expected a tuple of 2 items" in _msg(lambda x: (x,), lambda x: (x, x))
    assert "you returned a generator" in _msg(lambda x: (v for v in x), lambda x: x)
    assert "you returned 'a', expected 'b'" in _msg(lambda x: "a", lambda x: "b")
    assert "expected a bool (True or False)" in _msg(lambda x: 1, lambda x: True)
    assert "you returned True, expected False" in _msg(lambda x: True, lambda x: False)
    assert "dtype object" in _msg(lambda x: np.array([x, 1], dtype=object), lambda x: x)
    assert "expected booleans" in _msg(lambda x: (x > 2).astype(np.float32), lambda x: x > 2)


def test_nested_containers_name_the_path():
    def ref(x):
        return {"q": x, "scale": np.float64(x.max())}, [x.sum(axis=0)]

    def wrong(x):
        return {"q": x, "scale": np.float64(x.max() + 1)}, [x.sum(axis=0)]

    msg = _msg(wrong, ref)
    assert "at output[0]['scale']: you returned 6.0, expected 5.0" in msg
    assert "at output[1][0]: you returned shape (2,), expected (3,)" in _msg(lambda x: (ref(x)[0], [x.sum(axis=1)]), ref)
    assert "without the key 'scale'" in _msg(lambda x: ({"q": x}, [x.sum(axis=0)]), ref)
    assert "unexpected key 'zero'" in _msg(lambda x: ({**ref(x)[0], "zero": 0}, ref(x)[1]), ref)
    assert check_function(lambda x: [ref(x)[0], ref(x)[1]], ref, ONE, name="ex").passed  # list for tuple is fine
    assert not check_function(lambda x: [ref(x)[0], ref(x)[1]], ref, ONE, name="ex", exact=True).passed


def test_dataclass_outputs_are_compared_field_by_field():
    @dataclass
    class Quantized:
        codes: np.ndarray
        scale: float

    ref = lambda x: Quantized(np.round(x).astype(np.int8), 0.5)  # noqa: E731
    assert check_function(ref, ref, ONE, name="dc").passed
    msg = _msg(lambda x: Quantized(np.round(x).astype(np.int8), 0.25), ref)
    assert "at output.scale: you returned 0.25, expected 0.5" in msg


def test_nan_and_inf():
    def divide_by_zero(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return x / 0.0

    msg = _msg(divide_by_zero, lambda x: x)
    assert "nan at index (0, 0) where the expected value is 0.0" in msg and "are NaN or inf" in msg
    nan_ref = lambda x: np.where(x > 2, np.nan, x)  # noqa: E731
    assert check_function(nan_ref, nan_ref, ONE, name="nan").passed
    assert "expected nan" in _msg(lambda x: x, nan_ref)
    assert "you returned inf, expected 1.0" in _msg(lambda x: math.inf, lambda x: 1.0)


def test_custom_compare():
    def sorted_equal(got, expected):
        return None if sorted(got) == sorted(expected) else "not the same items"

    cases = [Case("three items", ([3, 1, 2],))]
    assert check_function(lambda v: list(reversed(v)), lambda v: v, cases, name="c", compare=sorted_equal).passed
    r = check_function(lambda v: [1], lambda v: v, cases, name="c", compare=sorted_equal)
    assert not r.passed and "not the same items" in r.message
    r = check_function(lambda v: 5, lambda v: v, cases, name="c", compare=sorted_equal)  # compare crashes
    assert not r.passed and "could not compare your answer" in r.message and "TypeError" in r.message
    r = check_function(lambda v: None, lambda v: v, cases, name="c", compare=sorted_equal)
    assert "did you forget `return`" in r.message


def test_student_errors_never_raise():
    r = check_function(3, quantize_ref, quantize_cases, name="q")
    assert not r.passed and r.message == "❌ q: expected a function, got 3 (int) — pass the function itself, without calling it"
    r = check_function(lambda x, y: x, quantize_ref, quantize_cases, name="q")
    assert "could not call your function" in r.message and "TypeError" in r.message and "quantize_ref(x)" in r.message

    def exits(x):
        raise SystemExit(3)

    assert "raised SystemExit" in run_quantize(exits).message

    def recursive(x):
        return recursive(x)

    assert "raised RecursionError" in run_quantize(recursive).message


def test_reference_that_raises_is_reported_as_a_course_bug():
    r = check_function(quantize_ref, lambda x: x[100], ONE, name="q")
    assert not r.passed and "reference solution raised IndexError" in r.message and "bug in the course" in r.message


def test_case_generator_gets_a_seeded_rng_per_name():
    seen = []

    def gen(rng):
        x = random_arrays(rng, (2, 2))
        seen.append(x)
        return [Case("random", (x,))]

    check_function(quantize_ref, quantize_ref, gen, name="same")
    check_function(quantize_ref, quantize_ref, gen, name="same")
    check_function(quantize_ref, quantize_ref, gen, name="other")
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2])


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"name": 3}, TypeError, "name must be a non-empty str"),
        ({"name": "q", "cases": []}, ValueError, "at least one Case"),
        ({"name": "q", "cases": "abc"}, TypeError, "cases must be a list of Case"),
        ({"name": "q", "cases": [("x",)]}, TypeError, "cases[0] must be a Case"),
        ({"name": "q", "cases": lambda rng: 5}, TypeError, "cases generator must return a list"),
        ({"name": "q", "rtol": -1.0}, ValueError, "rtol must be >= 0"),
        ({"name": "q", "time_limit_s": 0}, ValueError, "time_limit_s must be > 0"),
        ({"name": "q", "exact": 1}, TypeError, "exact must be a bool"),
        ({"name": "q", "compare": 3}, TypeError, "compare must be a callable"),
        ({"name": "q", "reference_fn": None}, TypeError, "reference_fn must be a function"),
    ],
)
def test_bad_checker_arguments_raise(kwargs, error, text):
    args = {"student_fn": quantize_ref, "reference_fn": quantize_ref, "cases": ONE, **kwargs}
    with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")):
        check_function(args.pop("student_fn"), args.pop("reference_fn"), args.pop("cases"), **args)


def test_case_validation():
    with pytest.raises(TypeError, match="args must be a tuple"):
        Case("forgot the comma", np.zeros(3))
    with pytest.raises(TypeError, match="label must be a non-empty str"):
        Case("", ())
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        Case("k", (), {1: 2})
    assert Case("list ok", [1, 2]).args == (1, 2)


def test_random_arrays():
    rng = np.random.default_rng(0)
    x = random_arrays(rng, (3, 7))
    assert x.shape == (3, 7) and x.dtype == np.float32 and x.min() >= -1 and x.max() < 1
    ints = random_arrays(rng, 1000, "int8", low=-2, high=2)
    assert ints.dtype == np.int8 and set(np.unique(ints)) == {-2, -1, 0, 1, 2}
    assert random_arrays(rng, (4,), bool).dtype == np.bool_
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        random_arrays(0, (2,))
    with pytest.raises(ValueError, match="shape\\[1\\] must be an int >= 0"):
        random_arrays(rng, (2, -1))
    with pytest.raises(ValueError, match="low must be < high"):
        random_arrays(rng, (2,), low=1, high=1)
    with pytest.raises(ValueError, match="holds no integer representable as uint8"):
        random_arrays(rng, (2,), "uint8", low=-5, high=-1)
    with pytest.raises(ValueError, match="bool, integer or float"):
        random_arrays(rng, (2,), "complex64")


# --------------------------------------------------------------------------------------------------
# check_value: same rules, never reveals the expected value
# --------------------------------------------------------------------------------------------------


def test_check_value():
    assert check_value(2048, 2048, name="v", exact=True).message == "✅ v: correct"
    r = check_value(1.5, 1.25, name="v")
    assert not r.passed and "too high" in r.message and "1.25" not in r.message
    r = check_value(np.ones(4), np.array([1.0, 1.0, 0.0, 1.0]), name="v")
    assert "1 of 4 elements is off" in r.message and "index 2" in r.message
    r = check_value(2048.0, 2048, name="v", exact=True)
    assert "expected an integer (int)" in r.message
    r = check_value(..., 3, name="v")
    assert not r.attempted and "not attempted" in r.message
    assert "your value is None" in check_value(None, 3, name="v").message
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        check_value(1, 1, name="")


# --------------------------------------------------------------------------------------------------
# Reporting, strict mode, summary
# --------------------------------------------------------------------------------------------------


def test_report_prints_records_and_returns(capsys):
    ok = report(run_quantize(quantize_ref))
    bad = report(run_quantize(lambda x: np.round(x * 4) / 4))
    todo = report(run_quantize(lambda x: (_ for _ in ()).throw(NotImplementedError())))
    out = capsys.readouterr().out
    assert "✅ quantize: passed all 5 cases" in out
    assert "❌ quantize: wrong answer on case 'extreme values (1e30)'" in out
    assert "✏️ quantize: not attempted yet" in out
    assert RESULTS == [ok, bad, todo]
    with pytest.raises(TypeError, match="result must be a CheckResult"):
        report("passed")


def test_strict_mode_raises_for_failed_and_not_attempted(monkeypatch, capsys):
    monkeypatch.setenv("EFFX_CHECK_STRICT", "1")
    assert report(run_quantize(quantize_ref)).passed
    with pytest.raises(CheckerError, match="wrong answer on case 'extreme values") as info:
        report(run_quantize(lambda x: np.round(x * 4) / 4))
    assert isinstance(info.value, AssertionError) and info.value.result.failed_case == "extreme values (1e30)"

    def placeholder(x):
        raise NotImplementedError

    with pytest.raises(CheckerError, match="not attempted"):
        report(run_quantize(placeholder))
    assert "❌ quantize" in capsys.readouterr().out  # printed before raising
    monkeypatch.setenv("EFFX_CHECK_STRICT", "0")
    assert not report(run_quantize(placeholder)).attempted  # any other value: print only


def test_summary_uses_the_latest_result_per_exercise(capsys):
    assert summary() == "no exercises checked yet"
    report(run_quantize(lambda x: x))
    report(check_function(quantize_ref, quantize_ref, ONE, name="other"))
    report(run_quantize(quantize_ref))
    report(check_value(..., 1, name="answer"))
    lines = summary().splitlines()
    assert lines[0] == "3 exercises: 2 passed, 0 failed, 1 not attempted"
    assert lines[1:] == [
        "✅ quantize: passed (5 of 5 cases)",
        "✅ other: passed (1 of 1 cases)",
        "✏️ answer: not attempted",
    ]
    report(check_function(lambda x: x, quantize_ref, ONE, name="other"))
    assert "❌ other: failed on case 1 of 1 ('one input')" in summary()


def test_markdown_and_ipython_display(capsys):
    r = run_quantize(lambda x: np.round(x * 4) / 4)
    md = r._repr_markdown_()
    assert md.startswith("❌ quantize: wrong answer") and "```text\ninput: x = array of shape (2, 3) float32" in md
    assert str(r) == r.message
    r._ipython_display_()  # not reported yet: shown when it is the value of a cell
    assert "wrong answer" in capsys.readouterr().out
    report(r)
    capsys.readouterr()
    r._ipython_display_()  # report() already printed it: not shown twice
    assert capsys.readouterr().out == ""


def test_check_result_validates():
    with pytest.raises(ValueError, match="n_passed must be an int in \\[0, 3\\]"):
        CheckResult("x", False, True, 3, 4, "m", None)
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        CheckResult("", True, True, 1, 1, "m", None)


def test_check_with_hints_names_the_matching_mistake_only():
    from effx_lab.check import Mistake, check_with_hints

    def reference(x):
        return x * 2.0

    def cases(rng):
        return [Case("small", (np.arange(3.0),)), Case("random", (rng.normal(size=4),))]

    mistakes = [Mistake(lambda x: x + 2.0, "you added 2 instead of doubling")]
    added = check_with_hints(lambda x: x + 2.0, reference, cases, mistakes, name="double")
    assert not added.passed and "hint: you added 2 instead of doubling" in added.message
    other = check_with_hints(lambda x: x * 3.0, reference, cases, mistakes, name="double")
    assert not other.passed and "hint:" not in other.message
    right = check_with_hints(lambda x: 2.0 * x, reference, cases, mistakes, name="double")
    assert right.passed
    with pytest.raises(TypeError, match="mistakes"):
        check_with_hints(reference, reference, cases, ["not a Mistake"], name="double")



# --------------------------------------------------------------------------------------
# The public extension points used by the chapters' checker modules
# --------------------------------------------------------------------------------------
def test_mistake_validates():
    from effx_lab.check import Mistake

    with pytest.raises(TypeError, match="Mistake wrong must be a function"):
        Mistake("x + 2", "a hint")
    with pytest.raises(TypeError, match="Mistake hint must be a non-empty str"):
        Mistake(lambda x: x, "  ")


def test_reference_recorder_gives_the_arguments_of_the_case_being_compared():
    from effx_lab.check import ReferenceRecorder

    def scale(x, factor=2.0):
        return x * factor

    rec = ReferenceRecorder(scale)
    assert rec.reference.__name__ == "scale" and rec.arguments(None) is None
    x = np.arange(3.0)
    out = rec.reference(x, factor=3.0)
    args, kwargs = rec.arguments(out)
    assert args[0] is x and kwargs == {"factor": 3.0}
    assert rec.arguments(out.copy()) is None  # the very object, not an equal one

    seen = []

    def compare(got, expected):
        seen.append(rec.arguments(expected))
        return None

    cases = [Case("a", (x,), {"factor": 1.0})]
    res = check_function(
        lambda x, factor=2.0: x, rec.reference, cases, name="scale", compare=compare
    )
    assert res.passed and seen[0][1] == {"factor": 1.0}
    with pytest.raises(TypeError, match="reference must be a function"):
        ReferenceRecorder(42)


def test_diagnosis_close_handles_tuples_none_dicts_and_complex():
    from effx_lab.check import Diagnosis

    diag = Diagnosis(lambda: None, [], rtol=1e-6, atol=0.0)
    assert diag.close((np.arange(3.0), None), [np.arange(3.0), None])
    assert not diag.close((np.arange(3.0), None), (np.arange(3.0), np.zeros(3)))
    assert not diag.close(None, np.nan) and diag.close(None, None)
    assert diag.close({"a": 1.0, "b": (2, 3)}, {"a": 1.0 + 1e-9, "b": (2, 3)})
    assert not diag.close({"a": 1.0}, {"b": 1.0})
    assert not diag.close(np.array([1.0 + 1.0j]), np.array([1.0]))  # not by real parts
    assert diag.close(torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]))
    assert not diag.close(np.ones(3), np.ones(4)) and not diag.close("text", np.ones(2))
    assert diag.close(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))


def test_diagnosis_prepare_and_problem_are_extension_points():
    from effx_lab.check import Diagnosis, Mistake

    def reference(x):
        return [int(v) for v in np.argsort(x)]

    def descending(x):
        return [int(v) for v in np.argsort(-x)]

    mistakes = [Mistake(descending, "sort ascending, not descending")]

    def as_list(got, expected):
        return got.tolist() if isinstance(got, np.ndarray) else got

    cases = [Case("three", (np.array([3.0, 1.0, 2.0]),))]

    def run(student, diag):
        return check_function(
            student, diag.reference, cases, name="order", compare=diag.compare
        )

    with_prepare = Diagnosis(reference, mistakes, rtol=0.0, atol=0.0, prepare=as_list)
    res = run(lambda x: np.argsort(x), with_prepare)
    assert res.passed, res.message  # an integer array read as the expected list
    res = run(lambda x: np.argsort(-x), with_prepare)
    assert not res.passed and "hint: sort ascending, not descending" in res.message
    without = Diagnosis(reference, mistakes, rtol=0.0, atol=0.0)
    res = run(lambda x: np.argsort(x), without)
    assert not res.passed and "expected a list" in res.message

    class AnyPermutation(Diagnosis):
        def problem(self, got, expected):
            return None if sorted(got) == sorted(expected) else "not a permutation"

    lenient = AnyPermutation(reference, mistakes, prepare=as_list)
    assert run(lambda x: [2, 0, 1], lenient).passed
    res = run(lambda x: [0, 0, 1], lenient)
    assert not res.passed and "not a permutation" in res.message


def test_diagnosis_validates():
    from effx_lab.check import Diagnosis, Mistake

    with pytest.raises(TypeError, match="mistakes must be a list of Mistake"):
        Diagnosis(abs, (Mistake(abs, "h"),))
    with pytest.raises(ValueError, match="rtol must be >= 0.0"):
        Diagnosis(abs, [], rtol=-1.0)
    with pytest.raises(TypeError, match="exact must be a bool"):
        Diagnosis(abs, [], exact=1)
    with pytest.raises(TypeError, match="prepare must be a callable"):
        Diagnosis(abs, [], prepare="squeeze")
    with pytest.raises(TypeError, match="reference must be a function"):
        Diagnosis(None, [])


def test_check_with_hints_prepare_and_time_limit(capsys):
    from effx_lab.check import Mistake, check_with_hints

    def reference(x):
        return x.sum(axis=1)

    def keep_dims(x):  # the same numbers, shape [M, 1]
        return x.sum(axis=1, keepdims=True)

    def squeeze(got, expected):
        return got.reshape(-1) if getattr(got, "shape", None) == (2, 1) else got

    cases = [Case("rows", (np.arange(6.0).reshape(2, 3),))]
    assert check_with_hints(
        keep_dims, reference, cases, [], name="rowsum", prepare=squeeze
    ).passed
    assert not check_with_hints(keep_dims, reference, cases, [], name="rowsum").passed

    def endless(x):
        while True:
            pass

    mistakes = [Mistake(lambda x: x.sum(axis=0), "sum over the rows")]
    res = check_with_hints(
        endless, reference, cases, mistakes, name="rowsum", time_limit_s=0.1
    )
    assert not res.passed and "took longer than 0.1 s" in res.message
    capsys.readouterr()


def test_time_limit_caps_every_check_inside_the_block():
    from effx_lab.check import time_limit

    def endless(x):
        while True:
            pass

    def identity(x):
        return x

    cases = [Case("one", (1.0,))]
    start = time.perf_counter()
    with time_limit(0.2) as cap:
        assert cap == 0.2
        with time_limit(5.0) as inner:  # nested: the smallest cap stays
            assert inner == 0.2
            res = check_function(endless, identity, cases, name="f")
        # a limit already below the cap stays as it is
        res2 = check_function(endless, identity, cases, name="f", time_limit_s=0.1)
    assert time.perf_counter() - start < 5.0
    assert "took longer than 0.2 s" in res.message
    assert "took longer than 0.1 s" in res2.message
    # the cap is gone after the block
    assert check_function(identity, identity, cases, name="f").passed
    bad_seconds = [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError)]
    for bad, error in [*bad_seconds, ("1", TypeError)]:
        with pytest.raises(error, match="seconds must"):
            with time_limit(bad):
                pass


def test_named_renames_a_reference():
    from effx_lab.check import named

    @named("glu")
    def _glu_reference(x, params):
        return x

    assert _glu_reference.__name__ == _glu_reference.__qualname__ == "glu"
    res = check_function(lambda: 0, _glu_reference, [Case("a", (1, 2))], name="glu")
    assert "it should accept the same parameters as glu(x, params)" in res.message
    with pytest.raises(TypeError, match="name must be the exercise's function name"):
        named("not a name")
    with pytest.raises(TypeError, match="must decorate a function"):
        named("glu")(42)


def test_checker_registers_public_checkers(monkeypatch):
    from effx_lab import check as C

    monkeypatch.setattr(C, "CHECKERS", {})

    def ref(x):
        return x

    @C.checker(reference=ref)
    def check_identity(student_fn):
        return check_function(student_fn, ref, [Case("a", (1,))], name="identity")

    entry = C.CHECKERS[f"{__name__}.{check_identity.__qualname__}"]
    assert entry.function is check_identity and entry.reference is ref
    assert check_identity(lambda x: x).passed  # returned unchanged
    with pytest.raises(TypeError, match="named check_<exercise>"):
        C.checker(reference=ref)(ref)
    with pytest.raises(TypeError, match="reference must be the function"):
        C.checker(reference="ref")


def test_as_numpy_and_is_tensor():
    from effx_lab.check import as_numpy, is_tensor

    t = torch.arange(3, dtype=torch.bfloat16)
    assert is_tensor(t) and not is_tensor(np.arange(3)) and not is_tensor([1, 2])
    arr = as_numpy(t)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    assert arr.tolist() == [0.0, 1.0, 2.0] and as_numpy([1, 2]).tolist() == [1, 2]
