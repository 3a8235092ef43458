"""Tests of effx_lab.quant (chapter 2, section 02.1): uniform quantization, NumPy reference vs PyTorch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from effx_lab.quant import reference as R
from effx_lab.quant import torch_ops as T

BITS = (2, 3, 4, 8)
DTYPES = (np.float32, np.float64)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _schemes(shape: tuple[int, ...]) -> list[dict]:
    """Every granularity, axis 0 and -1, and the group sizes that divide the axis (1, a middle one, the length)."""
    out = [{"granularity": "tensor"}]
    for axis in (0, -1):
        out.append({"granularity": "channel", "axis": axis})
        n = shape[axis]
        for g in sorted({1, *[d for d in (2, 4, 8) if n % d == 0 and d < n], n}):
            out.append({"granularity": "group", "axis": axis, "group_size": g})
    return out


SHAPES = [(24,), (6, 16), (4, 3, 8)]
CASES = [(shape, scheme) for shape in SHAPES for scheme in _schemes(shape)]


def _ids(case):
    shape, s = case
    return f"{shape}-{s['granularity']}-ax{s.get('axis', '')}-g{s.get('group_size', '')}"


# ============================================================================ agreement
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "affine"])
def test_reference_and_torch_agree(case, symmetric):
    shape, scheme = case
    rng = np.random.default_rng(abs(hash((shape, symmetric))) % 2**32)
    for dtype in DTYPES:
        # mixed signs, a shift (affine ranges not centred on 0) and a few exact zeros
        x = (rng.normal(size=shape) * 2.0 + 0.5).astype(dtype)
        x.reshape(-1)[::7] = 0.0
        for bits in BITS:
            qp = R.compute_qparams(x, bits, symmetric, **scheme)
            qt = T.compute_qparams(_t(x), bits, symmetric, **scheme)
            assert qp.scale.dtype == dtype and qt.scale.dtype == _t(x).dtype
            assert (
                qp.scale.shape
                == tuple(qt.scale.shape)
                == R.qparams_shape(shape, qp.granularity, qp.axis, qp.group_size)
            )
            np.testing.assert_array_equal(qp.scale, qt.scale.numpy())
            np.testing.assert_array_equal(qp.zero_point, qt.zero_point.numpy())
            q, q_t = R.quantize(x, qp), T.quantize(_t(x), qt)
            assert q.dtype == (np.int8 if symmetric else np.uint8) and q.shape == shape
            assert q_t.dtype == (torch.int8 if symmetric else torch.uint8)
            # same IEEE operations in the same order: the integers agree exactly (ties included)
            np.testing.assert_array_equal(q, q_t.numpy())
            lo, hi = R.qrange(bits, symmetric)
            assert q.min() >= lo and q.max() <= hi
            deq, deq_t = R.dequantize(q, qp), T.dequantize(q_t, qt)
            assert deq.dtype == dtype and deq_t.dtype == _t(x).dtype
            np.testing.assert_allclose(deq, deq_t.numpy(), rtol=1e-6, atol=0)
            fq, fq_t = (
                R.fake_quantize(x, bits, symmetric, **scheme),
                T.fake_quantize(_t(x), bits, symmetric, **scheme),
            )
            assert fq.dtype == dtype and fq_t.dtype == _t(x).dtype
            np.testing.assert_allclose(fq, fq_t.numpy(), rtol=1e-6, atol=0)
            e, e_t = R.quant_error(x, fq), T.quant_error(_t(x), fq_t)
            assert set(e) == {"mse", "max_abs", "sqnr_db", "rel_fro"}
            assert all(type(v) is float for v in e.values()) and all(type(v) is float for v in e_t.values())
            for k in e:
                assert e[k] == pytest.approx(e_t[k], rel=1e-6)
            # expand_qparams: per-element parameters, the same in both backends
            s, z = R.expand_qparams(qp, shape)
            s_t, z_t = T.expand_qparams(qt, shape)
            np.testing.assert_array_equal(np.broadcast_to(s, shape), np.broadcast_to(s_t.numpy(), shape))
            np.testing.assert_array_equal(np.broadcast_to(z, shape), np.broadcast_to(z_t.numpy(), shape))


def test_qrange():
    assert R.qrange(8, True) == (-127, 127) and R.qrange(8, False) == (0, 255)
    assert R.qrange(4, True) == (-7, 7) and R.qrange(4, False) == (0, 15)
    assert R.qrange(2, True) == (-1, 1) and R.qrange(2, False) == (0, 3)
    assert T.qrange is R.qrange and T.QParams is R.QParams


def test_round_half_to_even_and_saturation():
    # max|x| = 127 -> scale exactly 1 at 8 bits: x / scale lands exactly on ties
    x = np.array([-127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.0])
    qp = R.compute_qparams(x)
    assert qp.scale.item() == 1.0
    want = [-127, 0, 2, 2, 0, -2, 126, 127]
    np.testing.assert_array_equal(R.quantize(x, qp), want)
    np.testing.assert_array_equal(T.quantize(_t(x), T.compute_qparams(_t(x))).numpy(), want)
    # values beyond the calibrated range saturate at qmin/qmax
    y = np.array([-1000.0, 0.0, 1000.0, 3.0, 2.0, 1.0, 4.0, 5.0])
    np.testing.assert_array_equal(R.quantize(y, qp), [-127, 0, 127, 3, 2, 1, 4, 5])


def test_affine_parameters_by_hand():
    # range [-1, 3] -> scale 4/15 at 4 bits, zero point round(0 + 1 / (4/15)) = round(3.75) = 4
    x = np.array([-1.0, 0.0, 1.0, 3.0])
    qp = R.compute_qparams(x, bits=4, symmetric=False)
    assert qp.scale.item() == pytest.approx(4 / 15) and qp.zero_point.item() == 4
    np.testing.assert_array_equal(R.quantize(x, qp), [0, 4, 8, 15])  # -1/(4/15) = -3.75 -> -4, +4 -> 0
    # an all-positive tensor: the range is widened to contain 0, so the zero point is qmin
    qp2 = R.compute_qparams(np.array([2.0, 4.0]), bits=8, symmetric=False)
    assert qp2.zero_point.item() == 0 and qp2.scale.item() == pytest.approx(4 / 255)


# ============================================================================ properties
def test_error_at_most_half_a_step_symmetric():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 48))
    for bits in BITS:
        for scheme in (
            {},
            {"granularity": "channel", "axis": 0},
            {"granularity": "group", "group_size": 8},
        ):
            qp = R.compute_qparams(x, bits, True, **scheme)
            err = np.abs(x - R.dequantize(R.quantize(x, qp), qp))
            step, _ = R.expand_qparams(qp, x.shape)
            assert np.all(err <= step / 2 * (1 + 1e-12)), (bits, scheme)


def test_zero_is_exactly_representable():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.3, 5.0, size=(8, 16))  # affine on all-positive data: 0 is outside the data range
    x[::2, ::3] = 0.0
    x[1] -= 7.0  # one row of negatives, so per-channel zero points differ
    for mod, arr in ((R, x), (T, _t(x))):
        for symmetric in (True, False):
            for bits in BITS:
                for scheme in (
                    {},
                    {"granularity": "channel", "axis": 0},
                    {"granularity": "group", "group_size": 4},
                ):
                    fq = mod.fake_quantize(arr, bits, symmetric, **scheme)
                    fq = fq.numpy() if isinstance(fq, torch.Tensor) else fq
                    assert np.all(fq[x == 0] == 0.0), (
                        mod.__name__,
                        symmetric,
                        bits,
                        scheme,
                    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_is_idempotent(symmetric):
    rng = np.random.default_rng(3)
    x = rng.standard_t(4, size=(12, 32)) + (0.0 if symmetric else 1.0)
    for bits in BITS:
        for scheme in (
            {},
            {"granularity": "channel", "axis": 0},
            {"granularity": "group", "axis": -1, "group_size": 8},
        ):
            once = R.fake_quantize(x, bits, symmetric, **scheme)
            twice = R.fake_quantize(once, bits, symmetric, **scheme)
            np.testing.assert_allclose(twice, once, rtol=0, atol=1e-12 * np.abs(x).max())
            once_t = T.fake_quantize(_t(x), bits, symmetric, **scheme)
            np.testing.assert_allclose(
                T.fake_quantize(once_t, bits, symmetric, **scheme),
                once_t,
                rtol=0,
                atol=1e-12,
            )


def _one_loud_row() -> np.ndarray:
    """A [16, 64] matrix of N(0, 1) rows, except row 5 which is 100 times larger (an outlier channel)."""
    w = np.random.default_rng(4).normal(size=(16, 64))
    w[5] *= 100.0
    return w


def test_per_channel_beats_per_tensor_on_an_outlier_row():
    w = _one_loud_row()
    quiet = np.arange(16) != 5
    for symmetric in (True, False):
        for bits in (4, 8):
            tensor = R.fake_quantize(w, bits, symmetric)
            channel = R.fake_quantize(w, bits, symmetric, granularity="channel", axis=0)
            assert R.quant_error(w, channel)["mse"] <= R.quant_error(w, tensor)["mse"]
            # the quiet rows no longer share the outlier's step: their error drops more than 20-fold
            assert R.quant_error(w[quiet], channel[quiet])["mse"] < 0.05 * R.quant_error(w[quiet], tensor[quiet])["mse"]


def test_group_error_shrinks_with_group_size():
    # heavy-tailed rows: a smaller group is less likely to contain a large value, so its step is smaller
    w = _one_loud_row() * np.random.default_rng(5).standard_t(3, size=(16, 64))
    for symmetric in (True, False):
        mses = [
            R.quant_error(
                w,
                R.fake_quantize(w, 4, symmetric, granularity="group", axis=-1, group_size=g),
            )["mse"]
            for g in (64, 32, 16, 8, 4)
        ]
        assert all(a > b for a, b in itertools.pairwise(mses)), mses
        # one group spanning the whole row is per-channel quantization of the rows
        np.testing.assert_array_equal(
            R.fake_quantize(w, 4, symmetric, granularity="group", axis=-1, group_size=64),
            R.fake_quantize(w, 4, symmetric, granularity="channel", axis=0),
        )


def test_more_bits_less_error():
    x = np.random.default_rng(6).normal(size=(64, 64))
    for symmetric in (True, False):
        mses = [R.quant_error(x, R.fake_quantize(x, b, symmetric))["mse"] for b in BITS]
        assert mses[0] > mses[1] > mses[2] > mses[3], mses


def test_sqnr_about_six_db_per_bit_on_uniform_data():
    # uniform on [-1, 1], step 1/qmax: noise step^2 / 12, signal 1/3 -> SQNR = 20 log10(2 qmax) ~ 6.02 b dB
    x = np.random.default_rng(7).uniform(-1.0, 1.0, size=200_000)
    sqnr = {b: R.quant_error(x, R.fake_quantize(x, b))["sqnr_db"] for b in range(4, 9)}
    slopes = [sqnr[b + 1] - sqnr[b] for b in range(4, 8)]
    assert all(5.5 < s < 7.0 for s in slopes), slopes
    assert abs(sqnr[8] - 6.02 * 8) < 1.0 and abs(sqnr[8] - 20 * math.log10(254)) < 0.2, sqnr


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_input(symmetric):
    x = np.zeros((4, 8), dtype=np.float32)
    for mod, arr in ((R, x), (T, _t(x))):
        for scheme in (
            {},
            {"granularity": "channel", "axis": 0},
            {"granularity": "group", "group_size": 4},
        ):
            qp = mod.compute_qparams(arr, 4, symmetric, **scheme)
            assert bool((qp.scale == 1).all())  # documented: zero range -> scale 1
            fq = mod.fake_quantize(arr, 4, symmetric, **scheme)
            assert fq.dtype == arr.dtype and not bool(fq.any())
            err = mod.quant_error(arr, fq)
            assert err == {
                "mse": 0.0,
                "max_abs": 0.0,
                "sqnr_db": math.inf,
                "rel_fro": 0.0,
            }
    # one all-zero channel among others: its scale is 1, the others are untouched
    y = np.ones((3, 4))
    y[1] = 0.0
    qp = R.compute_qparams(y, granularity="channel", axis=0)
    np.testing.assert_allclose(qp.scale.ravel(), [1 / 127, 1.0, 1 / 127])
    np.testing.assert_array_equal(R.fake_quantize(y, granularity="channel", axis=0), y)


def test_quant_error_values():
    x = np.array([3.0, 4.0])
    e = R.quant_error(x, np.array([3.0, 3.0]))
    assert e["mse"] == 0.5 and e["max_abs"] == 1.0
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(25.0)) and e["rel_fro"] == pytest.approx(0.2)
    assert R.quant_error(x, x)["sqnr_db"] == math.inf
    z = R.quant_error(np.zeros(2), np.array([0.0, 1.0]))
    assert z["sqnr_db"] == -math.inf and z["rel_fro"] == math.inf
    assert T.quant_error(_t(x), _t(np.array([3.0, 3.0]))) == pytest.approx(e)


def test_dtype_is_preserved_in_torch():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(8))
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        xd = x.to(dt)
        fq = T.fake_quantize(xd, 8, False, granularity="group", group_size=4)
        assert fq.dtype == dt and fq.shape == x.shape
        assert T.compute_qparams(xd).scale.dtype == (torch.float64 if dt == torch.float64 else torch.float32)
        qp = T.compute_qparams(xd)
        assert T.dequantize(T.quantize(xd, qp), qp, dtype=torch.float16).dtype == torch.float16
    assert R.fake_quantize(x.numpy().astype(np.float16)).dtype == np.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():  # pragma: no cover - run on GPU machines
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(9))
    for scheme in (
        {},
        {"granularity": "channel", "axis": 0},
        {"granularity": "group", "group_size": 16},
    ):
        for symmetric in (True, False):
            qc, qg = (
                T.compute_qparams(x, 4, symmetric, **scheme),
                T.compute_qparams(x.cuda(), 4, symmetric, **scheme),
            )
            assert qg.scale.is_cuda
            torch.testing.assert_close(T.quantize(x.cuda(), qg).cpu(), T.quantize(x, qc), rtol=0, atol=0)


# ============================================================================ bad inputs
X = np.ones((4, 6), dtype=np.float32)


@pytest.mark.parametrize("mod", [R, T], ids=["numpy", "torch"])
@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        ({"bits": 8.0}, TypeError, "bits must be an int"),
        ({"bits": True}, TypeError, "bits must be an int"),
        ({"bits": 1}, ValueError, r"bits must be an int in \[2, 8\], got 1"),
        ({"bits": 16}, ValueError, r"bits must be an int in \[2, 8\], got 16"),
        ({"symmetric": 1}, TypeError, "symmetric must be a bool"),
        (
            {"granularity": "row"},
            ValueError,
            "granularity must be one of 'tensor', 'channel', 'group'; got 'row'",
        ),
        ({"granularity": None}, TypeError, "granularity must be one of"),
        (
            {"axis": 2},
            ValueError,
            r"axis must be in \[-2, 1\] for x of shape \(4, 6\), got 2",
        ),
        ({"axis": -3}, ValueError, "axis must be in"),
        ({"axis": 0.0}, TypeError, "axis must be an int"),
        ({"granularity": "group"}, ValueError, "group_size is required"),
        (
            {"granularity": "channel", "group_size": 2},
            ValueError,
            "group_size must be None unless",
        ),
        ({"group_size": 2}, ValueError, "group_size must be None unless"),
        (
            {"granularity": "group", "group_size": 4},
            ValueError,
            "group_size=4 must divide the length 6 of x along axis 1",
        ),
        (
            {"granularity": "group", "axis": 0, "group_size": 3},
            ValueError,
            "group_size=3 must divide the length 4 of x along axis 0",
        ),
        (
            {"granularity": "group", "group_size": 0},
            ValueError,
            "group_size must be an int >= 1",
        ),
        (
            {"granularity": "group", "group_size": 2.0},
            TypeError,
            "group_size must be an int",
        ),
    ],
)
def test_bad_scheme_raises(mod, kwargs, exc, text):
    x = X if mod is R else _t(X)
    with pytest.raises(exc, match=text):
        mod.compute_qparams(x, **kwargs)
    with pytest.raises(exc, match=text):
        mod.fake_quantize(x, **kwargs)


@pytest.mark.parametrize("mod", [R, T], ids=["numpy", "torch"])
def test_bad_arrays_raise(mod):
    conv = (lambda a: a) if mod is R else _t
    other = _t if mod is R else (lambda a: a)
    with pytest.raises(TypeError, match="x must have a float dtype"):
        mod.compute_qparams(conv(np.ones((2, 2), dtype=np.int32)))
    with pytest.raises(TypeError, match="x must be a"):
        mod.compute_qparams(other(X))
    with pytest.raises(TypeError, match="x must be a"):
        mod.compute_qparams([1.0, 2.0])
    for bad in (np.nan, np.inf):
        y = X.copy()
        y[1, 2] = bad
        with pytest.raises(ValueError, match="x must contain only finite values"):
            mod.compute_qparams(conv(y))
        with pytest.raises(ValueError, match="x must contain only finite values"):
            mod.quantize(conv(y), mod.compute_qparams(conv(X)))
    with pytest.raises(ValueError, match="x must have 1 to 8 dimensions|x must have 1 or 2"):
        mod.compute_qparams(conv(np.array(1.0, dtype=np.float32)))
    with pytest.raises(ValueError, match="x must not be empty"):
        mod.compute_qparams(conv(np.zeros((0, 3))))

    qp = mod.compute_qparams(conv(X), bits=4, granularity="channel", axis=0)
    with pytest.raises(TypeError, match="qparams must be a QParams"):
        mod.quantize(conv(X), (qp.scale, qp.zero_point))
    with pytest.raises(TypeError, match="qparams must hold"):
        mod.quantize(conv(X), R.compute_qparams(X) if mod is T else T.compute_qparams(_t(X)))
    with pytest.raises(ValueError, match=r"x of shape \(5, 6\) does not match qparams"):
        mod.quantize(conv(np.ones((5, 6), dtype=np.float32)), qp)
    with pytest.raises(ValueError, match="x of shape .* does not match qparams"):
        mod.quantize(conv(np.ones(24, dtype=np.float32)), qp)
    q = mod.quantize(conv(X), qp)
    with pytest.raises(TypeError, match="q must have a.*int.* dtype"):
        mod.dequantize(conv(X), qp)
    with pytest.raises(TypeError, match="q must be a"):
        mod.dequantize(other(np.zeros((4, 6), dtype=np.int8)), qp)
    with pytest.raises(
        ValueError,
        match=r"q must lie in \[-7, 7\] for bits=4, symmetric=True; got values in \[0, 8\]",
    ):
        mod.dequantize(conv(np.full((4, 6), 8, dtype=np.int8) * (np.arange(6) > 0)), qp)
    with pytest.raises(ValueError, match=r"q of shape \(5, 6\) does not match qparams"):
        mod.dequantize(conv(np.zeros((5, 6), dtype=np.int8)), qp)
    with pytest.raises(TypeError, match="dtype must be a .*float dtype"):
        mod.dequantize(q, qp, dtype=np.int32 if mod is R else torch.int32)
    with pytest.raises(TypeError, match="x_hat must"):
        mod.quant_error(conv(X), conv(np.ones((4, 6), dtype=np.int32)))
    with pytest.raises(ValueError, match=r"x_hat must have the shape of x"):
        mod.quant_error(conv(X), conv(np.ones((6, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="x_hat must contain only finite values"):
        mod.quant_error(conv(X), conv(np.full((4, 6), np.nan, dtype=np.float32)))


def test_qparams_constructor_checks_consistency():
    s, z = np.ones((2, 1)), np.zeros((2, 1), dtype=np.int32)
    assert R.QParams(s, z, 8, True, "channel", 0).qmax == 127
    with pytest.raises(ValueError, match="zero_point must have the shape of scale"):
        R.QParams(s, np.zeros((1, 2), dtype=np.int32), 8, True, "channel", 0)
    with pytest.raises(TypeError, match="zero_point must have a int/unsigned int dtype"):
        R.QParams(s, np.zeros((2, 1)), 8, True, "channel", 0)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        R.QParams(np.zeros((2, 1)), z, 8, True, "channel", 0)
    with pytest.raises(ValueError, match="zero_point must be 0 for a symmetric scheme"):
        R.QParams(s, z + 1, 8, True, "channel", 0)
    with pytest.raises(ValueError, match=r"zero_point must lie in \[0, 15\]"):
        R.QParams(s, z + 16, 4, False, "channel", 0)
    with pytest.raises(ValueError, match=r"axis must be an int in \[0, 1\], got 2"):
        R.QParams(s, z, 8, True, "channel", 2)
    with pytest.raises(ValueError, match="bits must be an int"):
        R.QParams(s, z, 9, True, "channel", 0)
    with pytest.raises(TypeError, match="scale must be a NumPy array or torch tensor"):
        R.QParams(1.0, z, 8, True, "tensor", 0)
    with pytest.raises(TypeError, match="qparams must hold NumPy arrays"):
        R.dequantize(
            np.zeros((2, 3), dtype=np.int8),
            R.QParams(
                torch.ones(2, 1),
                torch.zeros(2, 1, dtype=torch.int32),
                8,
                True,
                "channel",
                0,
            ),
        )


def test_qparams_shape():
    assert R.qparams_shape((4, 6), "tensor", -1, None) == (1, 1)
    assert R.qparams_shape((4, 6), "channel", 0, None) == (4, 1)
    assert R.qparams_shape((4, 6, 8), "group", -1, 2) == (4, 6, 4)
    assert R.qparams_shape((4, 6, 8), "group", 1, 3) == (4, 2, 8)
    with pytest.raises(ValueError, match="group_size=4 must divide the length 6"):
        R.qparams_shape((4, 6), "group", 1, 4)
    with pytest.raises(TypeError, match="shape must be a tuple"):
        R.qparams_shape([4, 6], "tensor", 0, None)
