"""SmoothQuant's migration strength measured on MiniLM (chapter 2, notebook 02.6).

The method itself (``smooth_scales``, ``smooth_weight``, ``smooth_activation``,
``fold_smoothing``, ``smoothquant_linear``) lives in the faces
(:mod:`effx_lab.quant.reference`, :mod:`effx_lab.quant.torch_ops`). This module holds
what 02.6 and its ``choose_alpha`` checker measure with it:

* :func:`smoothquant_error`: the relative output error ``||y_hat - y||^2 / ||y||^2`` of
  one linear layer in W8A8 (activations one scale per tensor), plain or smoothed at a
  given ``alpha``, with one weight scale per output channel (the course's setting) or
  per tensor (the setting of Xiao et al. 2023 for OPT and BLOOM);
* :func:`alpha_curves`: MiniLM's twelve LayerNorm-fed layers (query, key and value
  stacked, and FC1, in each of the six blocks), each an :class:`AlphaCurve`: that error
  at ``alpha = 0, 0.1, ..., 1`` (:data:`ALPHA_GRID`) on held-out tokens, measured when
  first asked for and remembered;
* :data:`NEAR_BEST`: how far above a layer's best error still counts as the flat bottom
  of its curve (the tolerance of ``check_choose_alpha``).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from effx_lab._validate import check_choice, check_float

__all__ = [
    "ALPHA_GRID",
    "NEAR_BEST",
    "AlphaCurve",
    "alpha_curves",
    "smoothquant_error",
]

#: The migration strengths at which :func:`alpha_curves` measures each layer:
#: 0, 0.1, ..., 1.
ALPHA_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)

#: An ``alpha`` is on the flat bottom of a layer's curve when the layer's error there is
#: at most ``1 + NEAR_BEST`` times its smallest error on :data:`ALPHA_GRID`. The curves
#: are flat near their minimum (two to four points of the grid lie within 25 % of it)
#: and steep towards the ends (at 0.5 the layers are 1.3 to 3 times their best, at 0 and
#: 1 more): this accepts any choice on the flat bottom and rejects both ends and the
#: paper's default, where they cost (notebook 02.6 prints the curves).
NEAR_BEST = 0.25

# The data of the measurement, the CPU recipe of notebook 02.6: max|X_j| over 16
# calibration sentences (seed 0); the layer inputs of 8 held-out sentences (every
# other one of 16, seed 1, cut to 32 tokens and sorted by length), their first 128 real
# tokens.
_CALIB_SENTENCES, _EVAL_SENTENCES, _EVAL_MAX_LENGTH, _EVAL_TOKENS = 16, 16, 32, 128

_WEIGHT_GRANULARITIES = ("channel", "tensor")


def smoothquant_error(
    x: Any,
    w: Any,
    b: Any,
    act_absmax: Any,
    alpha: float | None,
    *,
    weight_granularity: str = "channel",
) -> float:
    """The relative output error ``||y_hat - y||^2 / ||y||^2`` of a linear layer
    ``y = x w^T + b`` in W8A8, activations with one scale per tensor.

    ``alpha`` None: plain W8A8 (:func:`effx_lab.quant.torch_ops.w8a8_linear`); a float in
    ``[0, 1]``: SmoothQuant at that ``alpha`` with ``s`` from ``act_absmax`` (the
    activation divided by ``s``, the weight's columns multiplied by it, then the same
    W8A8; with ``weight_granularity="channel"`` that is
    :func:`effx_lab.quant.torch_ops.smoothquant_linear`). ``weight_granularity``:
    ``"channel"`` (one weight scale per output row, the course's setting) or
    ``"tensor"`` (one for the whole weight, the paper's setting for OPT and BLOOM).
    Torch tensors (``x [tokens, in]``, ``w [out, in]``, ``b [out]`` or None,
    ``act_absmax [in]``), as those functions take and validate them. The measure of
    :func:`alpha_curves` and of notebook 02.6.
    """
    import torch

    from effx_lab.numerics import relative_error

    from . import torch_ops as T

    if alpha is not None:
        alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    check_choice("weight_granularity", weight_granularity, _WEIGHT_GRANULARITIES)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch tensor [out, in], got {type(w).__name__}")
    y = torch.nn.functional.linear(x, w, b)
    if alpha is None:
        y_hat = T.w8a8_linear(x, w, b, act_granularity="tensor",
                              weight_granularity=weight_granularity)
    elif weight_granularity == "channel":
        y_hat = T.smoothquant_linear(
            x, w, b, alpha=alpha, act_absmax=act_absmax, act_granularity="tensor"
        )
    else:
        s = T.smooth_scales(act_absmax, w, alpha)
        y_hat = T.w8a8_linear(
            T.smooth_activation(x, s), T.smooth_weight(w, s), b,
            act_granularity="tensor", weight_granularity="tensor",
        )
    return relative_error(y_hat, y, squared=True)


def _read_only(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    out = np.array(a, dtype=np.float64)
    out.setflags(write=False)
    return out


class AlphaCurve:
    """One of MiniLM's LayerNorm-fed layers against SmoothQuant's ``alpha``.

    Made by :func:`alpha_curves`. ``layer``: its name (query, key and value together:
    ``"encoder.layer.3.attention.self (q, k, v)"``); ``act_absmax [in]``: ``max|X_j|``
    over the calibration tokens; ``weight [out, in]``: its weight (query, key and value
    stacked, since they share one ``s``), both float64 and read-only; ``errors[k]``: the
    relative output error ``||y_hat - y||^2 / ||y||^2`` of SmoothQuant W8A8 (activations
    one scale per tensor, weights one per output channel) at ``alphas[k]`` on held-out
    tokens; ``no_smoothing``: the same error of plain W8A8. The errors are measured when
    first asked for (one thread, a fraction of a second per layer), then remembered.
    ``tensors``: the layer's float32 ``(inputs, weight, bias, act_absmax)``, as
    :func:`smoothquant_error` takes them.
    """

    def __init__(
        self, layer: str, inputs: Any, weight: Any, bias: Any, act_absmax: Any
    ) -> None:
        self.layer = layer
        # float32 tensors, as the layer computes
        self.tensors = (inputs, weight, bias, act_absmax)
        self.act_absmax = _read_only(act_absmax)
        self.weight = _read_only(weight)
        self.alphas = ALPHA_GRID
        self._measured: dict[float | None, float] = {}

    def __repr__(self) -> str:
        return f"AlphaCurve({self.layer!r}, weight {tuple(self.weight.shape)})"

    def _error(self, alpha: float | None) -> float:
        if alpha not in self._measured:
            from effx_lab.bench import limit_threads

            # small tensors: one thread is fastest, and never oversubscribed
            with limit_threads(1):
                self._measured[alpha] = smoothquant_error(*self.tensors, alpha)
        return self._measured[alpha]

    @property
    def errors(self) -> np.ndarray:
        """The error at each ``alpha`` of :data:`ALPHA_GRID` (read-only)."""
        return _read_only([self._error(float(a)) for a in self.alphas])

    @property
    def no_smoothing(self) -> float:
        """The error of plain W8A8, without smoothing."""
        return self._error(None)

    @property
    def best_alpha(self) -> float:
        """The ``alpha`` of the grid with the smallest error."""
        return float(self.alphas[int(np.argmin(self.errors))])

    @property
    def best_error(self) -> float:
        """The smallest error on the grid."""
        return float(np.min(self.errors))

    @property
    def act_spread(self) -> float:
        """The largest ``max|X_j|`` over the median channel's (outlier strength)."""
        a = np.maximum(self.act_absmax, 1e-5)
        return float(a.max() / np.median(a))

    def near_best(self, tolerance: float = NEAR_BEST) -> tuple[float, float]:
        """The smallest and largest ``alpha`` of the grid within ``tolerance`` of the
        best error."""
        tolerance = check_float("tolerance", tolerance, min_value=0.0)
        errors = self.errors
        ok = self.alphas[errors <= (1.0 + tolerance) * errors.min()]
        return float(ok.min()), float(ok.max())

    def error_at(self, alpha: float) -> float:
        """The layer's error at any ``alpha`` in ``[0, 1]``, measured, remembered."""
        return self._error(check_float("alpha", alpha, min_value=0.0, max_value=1.0))


@functools.lru_cache(maxsize=1)
def alpha_curves() -> tuple[AlphaCurve, ...]:
    """MiniLM's twelve LayerNorm-fed layers against ``alpha`` (the ground truth of
    ``check_choose_alpha``).

    For each block ``i`` of MiniLM, the input of query, key and value (one ``s`` for the
    three, computed from their stacked weights: the foldable variant) and the input of
    FC1 (``intermediate.dense``): the W8A8 error of SmoothQuant at every ``alpha`` of
    :data:`ALPHA_GRID`, on the CPU, in float32, with ``max|X_j|`` from 16 calibration
    sentences and the error on 128 held-out tokens (the data of notebook 02.6 on a CPU).
    The inputs are recorded once per process (a second or two); each layer's errors are
    measured when first needed (a fraction of a second per layer), then remembered.
    """
    import torch

    from effx_lab import data
    from effx_lab.bench import limit_threads
    from effx_lab.models import load_minilm, surgery

    config, params_np = load_minilm()
    params = {k: torch.as_tensor(v) for k, v in params_np.items()}
    calib_ids, calib_mask = data.tokenize_sentences(
        data.calibration_sentences(_CALIB_SENTENCES, seed=0)
    )
    ids, mask = data.tokenize_sentences(
        data.eval_sentences(_EVAL_SENTENCES, seed=1), max_length=_EVAL_MAX_LENGTH
    )
    order = np.argsort(mask.sum(axis=1), kind="stable")
    with limit_threads(1):  # a small model on a small batch: one thread is fastest
        calib = surgery.record_minilm_linears(
            params, config, torch.as_tensor(calib_ids), torch.as_tensor(calib_mask),
            keep_inputs=False,
        )
        held_out = surgery.record_minilm_linears(
            params, config, torch.as_tensor(ids[order][::2]),
            torch.as_tensor(mask[order][::2]), max_tokens=_EVAL_TOKENS,
        )
    curves = []
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        qkv = [p + "attention.self." + k for k in ("query", "key", "value")]
        fc1 = [p + "intermediate.dense"]
        for label, group in ((p + "attention.self (q, k, v)", qkv), (fc1[0], fc1)):
            curves.append(AlphaCurve(
                label,
                held_out[group[0]]["inputs"].float(),
                torch.cat([params[g + ".weight"] for g in group]),
                torch.cat([params[g + ".bias"] for g in group]),
                calib[group[0]]["in_absmax"].float(),
            ))  # fmt: skip
    return tuple(curves)
