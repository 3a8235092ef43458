"""The chapter 1 checkers accept the reference and reject the classic wrong answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from effx_lab.costs import exercises as E
from effx_lab.costs import flops as F
from effx_lab.costs import memory as M
from effx_lab.costs import reference as R


def _fails(result, *facts: str) -> None:
    assert result.passed is False, result.message
    assert result.attempted is True
    for fact in facts:
        assert fact in result.message, (fact, result.message)


# ---------------------------------------------------------------------------------- references pass
@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_kv_cache_bytes, M.kv_cache_bytes),
        (E.check_max_batch_size, M.max_batch_size),
        (E.check_matmul_flops_bytes, F.matmul_flops_bytes),
        (E.check_roofline_time, F.roofline_time),
        (E.check_pack, R.pack),
        (E.check_unpack, R.unpack),
        (E.check_cu_seqlens, R.cu_seqlens),
    ],
)
def test_reference_passes(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 7
    assert "passed all" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- plain student versions pass
def kv_plain(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
    return math.ceil(2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem)


def max_batch_plain(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
    weights = math.ceil(shape.params() * weight_bytes_per_param)
    per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * kv_bytes_per_elem
    if weights > memory_bytes:
        return 0
    return int((memory_bytes - weights) // per_seq)


def test_straightforward_student_solutions_pass():
    assert E.check_kv_cache_bytes(kv_plain).passed
    assert E.check_max_batch_size(max_batch_plain).passed
    assert E.check_roofline_time(lambda f, b, pf, pb: max(f / pf, b / pb)).passed
    assert E.check_matmul_flops_bytes(
        lambda m, n, k, b: (2 * m * n * k, math.ceil((m * k + k * n + m * n) * b))
    ).passed

    def pack_mask(x, lengths):
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        return x[mask], np.concatenate([[0], np.cumsum(lengths)])

    assert E.check_pack(pack_mask).passed


# ---------------------------------------------------------------------------------- 01.1 wrong answers
def test_kv_rejects_missing_factor_two():
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        return math.ceil(n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem)

    _fails(E.check_kv_cache_bytes(wrong), "kv_cache_bytes", "expected 4")


def test_kv_rejects_float_bytes():
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        return 2.0 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem

    _fails(E.check_kv_cache_bytes(wrong), "a float", "expected an integer")


def test_kv_rejects_int32_overflow():
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        elems = np.int32(2)
        with np.errstate(over="ignore"):
            for v in (n_layers, n_kv_heads, head_dim, seq_len, batch_size):
                elems = elems * np.int32(v)  # wraps around past 2**31 - 1
        return math.ceil(int(elems) * bytes_per_elem)

    # llama2-70b at batch 8 already holds 5.4e9 elements > 2**31 - 1
    _fails(E.check_kv_cache_bytes(wrong), "GQA llama2-70b", "expected 10737418240")


def test_kv_rejects_round_down_of_half_byte():
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        return int(2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem)

    _fails(E.check_kv_cache_bytes(wrong), "round up", "expected 5")


def test_kv_rejects_round_half_up_instead_of_up():
    # 2 * 3 * 0.375 = 2.25 bytes: a whole third byte is needed; int(x + 0.5) agrees with the ceiling on every
    # x.5 and x.75 (the 0.25- and 0.5-byte cases) but gives 2 here
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        return int(2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem + 0.5)

    _fails(E.check_kv_cache_bytes(wrong), "2.25 bytes: round up", "expected 3")


@pytest.mark.parametrize(
    "rounding, case",
    [(lambda v: int(v + 0.5), "1.25 bytes round up"), (round, "2.5 bytes round up")],
    ids=["half_up", "round_half_even"],
)
def test_matmul_rejects_round_to_nearest_instead_of_up(rounding, case):
    def wrong(m, n, k, bytes_per_elem):
        return 2 * m * n * k, rounding((m * k + k * n + m * n) * bytes_per_elem)

    _fails(E.check_matmul_flops_bytes(wrong), case, "output[1]")


@pytest.mark.parametrize("rounding", [int, round], ids=["floor", "round_half_even"])
def test_max_batch_rejects_rounding_fractional_weights_down(rounding):
    # 1001 int4 weights take 500.5 bytes, stored in 501: one byte less frees room for a third sequence
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = rounding(shape.params() * weight_bytes_per_param)
        per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * kv_bytes_per_elem
        return max(0, int((memory_bytes - weights) // per_seq))

    _fails(E.check_max_batch_size(wrong), "odd parameter count", "expected 2")


def test_max_batch_rejects_n_heads_instead_of_kv_heads():
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = math.ceil(shape.params() * weight_bytes_per_param)
        per_seq = 2 * shape.n_layers * shape.n_heads * shape.head_dim * seq_len * kv_bytes_per_elem
        return max(0, int((memory_bytes - weights) // per_seq))

    _fails(E.check_max_batch_size(wrong), "GQA", "max_batch_size")


@pytest.mark.parametrize("delta", [1, -1])
def test_max_batch_rejects_off_by_one(delta):
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        right = M.max_batch_size(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem)
        return max(0, right + delta)

    _fails(E.check_max_batch_size(wrong), "(off by 1)")


def test_max_batch_rejects_strict_inequality_at_exact_fit():
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = math.ceil(shape.params() * weight_bytes_per_param)
        per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * kv_bytes_per_elem
        b = 0
        while weights + (b + 1) * per_seq < memory_bytes:  # should be <=
            b += 1
        return b

    _fails(E.check_max_batch_size(wrong), "exact fit", "(off by 1)")


def test_max_batch_rejects_round_instead_of_floor():
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = math.ceil(shape.params() * weight_bytes_per_param)
        per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * kv_bytes_per_elem
        return max(0, round((memory_bytes - weights) / per_seq))

    _fails(E.check_max_batch_size(wrong), "max_batch_size", "expected")


def test_max_batch_rejects_negative_when_weights_do_not_fit():
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = math.ceil(shape.params() * weight_bytes_per_param)
        per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * kv_bytes_per_elem
        return int((memory_bytes - weights) // per_seq)

    _fails(E.check_max_batch_size(wrong), "weights do not fit", "expected 0")


def test_max_batch_rejects_float_result():
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = shape.params() * weight_bytes_per_param
        per_seq = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * kv_bytes_per_elem
        return max(0.0, (memory_bytes - weights) // per_seq)

    _fails(E.check_max_batch_size(wrong), "a float", "expected an integer")


# ---------------------------------------------------------------------------------- 01.2 wrong answers
def test_matmul_rejects_missing_output_write():
    def wrong(m, n, k, bytes_per_elem):
        return 2 * m * n * k, math.ceil((m * k + k * n) * bytes_per_elem)

    _fails(E.check_matmul_flops_bytes(wrong), "output[1]")


def test_matmul_rejects_flops_without_factor_two():
    def wrong(m, n, k, bytes_per_elem):
        return m * n * k, math.ceil((m * k + k * n + m * n) * bytes_per_elem)

    _fails(E.check_matmul_flops_bytes(wrong), "output[0]")


def test_matmul_rejects_list_and_float():
    _fails(
        E.check_matmul_flops_bytes(lambda m, n, k, b: [2 * m * n * k, math.ceil((m * k + k * n + m * n) * b)]),
        "a list",
        "expected a tuple",
    )
    _fails(
        E.check_matmul_flops_bytes(lambda m, n, k, b: (2 * m * n * k, (m * k + k * n + m * n) * b)),
        "output[1]",
        "a float",
    )


def test_roofline_rejects_sum_instead_of_max():
    _fails(E.check_roofline_time(lambda f, b, pf, pb: f / pf + b / pb), "roofline_time", "expected")


def test_roofline_rejects_min_instead_of_max():
    _fails(E.check_roofline_time(lambda f, b, pf, pb: min(f / pf, b / pb)), "roofline_time", "compute-bound")


# ---------------------------------------------------------------------------------- 01.3 wrong answers
def test_pack_rejects_ignoring_lengths():
    def wrong(x, lengths):
        return x.reshape((-1,) + x.shape[2:]), np.arange(x.shape[0] + 1) * x.shape[1]

    _fails(E.check_pack(wrong), "shape", "odd sizes")


def test_pack_rejects_cu_without_leading_zero():
    def wrong(x, lengths):
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        return x[mask], np.cumsum(lengths)

    _fails(E.check_pack(wrong), "output[1]", "shape")


def test_pack_rejects_off_by_one_cu():
    def wrong(x, lengths):
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        cu = np.concatenate([[0], np.cumsum(lengths)])
        cu[1:] += 1
        return x[mask], cu

    _fails(E.check_pack(wrong), "output[1]", "differ")


def test_pack_rejects_modifying_input():
    def wrong(x, lengths):
        packed, cu = R.pack(x, lengths)
        x[...] = 0
        return packed, cu

    _fails(E.check_pack(wrong), "in place")


def test_unpack_rejects_wrong_pad_value():
    def wrong(packed, cu, max_len, pad_value=0):
        return R.unpack(packed, cu, max_len, 0)

    _fails(E.check_unpack(wrong), "pad_value=-1", "differ")


def test_unpack_rejects_off_by_one_offsets():
    def wrong(packed, cu, max_len, pad_value=0):
        out = np.full((len(cu) - 1, max_len) + packed.shape[1:], pad_value, dtype=packed.dtype)
        for b in range(len(cu) - 1):
            n = cu[b + 1] - cu[b]
            start = min(cu[b] + 1, len(packed) - n) if n else 0
            out[b, :n] = packed[start:start + n]
        return out

    _fails(E.check_unpack(wrong), "unpack", "differ")


def test_cu_seqlens_rejects_off_by_one():
    _fails(E.check_cu_seqlens(lambda lengths: np.concatenate([[0], np.cumsum(lengths) - 1])), "differ")
    _fails(E.check_cu_seqlens(lambda lengths: np.cumsum(lengths)), "shape")


# ---------------------------------------------------------------------------------- never crash
def test_checkers_report_not_attempted_and_non_functions():
    def todo(*args, **kwargs):
        raise NotImplementedError

    res = E.check_kv_cache_bytes(todo)
    assert res.passed is False and res.attempted is False
    res = E.check_pack(42)
    assert res.passed is False and "expected a function" in res.message


# ------------------------------------------------------------------------------- hints
# Each classic wrong answer gets the hint that names its mistake (and no other's).
def _kv(factor=2, scale=1, rounding=math.ceil, batch=True, layers=True):
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        n = factor * (n_layers if layers else 1) * n_kv_heads * head_dim * seq_len
        n *= batch_size if batch else 1
        return int(rounding(n * bytes_per_elem * scale))

    return wrong


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_kv(factor=1), "a key AND a value"),
        (_kv(scale=8), "counts bits, not bytes"),
        (_kv(scale=1 / 8), "do not divide by 8"),
        (_kv(rounding=int), "round up: a partly used byte"),
        (_kv(rounding=lambda v: int(v + 0.5)), "round up, not to the nearest"),
        (_kv(batch=False), "multiply by batch_size"),
        (_kv(layers=False), "multiply by n_layers"),
    ],
    ids=["no_factor_2", "bits", "divided_by_8", "floor", "half_up", "no_batch",
         "no_layers"],
)
def test_kv_hints_name_the_mistake(wrong, hint):
    _fails(E.check_kv_cache_bytes(wrong), "hint:", hint)


def _batch(heads="n_kv_heads", factor=2, weights_rounding=math.ceil, fit="floor",
           clamp=True):
    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = weights_rounding(shape.params() * weight_bytes_per_param)
        per_seq = factor * shape.n_layers * getattr(shape, heads) * shape.head_dim
        per_seq *= seq_len * kv_bytes_per_elem
        free = memory_bytes - weights
        if clamp and free < 0:
            return 0
        if fit == "round":
            return round(free / per_seq)
        if fit == "strict":  # while weights + (b + 1) * per_seq < memory_bytes
            b = 0
            while weights + (b + 1) * per_seq < memory_bytes:
                b += 1
            return b
        return int(free // per_seq)

    return wrong


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_batch(heads="n_heads"), "not shape.n_heads"),
        (_batch(factor=1), "the factor 2 is missing"),
        (_batch(clamp=False), "never a negative number"),
        (_batch(fit="strict"), "(<=, not <)"),
        (_batch(fit="round"), "take the floor"),
        (_batch(weights_rounding=int), "round the weights' bytes up"),
    ],
    ids=["n_heads", "no_factor_2", "negative", "strict", "round", "weights_floor"],
)
def test_max_batch_hints_name_the_mistake(wrong, hint):
    _fails(E.check_max_batch_size(wrong), "hint:", hint)


def _matmul(factor=2, write_c=True, scale=1, rounding=math.ceil, swap=False):
    def wrong(m, n, k, bytes_per_elem):
        elements = m * k + k * n + (m * n if write_c else 0)
        flops, n_bytes = factor * m * n * k, rounding(elements * bytes_per_elem * scale)
        return (n_bytes, flops) if swap else (flops, n_bytes)

    return wrong


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_matmul(factor=1), "2 FLOPs"),
        (_matmul(write_c=False), "writes C"),
        (_matmul(scale=8), "bits"),
        (_matmul(swap=True), "in that order"),
        (_matmul(rounding=int), "round the bytes up"),
    ],
    ids=["no_factor_2", "no_c", "bits", "swapped", "floor"],
)
def test_matmul_hints_name_the_mistake(wrong, hint):
    _fails(E.check_matmul_flops_bytes(wrong), "hint:", hint)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda f, b, pf, pb: f / pf + b / pb, "not their sum"),
        (lambda f, b, pf, pb: min(f / pf, b / pb), "not the min"),
        (lambda f, b, pf, pb: f / pf, "nor one of the two terms alone"),
        (lambda f, b, pf, pb: b / pb, "nor one of the two terms alone"),
    ],
    ids=["sum", "min", "compute_only", "memory_only"],
)
def test_roofline_hints_name_the_mistake(wrong, hint):
    _fails(E.check_roofline_time(wrong), "hint:", hint)


def _cumsum(lengths):
    return np.cumsum(np.asarray(lengths, dtype=np.int64))


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_cumsum, "start with 0"),
        (lambda ls: np.concatenate([[0], _cumsum(ls)[:-1]]), "end with the total"),
        (lambda ls: np.concatenate([[0], _cumsum(ls) - 1]), "off by one: cu[b + 1] is"),
        (lambda ls: np.concatenate([[0], _cumsum(ls) + 1]), "with nothing added"),
    ],
    ids=["no_zero", "no_total", "minus_one", "plus_one"],
)
def test_cu_seqlens_hints_name_the_mistake(wrong, hint):
    _fails(E.check_cu_seqlens(wrong), "hint:", hint)


def _mask(x, lengths, inclusive=False):
    t = np.arange(x.shape[1])[None, :]
    lengths = np.asarray(lengths)[:, None]
    return t <= lengths if inclusive else t < lengths


def _pack_no_zero(x, lengths):
    return x[_mask(x, lengths)], _cumsum(lengths)


def _pack_inclusive(x, lengths):  # keeps one padding token per sequence
    return x[_mask(x, lengths, True)], R.cu_seqlens(lengths)


def _pack_by_position(x, lengths):  # position 0 of every sequence, then position 1...
    return np.swapaxes(x, 0, 1)[_mask(x, lengths).T], R.cu_seqlens(lengths)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (_pack_no_zero, "cu must start with 0"),
        (_pack_inclusive, "(not <=)"),
        (_pack_by_position, "keep each sequence's tokens together"),
    ],
    ids=["cu_no_zero", "inclusive_mask", "by_position"],
)
def test_pack_hints_name_the_mistake(wrong, hint):
    _fails(E.check_pack(wrong), "hint:", hint)


def test_unpack_hints_name_the_mistake():
    def zeros(packed, cu, max_len, pad_value=0):
        return R.unpack(packed, cu, max_len, 0)

    def shifted(packed, cu, max_len, pad_value=0):
        shape = (len(cu) - 1, max_len) + packed.shape[1:]
        out = np.full(shape, pad_value, dtype=packed.dtype)
        for b in range(len(cu) - 1):
            rows = packed[cu[b] + 1 : cu[b + 1] + 1]
            out[b, : len(rows)] = rows
        return out

    _fails(E.check_unpack(zeros), "hint:", "not with zeros")
    _fails(E.check_unpack(shifted), "hint:", "rows cu[b] to cu[b + 1] - 1")


def test_a_wrong_answer_that_is_no_classic_mistake_gets_no_hint():
    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        return 3 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * 2

    result = E.check_kv_cache_bytes(wrong)
    assert result.passed is False and "hint:" not in result.message
