"""The checkers of notebook 02.7 (QAT): right answers pass, each classic mistake gets its hint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import fails as _fails

from effx_lab.quant import reference as R
from effx_lab.quant import torch_ops as T
from effx_lab.quant.exercises import qat as E
from effx_lab.quant.qat import distillation_loss


# ---------------------------------------------------------------------------------- right answers
def ste_grad_plain(x, grad_out, scale, qmin, qmax, zero_point=0):
    q = np.round(x / scale) + zero_point
    return np.where((q >= qmin) & (q <= qmax), grad_out, 0.0)


def ste_grad_half_away(x, grad_out, scale, qmin, qmax, zero_point=0):
    """Round half away from zero, float32 arithmetic, the mask as a float multiplied in."""
    v = np.asarray(x, dtype=np.float32) / np.float32(scale) if np.ndim(scale) == 0 else x / scale
    q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero_point
    return grad_out * ((q >= qmin) & (q <= qmax)).astype(grad_out.dtype)


def ste_grad_torch(x, grad_out, scale, qmin, qmax, zero_point=0):
    """Autograd through a hand-written fake quantizer with round's gradient replaced by 1 (x + (r - x).detach())."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    s = torch.as_tensor(np.asarray(scale, dtype=np.float64))
    z = torch.as_tensor(np.asarray(zero_point, dtype=np.float64))
    v = xt / s
    v = v + (torch.round(v) - v).detach()  # STE for round
    q = torch.clamp(v + z, qmin, qmax)  # clamp's gradient is the mask
    ((q - z) * s).backward(torch.as_tensor(np.asarray(grad_out, dtype=np.float64)))
    return xt.grad


def distillation_loss_plain(student_logits, teacher_logits, temperature=1.0):
    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_s = log_softmax(np.asarray(student_logits, dtype=np.float64) / temperature)
    log_t = log_softmax(np.asarray(teacher_logits, dtype=np.float64) / temperature)
    return temperature**2 * np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1))


def distillation_loss_torch(student_logits, teacher_logits, temperature=1.0):
    """torch's kl_div (input = student log-probs, target = teacher log-probs), flattened to positions."""
    s = torch.as_tensor(np.asarray(student_logits, dtype=np.float64))
    t = torch.as_tensor(np.asarray(teacher_logits, dtype=np.float64))
    v = s.shape[-1]
    log_s = torch.log_softmax(s.reshape(-1, v) / temperature, dim=-1)
    log_t = torch.log_softmax(t.reshape(-1, v) / temperature, dim=-1)
    return temperature**2 * torch.nn.functional.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


RIGHT = [
    (E.check_ste_grad, ste_grad_plain),
    (E.check_ste_grad, ste_grad_half_away),
    (E.check_ste_grad, ste_grad_torch),
    (E.check_distillation_loss, distillation_loss_plain),
    (E.check_distillation_loss, distillation_loss_torch),
]


@pytest.mark.parametrize("checker, fn", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- references
def test_ste_reference_is_the_package_function_and_torch_autograd_agrees():
    """The reference is R.ste_grad; on a calibrated range it equals autograd of T.fake_quantize_ste."""
    refs = E._cases_for_tests()
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    qp = R.compute_qparams(np.array([[-1.0, 1.0]]), bits=3)  # fixed range [-1, 1]: some of x saturates
    got = refs["ste_grad"][0](x, g, float(qp.scale.item()), qp.qmin, qp.qmax)
    want = R.ste_grad(x, g, R.QParams(np.full((1, 1), qp.scale.item()), np.zeros((1, 1), np.int32),
                                      3, True, "tensor", 0))
    np.testing.assert_array_equal(got, want)
    assert 0 < np.count_nonzero(got == 0) < got.size  # the mask is neither all ones nor all zeros
    # on the calibrated range, autograd of fake_quantize_ste is the same function (and nothing saturates)
    xt = torch.tensor(x, requires_grad=True)
    T.fake_quantize_ste(xt, 4, False).backward(torch.from_numpy(g))
    qp4 = R.compute_qparams(x, bits=4, symmetric=False)
    expected = refs["ste_grad"][0](x, g, float(qp4.scale.item()), qp4.qmin, qp4.qmax, int(qp4.zero_point.item()))
    np.testing.assert_array_equal(xt.grad.numpy(), expected)


def test_kd_reference_is_the_loss_of_qat_finetune():
    ref = E._cases_for_tests()["distillation_loss"][0]
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 5, 11)), rng.normal(size=(2, 5, 11))
    for temp in (1.0, 2.5):
        want = float(distillation_loss(torch.from_numpy(s), torch.from_numpy(t), temp))
        assert ref(s, t, temp) == pytest.approx(want, rel=1e-12)
        # float64 in, float64 out: the NumPy answer to rounding error
        assert ref(s, t, temp) == pytest.approx(distillation_loss_plain(s, t, temp), rel=1e-10)
    assert ref(t, t, 3.0) == pytest.approx(0.0, abs=1e-6)


def test_cases_cover_the_edges():
    ste_cases = E._cases_for_tests()["ste_grad"][1](np.random.default_rng(3))
    masks = [ste_grad_plain(*c.args, **c.kwargs) != 0 for c in ste_cases]
    assert any(m.all() for m in masks) and sum(not m.all() for m in masks) >= 8  # clipping in most cases
    assert any("zero_point" in c.kwargs for c in ste_cases) and any(np.ndim(c.args[2]) == 2 for c in ste_cases)
    assert any(c.args[0].dtype == np.float32 for c in ste_cases)
    # no integer lands within 0.2 of a tie at the edges of the grid: the rounding convention cannot matter
    for c in ste_cases:
        x, _, scale, qmin, qmax = c.args
        u = np.asarray(x, dtype=np.float64) / np.asarray(scale) + np.asarray(c.kwargs.get("zero_point", 0))
        for edge in (qmin - 0.5, qmax + 0.5):
            assert np.all(np.abs(u - edge) > 0.19), c.label
    kd_cases = E._cases_for_tests()["distillation_loss"][1](np.random.default_rng(3))
    temps = {c.kwargs.get("temperature", 1.0) for c in kd_cases}
    assert 1.0 in temps and any(t > 1 for t in temps) and any(t < 1 for t in temps)
    assert {np.ndim(c.args[0]) for c in kd_cases} >= {1, 2, 3}
    assert any(np.array_equal(c.args[0], c.args[1]) for c in kd_cases)
    assert any(np.abs(c.args[1]).max() / c.kwargs.get("temperature", 1.0) > 710 for c in kd_cases)  # exp overflows


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    from effx_lab.check import Diagnosis

    for name, (ref, make, mistakes) in E._cases_for_tests().items():
        cases = make(np.random.default_rng(7))
        diag = Diagnosis(ref, mistakes, rtol=1e-5, atol=1e-6, exact=False)
        for m in mistakes:
            reachable = False
            for c in cases:
                with np.errstate(all="ignore"):
                    wrong = m.wrong(*c.args, **c.kwargs)
                if wrong is not None and not diag.close(wrong, ref(*c.args, **c.kwargs)):
                    reachable = True
                    break
            assert reachable, (name, m.hint)


# ---------------------------------------------------------------------------------- ste_grad mistakes
def _ste(x, g, scale, qmin, qmax, zero_point=0, *, mask="right", factor=1.0):
    v = np.round(x / scale)
    q = v + zero_point
    keep = {
        "right": (q >= qmin) & (q <= qmax),
        "none": np.ones(np.shape(x), bool),
        "zero": np.zeros(np.shape(x), bool),
        "unrounded": (x / scale + zero_point >= qmin) & (x / scale + zero_point <= qmax),
        "inverted": (q < qmin) | (q > qmax),
        "strict": (q > qmin) & (q < qmax),
        "no_zp": (v >= qmin) & (v <= qmax),
    }[mask]
    return np.where(keep, g, 0.0) * (scale if factor == "scale" else 1.0 / scale if factor == "inv" else 1.0)


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"mask": "none"}, "plain identity STE"),
        ({"mask": "zero"}, "true derivative of round"),
        ({"mask": "unrounded"}, "ROUNDED integer"),
        ({"mask": "inverted"}, "mask is inverted"),
        ({"mask": "strict"}, "use <= at both ends"),
        ({"mask": "no_zp"}, "add the zero point"),
        ({"factor": "scale"}, "no scale factor"),
        ({"factor": "inv"}, "no 1 / scale factor"),
    ],
)
def test_ste_grad_mistakes_get_their_hint(kwargs, hint):
    _fails(E.check_ste_grad(lambda *a, **k: _ste(*a, **k, **kwargs)), "hint:", hint)


def test_ste_grad_ignoring_the_zero_point_fails_on_affine_cases_only():
    res = E.check_ste_grad(lambda *a, **k: _ste(*a, **k, mask="no_zp"))
    assert "affine" in res.failed_case


def test_ste_grad_returning_the_mask_fails():
    _fails(E.check_ste_grad(lambda x, g, s, lo, hi, zero_point=0: ste_grad_plain(x, np.ones_like(g), s, lo, hi,
                                                                                  zero_point)), "wrong answer")


# ---------------------------------------------------------------------------------- distillation mistakes
@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"factor": "none"}, "multiply the KL by T^2"),
        ({"factor": "T"}, "the factor is T^2, not T"),
        ({"factor": "inv_T2"}, "MULTIPLY by T^2"),
        ({"direction": "student"}, "wrong way round"),
        ({"temp": "none"}, "soften both distributions"),
        ({"temp": "student"}, "divide the TEACHER's logits"),
        ({"temp": "teacher"}, "divide the STUDENT's logits"),
        ({"kind": "soft_ce"}, "soft-target cross-entropy"),
        ({"reduce": "sum"}, "do not sum"),
        ({"reduce": "all"}, "divides by the vocabulary size"),
        ({"axis": 0}, "LAST axis"),
    ],
)
def test_distillation_mistakes_get_their_hint(kwargs, hint):
    _fails(E.check_distillation_loss(lambda s, t, temperature=1.0: E._kd(s, t, temperature, **kwargs)), "hint:", hint)


def test_distillation_naive_softmax_overflows_and_gets_the_stability_hint():
    def naive(s, t, temperature=1.0):
        p_s = np.exp(s / temperature) / np.exp(s / temperature).sum(-1, keepdims=True)
        p_t = np.exp(t / temperature) / np.exp(t / temperature).sum(-1, keepdims=True)
        return temperature**2 * np.mean(np.sum(p_t * np.log(p_t / p_s), axis=-1))

    with np.errstate(all="ignore"):
        res = E.check_distillation_loss(naive)
    _fails(res, "large logits", "hint:", "overflows")


def test_distillation_ignoring_T_entirely_fails():
    _fails(E.check_distillation_loss(lambda s, t, temperature=1.0: distillation_loss_plain(s, t, 1.0)), "T = 2")


# ---------------------------------------------------------------------------------- never crash


def test_in_place_modification_is_reported():
    def in_place(x, g, scale, qmin, qmax, zero_point=0):
        out = ste_grad_plain(x, g, scale, qmin, qmax, zero_point)
        g *= 0.0
        return out

    _fails(E.check_ste_grad(in_place), "modif")


def test_qparams_of_the_exercise_arguments():
    x = np.zeros((3, 4))
    qp = E._qparams(x, np.array([[0.1], [0.2], [0.3]]), 0, 15, np.array([[1], [2], [3]]))
    assert (qp.bits, qp.symmetric, qp.granularity, qp.axis) == (4, False, "channel", 0)
    qp = E._qparams(x, 0.5, -127, 127, 0)
    assert (qp.bits, qp.symmetric, qp.granularity, qp.scale.shape) == (8, True, "tensor", (1, 1))
    with pytest.raises(ValueError, match="grid"):
        E._grid(-8, 7)


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_distillation_loss", "check_ste_grad"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
