"""Why 07.3's FLASH-Quad once stayed flat at ~3.05 nats/byte, and the guard against it.

With the paper's initialisation (query/key scales ``gamma ~ N(0, 0.02)``, offsets and the
relative bias 0) the GAU scores ``q k^T / n + b`` start near 1e-7, where ``relu^2`` is flat:
the gradient reaching ``gamma`` is ~1e-14, far below AdamW's ``eps = 1e-8``, so the attention
never switches on and a GAU layer (output ``(U * A V) W_o``) outputs nothing. FLASH escapes
through its global part (linear attention, no ``relu^2``). ``rel_bias_init=0.1`` (what 07.3
uses) starts every score at 0.1, where ``relu^2`` has slope 0.2.

Also: the 1/n of ``relu2_attention`` sits inside the square, so each entry is scaled by
1/n^2 and a row sum falls like 1/n (07.1's table of placements).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effx_lab.data import get_batch
from effx_lab.data.pools import token_splits
from effx_lab.flash import reference as FR
from effx_lab.flash import torch_ops as FT
from effx_lab.flash.models import LMConfig, build_lm
from effx_lab.flash.train import train_lm

# 07.3's quality / ablation models
NB73 = dict(d_model=64, n_layers=1, n_heads=4, s=64, chunk_size=32, max_len=128)
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, the one models.training.train uses


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grad_norms(kind: str, rel_bias_init: float) -> dict[str, list[float]]:
    """Norm of d loss / d weight for every layer's gamma, relative bias and projections, at
    init, on one batch of the corpus."""
    model = build_lm(LMConfig(kind=kind, rel_bias_init=rel_bias_init, **NB73), seed=0)
    train_tokens, _ = token_splits()
    x, y = get_batch(train_tokens, 8, 128, np.random.default_rng(0))
    logits = model(torch.as_tensor(x))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), torch.as_tensor(y).reshape(-1))
    assert abs(loss.item() - math.log(256)) < 0.2  # untrained: close to uniform over bytes
    loss.backward()
    keys = ("gamma", "rel_bias", "w_uvz", "w_o")
    return {key: [layer[key].grad.norm().item() for layer in model.layers] for key in keys}


def test_flash_quad_is_dead_at_the_papers_init_and_alive_with_a_small_bias() -> None:
    dead = _grad_norms("flash_quad", 0.0)
    alive = _grad_norms("flash_quad", 0.1)
    flash = _grad_norms("flash", 0.0)
    # measured at bias 0: every GAU weight gets 1e-13 or less (A ~ 1e-14 multiplies all
    # of them), below AdamW's eps by five orders of magnitude
    for key in ("gamma", "w_uvz", "w_o"):
        assert max(dead[key]) < 1e-3 * ADAM_EPS, (key, dead)
    assert max(dead["rel_bias"]) < ADAM_EPS, dead  # measured 4e-10, 2e-9
    # the 0.1 bias: measured ~1e-2 for the projections, ~5e-4 for the bias
    for key in ("rel_bias", "w_uvz", "w_o"):
        assert min(alive[key]) > 1e3 * ADAM_EPS, (key, alive)
    # FLASH's global part (no relu^2) gives a first-order gradient even at bias 0:
    # measured 3e-7 to 7e-7 for gamma and the projections
    for key in ("gamma", "w_uvz", "w_o"):
        assert min(flash[key]) > 10 * ADAM_EPS, (key, flash)


@pytest.mark.slow
def test_flash_quad_learns_with_the_small_bias_and_stays_flat_without() -> None:
    settings = dict(
        steps=100, batch_size=8, seq_len=128, lr=1e-2, warmup=0.0, min_lr_ratio=0.5,
        eval_every=50, threads=1, seed=0, progress=False,
    )  # fmt: skip
    flat = train_lm(LMConfig(kind="flash_quad", **NB73), **settings)
    alive = train_lm(LMConfig(kind="flash_quad", rel_bias_init=0.1, **NB73), **settings)
    # measured: 3.07, 3.05 (flat: embeddings and head alone) against 2.81, 2.32
    assert all(h["val_loss"] > 2.95 for h in flat.history[1:]), flat.history
    assert alive.final_val_loss < 2.6, alive.history
    assert alive.final_val_loss < flat.final_val_loss - 0.4


def test_relu2_attention_scales_each_entry_by_one_over_n_squared() -> None:
    rng = np.random.default_rng(0)
    s = 128
    for n in (64, 256):
        q, k = rng.normal(size=(n, s)), rng.normal(size=(n, s))
        want = np.maximum(q @ k.T, 0.0) ** 2 / n**2  # relu²(QK^T/n) = relu²(QK^T)/n²
        np.testing.assert_allclose(FR.relu2_attention(q, k), want, rtol=1e-12, atol=0)
        got_t = FT.relu2_attention(torch.from_numpy(q), torch.from_numpy(k)).numpy()
        np.testing.assert_allclose(got_t, want, rtol=1e-12, atol=0)


def test_row_sums_under_each_placement_of_the_length_normaliser() -> None:
    """07.1's table: E[relu(q.k)^2] = s/2 for unit-variance entries, so a row sums to about
    s/(2n) with 1/n inside the square, s/2 with 1/n outside, 1/2 with 1/(ns)."""
    rng = np.random.default_rng(1)
    s = 128
    for n in (64, 1024):
        q, k = rng.normal(size=(n, s)), rng.normal(size=(n, s))
        inside = FR.relu2_attention(q, k).sum(axis=-1).mean()
        relu2 = np.maximum(q @ k.T, 0.0) ** 2
        outside = (relu2 / n).sum(axis=-1).mean()
        su = (relu2 / (n * s)).sum(axis=-1).mean()
        # the row means average n entries over n rows: within 20% of the expectation
        assert inside == pytest.approx(s / (2 * n), rel=0.2)
        assert outside == pytest.approx(s / 2, rel=0.2)
        assert su == pytest.approx(0.5, rel=0.2)
