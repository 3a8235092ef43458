"""What the order of multiplication costs in attention (seed 001; Katharopoulos et al. 2020).

With ``Q, K, V`` of shape ``(m, d)``:

* queries first, ``(Q K^T) V``: ``m*d*m`` multiply-adds for ``Q K^T`` plus ``m*m*d`` for the product with
  ``V``: ``2 d m^2``, quadratic in the length ``m``;
* keys first, ``Q (K^T V)``: ``d*m*d`` for ``K^T V`` plus ``m*d*d``: ``2 m d^2``, linear in ``m``.

Softmax attention cannot use the second order (the softmax sits between the two products); a kernel
``phi(q).phi(k)`` can. The keys-first order wins when ``m > d``.
"""

from __future__ import annotations

from effx_lab._validate import check_choice, check_int

__all__ = ["attention_macs", "crossover_length"]

ORDERS = ("qk_first", "kv_first")


def attention_macs(m: int, d: int, order: str = "qk_first", e: int | None = None) -> int:
    """Multiply-adds of the two products of one attention head of length ``m`` and key width ``d``.

    ``e`` is the value width (``d`` by default). ``"qk_first"``: ``m*d*m + m*m*e``; ``"kv_first"``:
    ``d*m*e + m*d*e``. With ``e = d`` these are the seed's ``2 d m^2`` and ``2 m d^2``. (A FLOP count is
    twice this.)
    """
    m = check_int("m", m, min_value=1)
    d = check_int("d", d, min_value=1)
    e = d if e is None else check_int("e", e, min_value=1)
    check_choice("order", order, ORDERS)
    if order == "qk_first":
        return m * d * m + m * m * e
    return d * m * e + m * d * e


def crossover_length(d: int) -> int:
    """Smallest length ``m`` at which keys-first is strictly cheaper than queries-first (``m > d``)."""
    d = check_int("d", d, min_value=1)
    return d + 1
