"""Tests of quantization-aware training (chapter 2, section 02.7): FakeQuantLinear, prepare_qat, qat_finetune,
freeze_qat. Tiny TinyLMs (from TinyLMConfig) keep the file to seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _backends import assert_within, matmul_bound, unit_roundoff
from torch import nn

from effx_lab.models import TinyLMConfig
from effx_lab.models.torch_ops import TinyLM
from effx_lab.quant import qat
from effx_lab.quant import torch_ops as QT
from effx_lab.quant._torch_gptq import rtn_quantize_weight

CFG = TinyLMConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster (and far cheaper on a busy machine) than several."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokens(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A stream with structure a tiny model can learn quickly: a noisy repeating byte pattern."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.frombuffer(b"the quick brown fox jumps over the lazy dog. ", dtype=np.uint8), n // 45 + 1)[:n]
    noise = rng.random(n) < 0.05
    return np.where(noise, rng.integers(0, 256, n), base).astype(np.int64)


def _linear(in_f: int = 64, out_f: int = 8, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


# ============================================================================ FakeQuantLinear
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fake_quant_linear_forward_and_ste_gradient(group_size, symmetric):
    lin = _linear()
    fq = qat.FakeQuantLinear(lin, bits=3, group_size=group_size, symmetric=symmetric)
    x = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(1))
    scheme = {"granularity": "channel", "axis": 0} if group_size is None else {
        "granularity": "group", "axis": 1, "group_size": group_size}
    w_q = QT.fake_quantize(lin.weight.detach(), 3, symmetric, **scheme)
    y = fq(x)
    torch.testing.assert_close(y, F.linear(x, w_q, lin.bias), rtol=0, atol=0)
    torch.testing.assert_close(fq.quantized_weight(), w_q, rtol=0, atol=0)
    # gradcheck-like: the latent weight's gradient is the gradient w.r.t. the quantized weight (STE, no clip)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    (y * g).sum().backward()
    w_leaf = w_q.clone().requires_grad_(True)
    x_leaf = x.clone().requires_grad_(True)
    (F.linear(x_leaf, w_leaf, lin.bias) * g).sum().backward()
    torch.testing.assert_close(fq.weight.grad, w_leaf.grad, rtol=1e-6, atol=1e-6)
    assert fq.bias.grad is not None and lin.weight.grad is None  # the wrapped layer was copied, not shared
    # the forward never looks at more than 2**bits levels per row/group
    rows = w_q.reshape(8, -1, group_size or 64)
    assert max(len(torch.unique(r)) for r in rows.reshape(-1, group_size or 64)) <= 8


def test_fake_quant_linear_activation_quant_and_validation():
    lin = _linear(32, 4, bias=False)
    fq = qat.FakeQuantLinear(lin, bits=8, group_size=None, a_bits=4)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = fq(x)
    x_q = QT.fake_quantize(x.detach(), 4, False, "tensor")
    w_q = QT.fake_quantize(lin.weight.detach(), 8, False, "channel", axis=0)
    # the same float32 products summed by two different kernels: within twice gamma_32 |x_q| @ |w_q|^T
    u = unit_roundoff(torch.float32)
    assert_within(y.detach(), x_q @ w_q.T, 2 * matmul_bound(x_q, w_q.T, u), "forward")
    y.sum().backward()
    # STE: identity on x, so x.grad = ones @ w_q (4-term column sums, twice gamma_4)
    ones = torch.ones(3, 4)
    assert_within(x.grad, w_q.sum(0).expand(3, 32), 2 * matmul_bound(ones, w_q, u), "STE gradient")
    assert "bits=8" in repr(fq) and "a_bits=4" in repr(fq)
    with pytest.raises(TypeError, match="linear"):
        qat.FakeQuantLinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="group_size=5 must divide in_features=32"):
        qat.FakeQuantLinear(lin, group_size=5)
    with pytest.raises(ValueError, match="bits"):
        qat.FakeQuantLinear(lin, bits=1)
    with pytest.raises(ValueError, match="a_bits"):
        qat.FakeQuantLinear(lin, a_bits=16)


# ============================================================================ prepare_qat / freeze_qat
def test_prepare_qat_replaces_every_linear_and_leaves_the_original():
    model = TinyLM.from_config(CFG, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    student = qat.prepare_qat(model, bits=4, group_size=16, skip=("layers.0.mlp.fc2",))
    kinds = {n: type(m) for n, m in student.named_modules()}
    assert kinds["layers.0.mlp.fc2"] is nn.Linear
    assert all(kinds[n] is qat.FakeQuantLinear for n in names if n != "layers.0.mlp.fc2")
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n in names)  # original unchanged
    # no shared storage: training the student leaves the original bit-for-bit equal
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not ptrs & {p.data_ptr() for p in student.parameters()}
    qat.qat_finetune(student, model, _tokens(), steps=2, batch_size=2, seq_len=16, lr=1e-2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the tied output head is not an nn.Linear: it stays float (it is the embedding)
    assert student.tok_emb.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="skip"):
        qat.prepare_qat(model, skip=("layers.0.mlp.fc3",))
    with pytest.raises(ValueError, match="group_size=24"):
        qat.prepare_qat(model, group_size=24)
    with pytest.raises(ValueError, match="no nn.Linear"):
        qat.prepare_qat(model, skip=tuple(names))
    with pytest.raises(TypeError, match="model"):
        qat.prepare_qat("model")


@pytest.mark.parametrize("bits,group_size", [(3, 16), (4, None)])
def test_freeze_qat_weights_on_the_grid(bits, group_size):
    model = TinyLM.from_config(CFG, seed=1)
    student = qat.prepare_qat(model, bits=bits, group_size=group_size)
    qat.qat_finetune(student, model, _tokens(), steps=3, batch_size=2, seq_len=16, lr=1e-2)
    frozen = qat.freeze_qat(student)
    assert not any(isinstance(m, qat.FakeQuantLinear) for m in frozen.modules())
    assert any(isinstance(m, qat.FakeQuantLinear) for m in student.modules())  # the QAT model is untouched
    x = torch.from_numpy(_tokens(64)[:48].reshape(3, 16))
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), student(x), rtol=0, atol=0)  # deploys exactly what training saw
    for name, fq in student.named_modules():
        if not isinstance(fq, qat.FakeQuantLinear):
            continue
        lin = frozen.get_submodule(name)
        assert type(lin) is nn.Linear
        w = lin.weight.detach()
        # on the grid: the RTN of the latent weight, and at most 2**bits levels per row / group
        torch.testing.assert_close(w, rtn_quantize_weight(fq.weight.detach(), bits, group_size), rtol=0, atol=0)
        gs = group_size or w.shape[1]
        levels = max(len(torch.unique(g)) for g in w.reshape(-1, gs))
        assert levels <= 2**bits
        # re-quantizing changes nothing up to the float32 rounding of the recomputed scale: (hi - lo) / n from
        # grid points carries a few u (u = 2^-24 ~ 6e-8) relative, the codes and zero points are the same, so
        # every weight moves by a few u relative; rtol 1e-5 is > 30x that
        torch.testing.assert_close(rtn_quantize_weight(w, bits, group_size), w, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(lin.bias, fq.bias)
    with pytest.raises(ValueError, match="FakeQuantLinear"):
        qat.freeze_qat(model)


# ============================================================================ qat_finetune
def _kl_on(student, teacher, x):
    with torch.no_grad():
        s, t = student(x), teacher(x)
        return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")) / (
            x.numel()
        )


def test_qat_finetune_reduces_distillation_loss():
    from effx_lab.models import train_tinylm

    teacher = TinyLM.from_config(CFG, seed=2)
    tokens = _tokens(6000)
    # a teacher with something to say: float training on the pattern (peaked next-byte distributions)
    train_tinylm(teacher, tokens, steps=100, batch_size=8, seq_len=32, lr=1e-2, log_every=100)
    student = qat.prepare_qat(teacher, bits=2, group_size=16)
    x = torch.from_numpy(_tokens(2000, seed=5)[:512].reshape(16, 32))  # a held-out batch
    kl_before = _kl_on(student, teacher, x)
    hist = qat.qat_finetune(student, teacher, tokens, steps=30, batch_size=8, seq_len=32, lr=3e-4, seed=1)
    kl_after = _kl_on(student, teacher, x)
    assert set(hist) >= {"loss", "ce", "kl", "steps", "tokens", "elapsed_s"}
    assert len(hist["loss"]) == len(hist["ce"]) == len(hist["kl"]) == 30 and hist["tokens"] == 30 * 8 * 32
    assert all(math.isfinite(v) for v in hist["loss"])
    np.testing.assert_allclose(hist["loss"], hist["kl"], rtol=1e-6)  # distill=1, T=1: loss = KL
    assert kl_before > 0.01  # 2-bit rounding really hurts this teacher
    assert kl_after < 0.5 * kl_before
    assert np.mean(hist["loss"][-10:]) < 0.7 * np.mean(hist["loss"][:10])
    assert not student.training


def test_qat_finetune_loss_mix_and_validation():
    teacher = TinyLM.from_config(CFG, seed=3)
    tokens = _tokens()
    student = qat.prepare_qat(teacher, bits=4, group_size=16)
    h = qat.qat_finetune(student, teacher, tokens, steps=2, batch_size=2, seq_len=8, distill=0.25, temperature=2.0)
    for loss, ce, kl in zip(h["loss"], h["ce"], h["kl"]):
        assert loss == pytest.approx(0.75 * ce + 0.25 * 4.0 * kl, rel=1e-5)
    h = qat.qat_finetune(student, None, tokens, steps=1, batch_size=2, seq_len=8, distill=0.0)
    assert h["loss"] == h["ce"] and math.isnan(h["kl"][0])
    with pytest.raises(ValueError, match="teacher is required"):
        qat.qat_finetune(student, None, tokens, steps=1, seq_len=8)
    with pytest.raises(ValueError, match="distill"):
        qat.qat_finetune(student, teacher, tokens, distill=1.5, seq_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        qat.qat_finetune(student, teacher, tokens, seq_len=64)  # max_seq_len is 32
    with pytest.raises(ValueError, match="temperature"):
        qat.qat_finetune(student, teacher, tokens, temperature=0.0, seq_len=8)
    with pytest.raises(ValueError, match="teacher must not be the student"):
        qat.qat_finetune(student, student, tokens, seq_len=8)
    with pytest.raises(TypeError, match="tokens"):
        qat.qat_finetune(student, teacher, tokens.tolist(), steps=1, seq_len=8)


def test_qat_finetune_is_the_shared_loop_with_a_distillation_loss():
    """qat_finetune = effx_lab.models.training.train with loss (1 - d) CE + d T^2 KL, no
    weight decay, gradient clip 1 and nanoGPT's schedule decaying towards 0 (lr_schedule
    with min_ratio=0, hold=1): same losses.
    """
    from effx_lab.models.training import train

    teacher = TinyLM.from_config(CFG, seed=4)
    tokens = _tokens()
    a, b = qat.prepare_qat(teacher, bits=3, group_size=16), qat.prepare_qat(
        teacher, bits=3, group_size=16
    )
    hist = qat.qat_finetune(
        a,
        teacher,
        tokens,
        steps=12,
        batch_size=2,
        seq_len=8,
        lr=1e-3,
        distill=0.5,
        temperature=2.0,
        seed=3,
    )

    def loss_fn(model, x, y):
        logits = model(x)
        with torch.no_grad():
            t = teacher(x)
        # the public loss, and its two terms alone (alpha=0: CE; alpha=1: T^2 KL)
        loss = qat.distillation_loss(logits, t, 2.0, alpha=0.5, targets=y)
        ce = qat.distillation_loss(logits, None, 2.0, alpha=0.0, targets=y)
        kl = qat.distillation_loss(logits, t, 2.0, alpha=1.0) / 4.0
        return {"loss": loss, "ce": ce, "kl": kl}

    run = train(
        b,
        tokens,
        steps=12,
        batch_size=2,
        seq_len=8,
        lr=1e-3,
        warmup=1,
        hold=1,
        min_ratio=0.0,
        weight_decay=0.0,
        grad_clip=1.0,
        seed=3,
        loss_fn=loss_fn,
    )
    assert hist["loss"] == run.losses and hist["ce"] == run.metrics["ce"]
    np.testing.assert_allclose(hist["kl"], run.metrics["kl"], rtol=1e-6)  # kl * 4 / 4
    # one warm-up step, the peak held for one more, then the decay
    assert run.lrs[0] == 1e-3 and run.lrs[1] == 1e-3 and 0 < run.lrs[-1] < 1e-4
    for (name, p), (_, q) in zip(
        a.named_parameters(), b.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


# ============================================================================ distillation_loss
def _log_softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _distillation_loss_np(s, t, temperature, alpha, targets):
    """The loss written out in NumPy float64: alpha T^2 KL(p_t || p_s) + (1 - alpha) CE."""
    log_s, log_t = _log_softmax_np(s / temperature), _log_softmax_np(t / temperature)
    kl = np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1))
    out = alpha * temperature**2 * kl
    if alpha < 1:
        log_p = _log_softmax_np(s)
        ce = -np.mean(np.take_along_axis(log_p, targets[..., None], axis=-1))
        out = out + (1 - alpha) * ce
    return out


@pytest.mark.parametrize("shape", [(7,), (5, 11), (2, 3, 13)])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 1.0), (2.5, 1.0), (1.0, 0.0), (0.7, 0.3)])
def test_distillation_loss_matches_numpy_in_float64(shape, temperature, alpha):
    rng = np.random.default_rng(hash((shape, temperature, alpha)) % 2**32)
    s = rng.normal(0.0, 3.0, size=shape)
    t = s + rng.normal(0.0, 1.0, size=shape)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    got = qat.distillation_loss(
        torch.from_numpy(s), torch.from_numpy(t), temperature, alpha, torch.from_numpy(y)
    )
    assert got.dtype == torch.float64 and got.ndim == 0
    want = _distillation_loss_np(s, t, temperature, alpha, y)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_distillation_loss_properties_and_gradient():
    rng = np.random.default_rng(7)
    for _ in range(20):  # KL >= 0 on random logits, at every temperature
        s, t = (torch.from_numpy(rng.normal(0.0, 4.0, size=(6, 9))) for _ in range(2))
        assert float(qat.distillation_loss(s, t, float(rng.uniform(0.3, 5.0)))) >= 0.0
    t = torch.from_numpy(rng.normal(size=(4, 10)))
    assert float(qat.distillation_loss(t.clone(), t, 3.0)) == pytest.approx(0.0, abs=1e-14)
    # logits of +-1000 (exp overflows without a stable log-softmax): finite
    big = torch.from_numpy(rng.normal(0.0, 1000.0, size=(3, 8)))
    assert math.isfinite(float(qat.distillation_loss(big, big.flip(-1), 1.0)))
    # the gradient reaches the student only (the teacher is a constant)
    s = torch.from_numpy(rng.normal(size=(4, 10))).requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    qat.distillation_loss(s, tt, 2.0).backward()
    assert s.grad is not None and tt.grad is None
    # alpha=0 is F.cross_entropy, in float32 for float32 (and bfloat16) logits
    y = torch.from_numpy(rng.integers(0, 10, size=4))
    s32 = s.detach().float()
    ce = qat.distillation_loss(s32, None, 1.0, alpha=0.0, targets=y)
    assert ce.dtype == torch.float32 and torch.equal(ce, F.cross_entropy(s32, y))
    assert qat.distillation_loss(s32.bfloat16(), t.bfloat16(), 1.0).dtype == torch.float32


def test_distillation_loss_validation():
    s, t = torch.zeros(2, 5), torch.ones(2, 5)
    y = torch.tensor([0, 4])
    with pytest.raises(TypeError, match="student_logits must be a float torch tensor"):
        qat.distillation_loss(s.numpy(), t)
    with pytest.raises(TypeError, match="student_logits"):
        qat.distillation_loss(s.long(), t)
    with pytest.raises(TypeError, match="teacher_logits"):
        qat.distillation_loss(s, t.numpy())
    with pytest.raises(ValueError, match=r"teacher_logits must have the shape .*\(2, 5\).*\(2, 4\)"):
        qat.distillation_loss(s, torch.ones(2, 4))
    with pytest.raises(ValueError, match="teacher_logits is required when alpha > 0"):
        qat.distillation_loss(s, None, alpha=0.5, targets=y)
    with pytest.raises(ValueError, match="targets is required when alpha < 1"):
        qat.distillation_loss(s, t, alpha=0.5)
    with pytest.raises(ValueError, match="temperature must be"):
        qat.distillation_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="alpha must be"):
        qat.distillation_loss(s, t, alpha=1.5)
    with pytest.raises(TypeError, match="targets must be an integer torch tensor"):
        qat.distillation_loss(s, t, alpha=0.5, targets=y.float())
    with pytest.raises(ValueError, match=r"targets must have shape .*\(2,\).*\(2, 1\)"):
        qat.distillation_loss(s, t, alpha=0.5, targets=y[:, None])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\).*\[0, 5\]"):
        qat.distillation_loss(s, t, alpha=0.5, targets=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="at least one position"):
        qat.distillation_loss(torch.zeros(0, 5), torch.zeros(0, 5))


def test_fake_quantize_ste_has_a_public_name():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = qat.FakeQuantizeSTE.apply(x, 3, True, "tensor", -1, None)
    assert torch.equal(y.detach(), QT.fake_quantize(x.detach(), 3, True, "tensor"))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # min/max scales: nothing saturates
    assert "FakeQuantizeSTE" in qat.__all__ and "distillation_loss" in qat.__all__
