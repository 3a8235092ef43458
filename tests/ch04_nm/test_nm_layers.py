"""The Scaling Transformer's sparse FFN and sparse QKV (effx_lab.nm, topic ``layers``):
the two faces agree in float64, the inference path equals the training path's hard
forward and reads only the chosen units, the straight-through gradient is the soft
one, the QKV convolution is causal, and bad input is named. The modules of
:mod:`effx_lab.nm.layers` (the LM registration, the decode model) are tested at the
end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effx_lab.nm import reference as R
from effx_lab.nm import torch_ops as T

D, DFF, RANK, BLOCK = 16, 32, 4, 4


def ffn_params(rng, d=D, d_ff=DFF, r=RANK):
    return {
        "w1": rng.normal(size=(d, d_ff)),
        "b1": rng.normal(size=d_ff),
        "w2": rng.normal(size=(d_ff, d)),
        "b2": rng.normal(size=d),
        "c1": rng.normal(size=(d, r)),
        "c2": rng.normal(size=(r, d_ff)),
    }


def qkv_params(rng, d=D, s=4, kl=3, ks=3):
    m = d // s
    p = {
        "mul_d": rng.normal(size=(s, d)),
        "mul_e": rng.normal(size=(d, m)),
        "mul_b": rng.normal(size=d),
    }
    for c in "qkv":
        p[f"conv_w{c}"] = rng.normal(size=(m, m, kl, ks))
        p[f"conv_b{c}"] = rng.normal(size=m)
    return p


def tt(p):
    if isinstance(p, dict):
        return {k: torch.from_numpy(v) for k, v in p.items()}
    return torch.from_numpy(p)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------------------
# the two faces agree (float64)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_ffn_faces_agree(rng, lead):
    p = ffn_params(rng)
    x = rng.normal(size=(*lead, D))
    g = rng.gumbel(size=(*lead, DFF // BLOCK, BLOCK))
    np.testing.assert_allclose(
        T.controller_logits(tt(x), tt(p), BLOCK).numpy(),
        R.controller_logits(x, p, BLOCK),
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_array_equal(
        T.active_units(tt(x), tt(p), BLOCK).numpy(), R.active_units(x, p, BLOCK)
    )
    for act in ("relu", "gelu"):
        np.testing.assert_allclose(
            T.dense_ffn(tt(x), tt(p), activation=act).numpy(),
            R.dense_ffn(x, p, activation=act),
            rtol=1e-12,
            atol=1e-11,
        )
        for mode, noise in (("infer", None), ("train", None), ("train", g)):
            want = R.sparse_ffn(x, p, BLOCK, mode=mode, gumbel=noise, activation=act)
            got = T.sparse_ffn(
                tt(x),
                tt(p),
                BLOCK,
                mode=mode,
                gumbel=None if noise is None else tt(noise),
                activation=act,
            )
            assert got.shape == want.shape == x.shape
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("lead,kl,ks", [((7,), 3, 3), ((2, 6), 2, 1), ((1, 5), 1, 5)])
def test_qkv_faces_agree(rng, lead, kl, ks):
    p = qkv_params(rng, kl=kl, ks=ks)
    x = rng.normal(size=(*lead, D))
    np.testing.assert_allclose(
        T.multiplicative_layer(tt(x), tt(p), 4).numpy(),
        R.multiplicative_layer(x, p, 4),
        rtol=1e-12,
        atol=1e-12,
    )
    for want, got in zip(R.sparse_qkv(x, p, 4), T.sparse_qkv(tt(x), tt(p), 4)):
        assert want.shape == got.shape == x.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-11)


# --------------------------------------------------------------------------------------
# the sparse FFN's properties
# --------------------------------------------------------------------------------------
def test_active_units_one_per_block(rng):
    p = ffn_params(rng)
    units = R.active_units(rng.normal(size=(9, D)), p, BLOCK)
    assert units.shape == (9, DFF // BLOCK) and units.dtype == np.int64
    blocks = np.arange(DFF // BLOCK)[None, :].repeat(9, 0)
    np.testing.assert_array_equal(units // BLOCK, blocks)


@pytest.mark.parametrize("face", ["np", "torch"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_infer_equals_train_hard_forward_and_masked_dense(rng, face, act):
    p = ffn_params(rng)
    x = rng.normal(size=(6, D))
    F_ = R if face == "np" else T
    conv = (lambda a: a) if face == "np" else (lambda a: tt(a))
    back = (lambda a: a) if face == "np" else (lambda a: a.numpy())
    infer = back(F_.sparse_ffn(conv(x), conv(p), BLOCK, activation=act))
    train = back(F_.sparse_ffn(conv(x), conv(p), BLOCK, mode="train", activation=act))
    zeros = np.zeros((6, DFF // BLOCK, BLOCK))
    train0 = back(
        F_.sparse_ffn(
            conv(x), conv(p), BLOCK, mode="train", gumbel=conv(zeros), activation=act
        )
    )
    np.testing.assert_array_equal(train, train0)
    np.testing.assert_allclose(infer, train, rtol=1e-13, atol=1e-12)
    units = R.active_units(x, p, BLOCK)
    for i in range(6):  # the dense FFN with every other unit removed from W2
        q = dict(p)
        keep = np.zeros(DFF, bool)
        keep[units[i]] = True
        q["w2"] = np.where(keep[:, None], p["w2"], 0.0)
        dense = R.dense_ffn(x[i], q, activation=act)
        np.testing.assert_allclose(infer[i], dense, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("face", ["np", "torch"])
def test_infer_reads_only_the_chosen_units(rng, face):
    """NaN in every unit the controller did not choose: the inference path never reads
    them, so its output stays finite and unchanged; the dense training path reads
    all."""
    p = ffn_params(rng)
    x = rng.normal(size=(1, D))
    units = R.active_units(x, p, BLOCK)[0]
    other = np.setdiff1d(np.arange(DFF), units)
    q = {k: v.copy() for k, v in p.items()}
    q["w1"][:, other] = np.nan
    q["b1"][other] = np.nan
    q["w2"][other, :] = np.nan
    if face == "np":
        before, after = R.sparse_ffn(x, p, BLOCK), R.sparse_ffn(x, q, BLOCK)
        dense = R.sparse_ffn(x, q, BLOCK, mode="train")
    else:
        before = T.sparse_ffn(tt(x), tt(p), BLOCK).numpy()
        after = T.sparse_ffn(tt(x), tt(q), BLOCK).numpy()
        dense = T.sparse_ffn(tt(x), tt(q), BLOCK, mode="train").numpy()
    np.testing.assert_array_equal(before, after)
    assert np.isnan(dense).all()  # 0 * NaN: the dense path does read them


def test_gumbel_noise_steers_the_choice(rng):
    p = ffn_params(rng)
    x = rng.normal(size=(D,))
    g = np.zeros((DFF // BLOCK, BLOCK))
    g[:, 2] = 1e6  # unit 2 of every block wins
    q = {k: v.copy() for k, v in p.items()}
    keep = np.zeros(DFF, bool)
    keep[2::BLOCK] = True
    q["w2"] = np.where(keep[:, None], p["w2"], 0.0)
    np.testing.assert_allclose(
        R.sparse_ffn(x, p, BLOCK, mode="train", gumbel=g), R.dense_ffn(x, q), rtol=1e-13
    )


def test_straight_through_gradient(rng):
    """Forward: the hard mask. Backward: W1, W2 get the hard-masked dense FFN's
    gradient; the controller's logits get the softmax's (divided by tau)."""
    p = ffn_params(rng)
    x = tt(rng.normal(size=(3, D)))
    g = tt(rng.gumbel(size=(3, DFF // BLOCK, BLOCK)))
    tau = 0.7
    w = tt(rng.normal(size=(3, D)))
    pt = {k: v.clone().requires_grad_(True) for k, v in tt(p).items()}
    (T.sparse_ffn(x, pt, BLOCK, mode="train", gumbel=g, tau=tau) * w).sum().backward()

    logits = (T.controller_logits(x, tt(p), BLOCK) + g).requires_grad_(True)
    hard = torch.nn.functional.one_hot(logits.argmax(-1), BLOCK).double()
    mask = hard.clone().requires_grad_(True)
    q = {k: v.clone().requires_grad_(True) for k, v in tt(p).items()}
    h = torch.relu(x @ q["w1"] + q["b1"]) * mask.flatten(-2)
    ((h @ q["w2"] + q["b2"]) * w).sum().backward()
    for k in ("w1", "b1", "w2", "b2"):
        torch.testing.assert_close(pt[k].grad, q[k].grad, rtol=1e-12, atol=1e-12)
    soft = torch.softmax(logits / tau, -1)
    (soft * mask.grad).sum().backward()  # d/dlogits of <soft, dL/dmask>
    # chain to c2 (logits = x c1 c2): dL/dc2 = (x c1)^T dL/dlogits
    dlogits = logits.grad.flatten(-2)
    want_c2 = (x @ tt(p)["c1"]).T @ dlogits
    torch.testing.assert_close(pt["c2"].grad, want_c2, rtol=1e-10, atol=1e-10)
    assert pt["c1"].grad.abs().sum() > 0


# --------------------------------------------------------------------------------------
# the sparse QKV layer's properties
# --------------------------------------------------------------------------------------
def test_multiplicative_layer_formula(rng):
    p = qkv_params(rng)
    x = rng.normal(size=(5, D))
    want = np.einsum("ti,si,im->tsm", x, p["mul_d"], p["mul_e"]) + p["mul_b"].reshape(
        4, 4
    )
    np.testing.assert_allclose(R.multiplicative_layer(x, p, 4), want, rtol=1e-12)


def test_conv_formula_by_loops(rng):
    y = rng.normal(size=(5, 4, 3))  # n=5, S=4, M=3
    w = rng.normal(size=(2, 3, 3, 3))
    b = rng.normal(size=2)
    want = np.zeros((5, 4, 2))
    for t in range(5):
        for s in range(4):
            want[t, s] = b
            for a in range(3):
                for c in range(3):
                    tt_, ss = t + a - 2, s + c - 1
                    if 0 <= tt_ < 5 and 0 <= ss < 4:
                        want[t, s] += w[:, :, a, c] @ y[tt_, ss]
    np.testing.assert_allclose(R.causal_module_conv(y, w, b), want, rtol=1e-12)
    got = T.causal_module_conv(tt(y), tt(w), tt(b)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("face", ["np", "torch"])
def test_qkv_is_causal_with_a_window_of_kl(rng, face):
    p = qkv_params(rng, kl=3)
    x = rng.normal(size=(8, D))
    x2 = x.copy()
    x2[4] += 1.0
    run = (
        (lambda a: R.sparse_qkv(a, p, 4))
        if face == "np"
        else (lambda a: [o.numpy() for o in T.sparse_qkv(tt(a), tt(p), 4)])
    )
    for a, b in zip(run(x), run(x2)):
        np.testing.assert_array_equal(a[:4], b[:4])  # the past does not see token 4
        np.testing.assert_array_equal(a[7:], b[7:])  # beyond the window of 3
        assert np.abs(a[4:7] - b[4:7]).max(axis=1).min() > 0


def test_qkv_gradients_torch(rng):
    p = {k: v.requires_grad_(True) for k, v in tt(qkv_params(rng, d=4, s=2)).items()}
    x = tt(rng.normal(size=(1, 3, 4))).requires_grad_(True)

    def f(x, *vals):
        q = dict(zip(p, vals))
        return torch.cat([o.flatten() for o in T.sparse_qkv(x, q, 2)])

    assert torch.autograd.gradcheck(f, (x, *p.values()), fast_mode=True)


def test_ffn_gradcheck_dense_parts(rng):
    p = {k: v.requires_grad_(True) for k, v in tt(ffn_params(rng, 6, 8, 2)).items()}
    x = tt(rng.normal(size=(2, 6)))  # x also drives the controller: not the true
    g = tt(rng.gumbel(size=(2, 4, 2)))  # gradient there (straight-through), so fixed

    def f(w1, b1, w2, b2):
        q = dict(p, w1=w1, b1=b1, w2=w2, b2=b2)
        return T.sparse_ffn(x, q, 2, mode="train", gumbel=g, activation="gelu")

    assert torch.autograd.gradcheck(
        f, (p["w1"], p["b1"], p["w2"], p["b2"]), fast_mode=True
    )


# --------------------------------------------------------------------------------------
# bad input is named, the same way in both faces
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("face", ["np", "torch"])
def test_bad_input_named(rng, face):
    p = ffn_params(rng)
    x = rng.normal(size=(2, D))
    F_ = R if face == "np" else T
    c = (lambda a: a) if face == "np" else tt
    with pytest.raises(ValueError, match="block must divide d_ff = 32"):
        F_.sparse_ffn(c(x), c(p), 5)
    with pytest.raises(TypeError, match="block must be an int"):
        F_.controller_logits(c(x), c(p), 2.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        F_.sparse_ffn(c(x), c(p), BLOCK, mode="eval")
    with pytest.raises(ValueError, match="gumbel must be None when mode='infer'"):
        F_.sparse_ffn(c(x), c(p), BLOCK, gumbel=c(np.zeros((2, 8, 4))))
    with pytest.raises(ValueError, match=r"gumbel must have the controller logits"):
        F_.sparse_ffn(c(x), c(p), BLOCK, mode="train", gumbel=c(np.zeros((2, 4, 8))))
    with pytest.raises(ValueError, match="tau must be > 0"):
        F_.sparse_ffn(c(x), c(p), BLOCK, mode="train", tau=0.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        F_.dense_ffn(c(x), c(p), activation="tanh")
    bad = dict(p, w2=p["w2"][:, :3])
    with pytest.raises(ValueError, match=r"params\['w2'\] must have shape \(32, 16\)"):
        F_.sparse_ffn(c(x), c(bad), BLOCK)
    with pytest.raises(ValueError, match=r"params is missing 'c2'"):
        F_.sparse_ffn(c(x), c({k: v for k, v in p.items() if k != "c2"}), BLOCK)
    with pytest.raises(ValueError, match=r"params\['c1'\] must have shape \(d, r\)"):
        F_.controller_logits(c(rng.normal(size=(2, 8))), c(p), BLOCK)
    q = qkv_params(rng)
    with pytest.raises(ValueError, match="n_modules must divide d_model = 16"):
        F_.sparse_qkv(c(x), c(q), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., n, d\)"):
        F_.sparse_qkv(c(x[0]), c(q), 4)
    with pytest.raises(ValueError, match="ks .* must be odd"):
        F_.sparse_qkv(c(x), c(qkv_params(rng, ks=2)), 4)
    with pytest.raises(ValueError, match=r"params\['conv_wk'\] must have the kernel"):
        F_.sparse_qkv(c(x), c(dict(q, conv_wk=q["conv_wk"][:, :, :2])), 4)


def test_torch_face_takes_tensors_only(rng):
    p = ffn_params(rng)
    with pytest.raises(TypeError, match="x must be a NumPy array or torch tensor"):
        T.sparse_ffn([[1.0] * D], tt(p), BLOCK)
    with pytest.raises(TypeError, match=r"params\['w1'\] must be a torch tensor"):
        T.sparse_ffn(tt(rng.normal(size=(2, D))), p, BLOCK)


# --------------------------------------------------------------------------------------
# the modules (effx_lab.nm.layers)
# --------------------------------------------------------------------------------------
from effx_lab.models import lm  # noqa: E402
from effx_lab.nm import layers as L  # noqa: E402


def test_sparse_ffn_module_paths():
    m = L.SparseFFN(16, 32, 4, seed=3).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    p = {k: v.detach() for k, v in m.params.items()}
    assert p["c1"].shape == (16, 4)  # rank d_model // block
    m.eval()
    np.testing.assert_allclose(
        m(x).detach().numpy(),
        R.sparse_ffn(x.numpy(), {k: v.numpy() for k, v in p.items()}, 4),
        rtol=1e-12,
        atol=1e-12,
    )
    m.train()
    y = m(x)
    y.sum().backward()
    assert m.params["c2"].grad is not None and m.params["c2"].grad.abs().sum() > 0
    with torch.no_grad():  # no autograd: the inference path even in train() mode
        np.testing.assert_allclose(m(x).numpy(), m.eval()(x).detach().numpy())


def test_sparse_qkv_module_matches_face():
    m = L.SparseQKV(16, 4, (2, 3), seed=1).double()
    x = torch.randn(6, 16, dtype=torch.float64)
    p = {k: v.detach().numpy() for k, v in m.params.items()}
    for got, want in zip(m(x), R.sparse_qkv(x.numpy(), p, 4)):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_lm_registration_and_training_lowers_the_loss():
    from effx_lab.bench import limit_threads
    from effx_lab.models.training import evaluate, train

    assert "sparse_ffn" in lm.ffns() and "sparse_qkv" in lm.mixers()
    spec = lm.LMSpec(
        mixer="sparse_qkv",
        mixer_options={"n_heads": 2, "n_modules": 4},
        ffn="sparse_ffn",
        ffn_options={"block": 4, "d_ff": 64},
        d_model=32,
        n_layers=1,
        max_len=32,
    )
    model = lm.LM(spec, seed=0)
    assert {"c1", "c2", "mul_d", "conv_wq"} <= set(model.layers[0].keys())
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(0, 256, 16), 200)  # a periodic stream
    with limit_threads(1):  # small ops: one thread is fastest on a busy machine
        before = evaluate(model, tokens, seq_len=16, batch_size=8, max_batches=2,
                          seed=0)  # fmt: skip
        hist = train(model, tokens, steps=30, batch_size=8, seq_len=16, lr=1e-2,
                     progress=False)  # fmt: skip
        after = evaluate(model, tokens, seq_len=16, batch_size=8, max_batches=2,
                         seed=0)  # fmt: skip
    assert hist.steps == 30
    assert after < 0.5 * before  # a periodic stream: easy to learn


def test_lm_sparse_ffn_uses_inference_under_no_grad():
    spec = lm.LMSpec(ffn="sparse_ffn", ffn_options={"block": 4}, d_model=16,
                     n_layers=1, max_len=8, mixer_options={"n_heads": 2})  # fmt: skip
    model = lm.LM(spec, seed=1).double()
    tokens = torch.arange(8).view(1, 8)
    with torch.no_grad():
        a, b = model(tokens), model(tokens)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # no noise: deterministic
    c = model(tokens)  # autograd records: Gumbel noise, another draw each call
    d = model(tokens)
    assert not torch.equal(c, d)


@pytest.mark.parametrize("sparse_ffn,sparse_qkv", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_decode_steps_equal_the_full_sequence(sparse_ffn, sparse_qkv):
    m = L.decode_model(32, 64, 2, n_heads=4, block=8, n_modules=4, max_len=16,
                       sparse_ffn=bool(sparse_ffn),
                       sparse_qkv=bool(sparse_qkv))  # fmt: skip
    m = m.double()
    h = torch.randn(9, 32, dtype=torch.float64)
    full = m(h)
    m.reset(0)
    steps = torch.stack([m.step(h[i]) for i in range(9)])
    torch.testing.assert_close(steps, full, rtol=1e-12, atol=1e-12)
    assert m.position == 9


def test_decode_weight_bytes():
    d, d_ff, blk = 64, 256, 8
    dense = L.decode_model(d, d_ff, 1, n_heads=4, block=blk, n_modules=4,
                           sparse_ffn=False, sparse_qkv=False)  # fmt: skip
    ln, attn = 4 * d, 4 * d * d + 4 * d
    assert L.weight_bytes_per_token(dense) == 4 * (ln + attn + 2 * d * d_ff + d_ff + d)
    sparse = L.decode_model(d, d_ff, 1, n_heads=4, block=blk, n_modules=4,
                            sparse_ffn=True, sparse_qkv=False)  # fmt: skip
    k, r = d_ff // blk, d // blk
    ffn = r * (d + d_ff) + 2 * k * d + k + d
    assert L.weight_bytes_per_token(sparse) == 4 * (ln + attn + ffn)
    both = L.decode_model(d, d_ff, 1, n_heads=4, block=blk, n_modules=4)
    m_ = d // 4
    qkv = 4 * d + d * m_ + d + 3 * (m_ * m_ * 9 + m_)
    assert L.weight_bytes_per_token(both) == 4 * (ln + d * d + d + qkv + ffn)


def test_decode_step_time_runs():
    m = L.decode_model(32, 64, 1, n_heads=4, block=8, n_modules=4, max_len=8)
    t = L.decode_step_time(m, context=4, min_run_time=0.01, threads=1)
    assert 0 < t < 1.0 and m.position == 5


def test_layers_bad_input_named():
    with pytest.raises(ValueError, match="block must divide d_ff = 64"):
        L.SparseFFN(16, 64, 5)
    with pytest.raises(ValueError, match="n_modules must divide d_model = 16"):
        L.SparseQKV(16, 3)
    with pytest.raises(ValueError, match="ks .* must be odd"):
        L.init_sparse_qkv_params(16, 4, (3, 2))
    with pytest.raises(TypeError, match="kernel must be an int or a pair"):
        L.init_sparse_qkv_params(16, 4, "3")
    with pytest.raises(ValueError, match="causal must be True for the 'sparse_qkv'"):
        lm.LMSpec(mixer="sparse_qkv", causal=False, d_model=16)
        L.sparse_qkv_mixer(16, seed=0, causal=False)
    with pytest.raises(ValueError, match="n_heads must divide d_model = 32"):
        L.decode_model(32, 64, 1, n_heads=5)
    with pytest.raises(TypeError, match="model must be a DecodeModel"):
        L.decode_step_time(torch.nn.Linear(2, 2))
    m = L.decode_model(32, 64, 1, n_heads=4, block=8, n_modules=4, max_len=4)
    with pytest.raises(ValueError, match=r"h must be a tensor of shape \(32,\)"):
        m.step(torch.zeros(1, 32))
    with pytest.raises(ValueError, match="context must be an int"):
        m.reset(4)
    m.reset(3)
    m.step(torch.zeros(32))
    with pytest.raises(ValueError, match="the caches are full"):
        m.step(torch.zeros(32))
    with pytest.raises(TypeError, match="shape must be a tuple of ints"):
        L.gumbel_noise(3)


def test_nan_reaches_the_same_rows_in_both_faces(rng):
    """No face turns a NaN into a number: a NaN token gives NaN in its own FFN row
    (both modes) and in the QKV rows whose window holds it (t .. t + kl - 1)."""
    p = ffn_params(rng)
    x = rng.normal(size=(5, D))
    x[2, 3] = np.nan
    for mode in ("infer", "train"):
        a = R.sparse_ffn(x, p, BLOCK, mode=mode)
        b = T.sparse_ffn(tt(x), tt(p), BLOCK, mode=mode).numpy()
        for out in (a, b):
            assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, 0)).all()
    q = qkv_params(rng, kl=2)
    x = rng.normal(size=(6, D))
    x[1, 0] = np.nan
    for out in (*R.sparse_qkv(x, q, 4), *T.sparse_qkv(tt(x), tt(q), 4)):
        out = np.asarray(out)
        assert np.isnan(out[1:3]).all() and np.isfinite(out[[0, 3, 4, 5]]).all()


def test_decode_model_device_named():
    with pytest.raises(ValueError, match="device must name a torch device"):
        L.decode_model(32, 64, 1, n_heads=4, block=8, n_modules=4, device="tpu9")
