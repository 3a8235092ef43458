"""effx_lab.numerics: the rounding-error bounds every float32 comparison of the course derives from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from effx_lab import numerics as N


@pytest.mark.parametrize("dtype, u", [(np.float64, 2.0**-53), (np.float32, 2.0**-24), (np.float16, 2.0**-11),
                                      (torch.float32, 2.0**-24), (torch.bfloat16, 2.0**-8)])
def test_unit_roundoff(dtype, u):
    assert N.unit_roundoff(dtype) == u


@pytest.mark.parametrize("bad", [np.int32, torch.int8, "nonsense", None])
def test_unit_roundoff_rejects_non_float_dtypes(bad):
    with pytest.raises(TypeError, match="dtype must be"):
        N.unit_roundoff(bad)


def test_gamma_and_its_limits():
    assert N.gamma(0, 2.0**-24) == 0.0
    assert N.gamma(10, 0.01) == pytest.approx(0.1 / 0.9)
    with pytest.raises(ValueError, match="k must be"):
        N.gamma(-1, 0.01)
    with pytest.raises(ValueError, match="k \\* u must be below 1/2"):
        N.gamma(60, 0.01)
    with pytest.raises(ValueError, match="u must be"):
        N.gamma(3, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_float32_products_stay_within_the_bound_and_the_bound_is_not_vacuous(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((7, 300)), rng.standard_normal((300, 5))
    exact = a @ b  # float64: the "exact" result at float32's scale
    for got in (a.astype(np.float32) @ b.astype(np.float32),
                (torch.from_numpy(a).float() @ torch.from_numpy(b).float()).numpy()):
        # float32 operands are themselves rounded: one more rounding per term (k = K + 1)
        N.assert_within(got, exact, N.matmul_bound(a, b, 2.0**-24, k=301), "float32 matmul")
    with pytest.raises(AssertionError, match="exceed the derived float error bound"):
        N.assert_within(exact + 0.05, exact, N.matmul_bound(a, b, 2.0**-24), "shifted")


def test_assert_within_fails_on_nan_and_on_shape_mismatch():
    with pytest.raises(AssertionError):
        N.assert_within(np.array([np.nan]), np.array([0.0]), 1.0)
    with pytest.raises(ValueError, match="one shape"):
        N.assert_within(np.zeros(3), np.zeros(4), 1.0)


def test_abs_matmul_checks_shapes():
    with pytest.raises(ValueError, match="matching K"):
        N.abs_matmul(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(TypeError, match="b must be"):
        N.abs_matmul(np.ones((2, 3)), "oops")


def test_relative_error_matches_the_formula_for_arrays_and_tensors():
    import torch

    from effx_lab.numerics import relative_error

    rng = np.random.default_rng(0)
    want = rng.standard_normal((4, 5))
    got = want + 1e-3 * rng.standard_normal((4, 5))
    expected = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert relative_error(got, want) == pytest.approx(expected, rel=1e-12)
    assert relative_error(torch.from_numpy(got), torch.from_numpy(want)) == pytest.approx(expected, rel=1e-12)
    assert relative_error(got, want, squared=True) == pytest.approx(expected**2, rel=1e-12)
    assert relative_error(want, want) == 0.0


@pytest.mark.parametrize(
    "got, want, kw, error, says",
    [
        (np.ones(3), np.ones(4), {}, ValueError, "same shape"),
        (np.ones(3), np.zeros(3), {}, ValueError, "all zeros"),
        ("abc", np.ones(3), {}, TypeError, "got must be"),
        (np.ones(3), np.ones(3), {"squared": "yes"}, TypeError, "squared"),
    ],
)
def test_relative_error_rejects_bad_input(got, want, kw, error, says):
    from effx_lab.numerics import relative_error

    with pytest.raises(error, match=says):
        relative_error(got, want, **kw)
