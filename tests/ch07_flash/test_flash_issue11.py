"""effx_lab.flash.costs.mixing_crossover: the first length at which FLASH's token mixing
needs fewer FLOPs than softmax attention's (the prediction 07.3 puts next to the
measured crossover), against a brute-force search over layer_flops."""
from __future__ import annotations

import pytest

from effx_lab.flash import costs as C


def _cheaper(n, d_model, expansion, s, chunk_size):
    flash = C.layer_flops(
        "flash", n, d_model, expansion=expansion, s=s, chunk_size=chunk_size
    )["mixing"]
    return flash < C.layer_flops("transformer", n, d_model)["mixing"]


def _brute(d_model, expansion, s, chunk_size):
    n = 1
    while not _cheaper(n, d_model, expansion, s, chunk_size):
        n += 1
    return n


@pytest.mark.parametrize(
    "d_model, expansion, s, chunk_size",
    [
        (256, 2, 128, 256),  # 07.3's shapes
        (768, 2, 128, 256),  # the paper's FLASH
        (4096, 1, 32, 1024),  # the crossover falls inside the first (padded) chunk
        (64, 2, 64, 64),
        (16, 3, 8, 1),  # c = 1: no padding
        (1, 1, 1, 1),
        (100, 2, 100, 77),
        (32, 4, 128, 512),
    ],
)
def test_mixing_crossover_is_the_first_cheaper_length(d_model, expansion, s,
                                                      chunk_size):
    got = C.mixing_crossover(
        d_model, expansion=expansion, s=s, chunk_size=chunk_size
    )
    assert isinstance(got, int)
    assert got == _brute(d_model, expansion, s, chunk_size)
    assert _cheaper(got, d_model, expansion, s, chunk_size)
    assert got == 1 or not _cheaper(got - 1, d_model, expansion, s, chunk_size)


def test_mixing_crossover_at_the_course_shapes_and_after_it():
    assert C.mixing_crossover(256) == 666  # the defaults: e = 2d, s = 128, c = 256
    assert C.mixing_crossover(768) == 641
    for d_model, first in ((256, 666), (768, 641)):  # FLASH stays cheaper after it
        assert all(_cheaper(n, d_model, 2, 128, 256) for n in range(first, 4 * 256 + 2))
        assert all(_cheaper(n, d_model, 2, 128, 256) for n in (2048, 4096, 8192, 8193))
    # padding matters: without it the crossover would be (c(s + e) + 2se) / 2d = 576
    assert C.mixing_crossover(256) != (256 * 640 + 2 * 128 * 512) // 512 + 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"d_model": 0}, ValueError, "d_model"),
        ({"d_model": 2.5}, TypeError, "d_model"),
        ({"d_model": 64, "expansion": 0}, ValueError, "expansion"),
        ({"d_model": 64, "s": -1}, ValueError, "s must"),
        ({"d_model": 64, "chunk_size": 0}, ValueError, "chunk_size"),
        ({"d_model": 64, "chunk_size": "256"}, TypeError, "chunk_size"),
        ({"d_model": True}, TypeError, "d_model"),
    ],
)
def test_mixing_crossover_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        C.mixing_crossover(**kwargs)
