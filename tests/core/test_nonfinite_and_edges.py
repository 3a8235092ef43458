"""Non-finite values and numeric edge cases, checked across the three faces of a function.

Faces: the NumPy reference (``reference.py``), its PyTorch twin (``torch_ops.py``) and, where one exists, the
Triton kernel (``kernels.py``, run in Triton's CPU interpreter without a GPU: sizes stay tiny). The policy
under test is the section "Non-finite values" of docs/ARCHITECTURE.md:

* a kernel never turns a NaN into a finite number; a NaN in an activation (query, key, value, the float input
  of a weight-only matmul) reaches the same output rows in every face;
* quantizers reject non-finite input with a ``ValueError`` naming the argument; the matmul and dequantize
  entry points check nothing per call (no device read-back on a decode path), so a NaN scale propagates;
* the simulated quantized layers (W8A8, LLM.int8, ZeroQuant, SmoothQuant), which quantize their activation on
  every call, are matmuls: a NaN/inf token gives a NaN output row, the other rows are unchanged, and the torch
  face reads nothing computed from the activation back.

Also here: GPTQ's positive-definiteness rule (the same decision in NumPy and torch), ``compute_qparams``
on values near the float32 limit, and the output dtype of ``mixed_chunk_attention`` with a float64 bias.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.flash import reference as FR
from effx_lab.flash import torch_ops as FT
from effx_lab.quant import reference as QR
from effx_lab.quant import torch_ops as QT

try:
    from effx_lab.flash import kernels as FK
    from effx_lab.quant import kernels as QK

    _FLASH_KERNEL = FK.available()
    _QUANT_KERNELS = QK.available()
except ImportError:  # pragma: no cover - Triton is installed wherever the course's tests run
    FK = QK = None
    _FLASH_KERNEL = _QUANT_KERNELS = False

needs_flash_kernel = pytest.mark.skipif(not _FLASH_KERNEL, reason="the Triton FLASH kernel cannot run here")
needs_quant_kernels = pytest.mark.skipif(not _QUANT_KERNELS, reason="the Triton quant kernels cannot run here")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _t(a: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True)).to(device)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ============================================================================ FLASH: NaN propagation
N, S, E, C = 40, 16, 16, 16  # three chunks of 16, the last one padded
NAMES = ("quad_q", "quad_k", "lin_q", "lin_k", "v")


def _flash_arrays(seed: int, n: int = N) -> list[np.ndarray]:
    """float32 (so the kernel sees the same values) quad_q, quad_k, lin_q, lin_k, v of one batch element."""
    rng = np.random.default_rng(seed)
    shapes = [(1, n, S)] * 4 + [(1, n, E)]
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def _with_nan(arrays: list[np.ndarray], which: int, row: int, col: int = 3) -> list[np.ndarray]:
    out = [a.copy() for a in arrays]
    out[which][0, row, col] = np.nan
    return out


def _three_faces(arrays, chunk, causal, mode, rel_bias=None, kernel=True):
    """NaN patterns (``np.isnan`` of the output) of the reference, torch_ops and (if asked) the kernel."""
    bias_t = None if rel_bias is None else _t(rel_bias)
    ref = FR.mixed_chunk_attention(*arrays, chunk, causal=causal, rel_bias=rel_bias, mode=mode)
    tor = _np(FT.mixed_chunk_attention(*map(_t, arrays), chunk, causal=causal, rel_bias=bias_t, mode=mode))
    faces = {"reference": np.isnan(ref), "torch_ops": np.isnan(tor)}
    if kernel:
        dev_bias = None if bias_t is None else bias_t.to(DEVICE)
        with torch.no_grad():
            out = FK.mixed_chunk_attention_triton(
                *(_t(a, DEVICE) for a in arrays), chunk, causal=causal, rel_bias=dev_bias, mode=mode
            )
        faces["triton"] = np.isnan(_np(out))
    return faces


def _rows(mask: np.ndarray) -> list[int]:
    """Output rows holding at least one NaN."""
    return np.flatnonzero(mask[0].any(axis=-1)).tolist()


@needs_flash_kernel
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("which", range(5), ids=NAMES)
def test_flash_nan_input_gives_nan_in_the_same_places_in_every_face(which, causal):
    t = 21  # row 5 of chunk 1
    faces = _three_faces(_with_nan(_flash_arrays(0), which, t), C, causal, "mixed")
    ref = faces["reference"]
    assert ref.any()
    for name, mask in faces.items():
        assert np.array_equal(mask, ref), f"{name}: NaN rows {_rows(mask)}, reference {_rows(ref)}"
    # what "depends on" means, for the two inputs whose reach is easy to state
    if NAMES[which] in ("quad_q", "lin_q"):  # a query only reaches its own row
        assert _rows(ref) == [t]
    if NAMES[which] == "quad_k":  # a key reaches its chunk's rows, causal: only rows >= t (never the past)
        assert _rows(ref) == (list(range(t, 32)) if causal else list(range(16, 32)))
    if NAMES[which] == "lin_k":  # the state: causal, the chunks after t's (rows 32-39); non-causal, all rows
        assert _rows(ref) == (list(range(32, N)) if causal else list(range(N)))


@needs_flash_kernel
@pytest.mark.parametrize("mode", ["local", "global"])
def test_flash_nan_value_in_local_and_global_modes(mode):
    faces = _three_faces(_with_nan(_flash_arrays(1), 4, 21), C, True, mode)
    assert faces["reference"].any()
    for name, mask in faces.items():
        assert np.array_equal(mask, faces["reference"]), name


@needs_flash_kernel
@pytest.mark.parametrize("causal", [True, False])
def test_flash_nan_relative_bias_weight(causal):
    # weight of offset j - i = -1 is NaN: every row i >= 1 of each chunk meets it (a past key, never masked)
    bias = np.random.default_rng(2).standard_normal(7).astype(np.float32)
    bias[3 - 1] = np.nan
    faces = _three_faces(_flash_arrays(2), C, causal, "local", rel_bias=bias)
    expected = [i for i in range(N) if i % C != 0]
    for name, mask in faces.items():
        assert _rows(mask) == expected, name


@needs_flash_kernel
def test_flash_kernel_tiles_keep_every_dependent_nan(monkeypatch):
    # c = 32 with 16-row tiles: causal query tiles skip the key tiles right of the diagonal. A NaN value at
    # t = 21 (tile 1 of chunk 0) must reach every row that depends on it (rows >= 21: the local part in chunk
    # 0 and the state of the later chunk). The dense faces multiply it by the masked zeros of rows < 21 too
    # (0 * NaN = NaN), so they mark the whole chunk; the kernel never visits that tile for rows 0-15.
    orig = FK._launch_config
    monkeypatch.setattr(FK, "_launch_config", lambda c, *args: (16,) + orig(c, *args)[1:])
    t = 21
    faces = _three_faces(_with_nan(_flash_arrays(3), 4, t), 32, True, "mixed")
    kernel, ref = _rows(faces["triton"]), _rows(faces["reference"])
    assert set(range(t, N)) <= set(kernel) <= set(ref)
    assert _rows(faces["torch_ops"]) == ref
    # a NaN key at t does not reach the past in any face (masked scores are replaced, not multiplied)
    faces = _three_faces(_with_nan(_flash_arrays(3), 1, t), 32, True, "mixed")
    for name, mask in faces.items():
        assert _rows(mask) == list(range(t, 32)), name


def test_flash_reference_causal_mask_does_not_leak_future_nan():
    # relu2_attention itself: a NaN key j makes column j NaN, the causal mask must zero it for rows i < j
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    k[3, 0] = np.nan
    for mod, conv in ((FR, lambda a: a), (FT, _t)):
        a = np.asarray(mod.relu2_attention(conv(q), conv(k), causal=True))
        assert np.isnan(a[3:, 3]).all() and not np.isnan(np.delete(a, 3, axis=1)).any()
        assert (a[:3, 3] == 0).all()


# ============================================================================ FLASH: output dtype
@pytest.mark.parametrize("main, bias", [(np.float32, np.float64), (np.float64, np.float32), (np.float32, np.float32)])
def test_mixed_chunk_attention_dtype_follows_the_main_inputs(main, bias):
    arrays = [a.astype(main) for a in _flash_arrays(5)]
    w = np.random.default_rng(6).standard_normal(7).astype(bias)
    out = FR.mixed_chunk_attention(*arrays, C, causal=True, rel_bias=w)
    tor = FT.mixed_chunk_attention(*map(_t, arrays), C, causal=True, rel_bias=_t(w))
    assert out.dtype == main
    assert tor.dtype == torch.from_numpy(np.zeros(1, dtype=main)).dtype
    # and the values are still right: against float64 throughout (the bias as the main dtype rounds it)
    exact = FR.mixed_chunk_attention(
        *(a.astype(np.float64) for a in arrays), C, causal=True, rel_bias=w.astype(main).astype(np.float64)
    )
    tol = 1e-5 if main == np.float32 else 1e-12
    np.testing.assert_allclose(out, exact, rtol=tol, atol=tol * np.abs(exact).max())
    np.testing.assert_allclose(_np(tor), exact, rtol=tol, atol=tol * np.abs(exact).max())


# ============================================================================ quant: weight-only matmuls
def _weight_only_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x [3, 32]`` float32 with a NaN in row 1 and a weight ``w [16, 32]`` (quantized by each face)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    x[1, 5] = np.nan
    return x, w


def _weight_only_faces(scheme: str, x: np.ndarray, w: np.ndarray, edit_scales=None) -> dict[str, np.ndarray]:
    """Outputs of ``scheme`` ("w4a16" / "w8a16") in every face; ``edit_scales(scales)`` edits the scales."""
    edit = edit_scales or (lambda s: s)
    out = {}
    if scheme == "w4a16":
        packed, scales = QR.quantize_weight_int4(w, group_size=16)
        out["reference"] = QR.w4a16_linear(x, packed, edit(scales.copy()), 16)
        tp, ts = QT.quantize_weight_int4(_t(w), group_size=16)
        out["torch_ops"] = _np(QT.w4a16_linear(_t(x), tp, edit(ts.clone()), 16))
        if _QUANT_KERNELS:
            res = QK.w4a16_matmul(_t(x, DEVICE), tp.to(DEVICE), edit(ts.clone()).to(DEVICE), 16)
            out["triton"] = _np(res)
    else:
        q, scales = QR.quantize_weight_int8(w)
        out["reference"] = QR.w8a16_linear(x, q, edit(scales.copy()))
        tq, ts = QT.quantize_weight_int8(_t(w))
        out["torch_ops"] = _np(QT.w8a16_linear(_t(x), tq, edit(ts.clone())))
        if _QUANT_KERNELS:
            out["triton"] = _np(QK.w8a16_matmul(_t(x, DEVICE), tq.to(DEVICE), edit(ts.clone()).to(DEVICE)))
    return out


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16"])
def test_weight_only_nan_activation_gives_nan_rows_in_every_face(scheme):
    x, w = _weight_only_case()
    faces = _weight_only_faces(scheme, x, w)
    assert len(faces) == (3 if _QUANT_KERNELS else 2)
    clean = _weight_only_faces(scheme, np.nan_to_num(x, nan=0.0), w)
    for name, y in faces.items():
        assert y.shape == (3, 16)
        assert np.isnan(y[1]).all(), name  # the token with a NaN: its whole output row
        assert np.isfinite(y[[0, 2]]).all(), name  # the other tokens are untouched
        np.testing.assert_allclose(y[[0, 2]], clean[name][[0, 2]], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16"])
def test_weight_only_nan_scale_propagates_to_its_output_column(scheme):
    # scales are validated where they are made; a NaN put there later is not checked per call but must never
    # come out as a finite number
    x, w = _weight_only_case()
    x = np.nan_to_num(x, nan=0.0)

    def poison(s):
        s[2] = np.nan if isinstance(s, np.ndarray) else float("nan")
        return s

    for name, y in _weight_only_faces(scheme, x, w, edit_scales=poison).items():
        assert np.isnan(y[:, 2]).all(), name
        assert np.isfinite(np.delete(y, 2, axis=1)).all(), name


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16"])
def test_weight_only_torch_linears_read_nothing_back_per_call(scheme):
    # a value read back to Python (bool(), .item(), int(), ...) is a device sync on CUDA: a decode loop calls
    # these once per layer and token, so they must not validate values, only shapes and dtypes
    reads = {"__bool__", "item", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu"}
    seen: list[str] = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    x, w = _weight_only_case()
    if scheme == "w4a16":
        packed, scales = QT.quantize_weight_int4(_t(w), group_size=16)
        with Record():
            QT.w4a16_linear(_t(x), packed, scales, 16)
    else:
        q, scales = QT.quantize_weight_int8(_t(w))
        with Record():
            QT.w8a16_linear(_t(x), q, scales)
    assert seen and not reads.intersection(seen), sorted(reads.intersection(seen))


# ============================================================================ quant: simulated W8A8 layers
# The layers that quantize their activation on every call (LLM.int8's vector-wise and mixed-precision
# linears, simulated W8A8, ZeroQuant, SmoothQuant) are matmuls: a NaN or inf in token i gives a NaN in every
# output of row i, as a float matmul does for a NaN, and leaves the other rows as they would be without that
# token; the torch face decides this with masks, never by reading a value back (a device sync per layer).
SIM_LAYERS = {  # test id: (function, keyword arguments made by kwargs(conv) for the face's array type)
    "vectorwise": ("vectorwise_linear", lambda c: {}),
    "vectorwise_4bit": ("vectorwise_linear", lambda c: {"bits": 4}),
    "llm_int8": ("llm_int8_linear", lambda c: {"threshold": 2.5}),
    "llm_int8_inf": ("llm_int8_linear", lambda c: {"threshold": float("inf")}),
    "llm_int8_zero": ("llm_int8_linear", lambda c: {"threshold": 0.0}),
    "w8a8": ("w8a8_linear", lambda c: {}),
    "w8a8_tensor": ("w8a8_linear", lambda c: {"act_granularity": "tensor", "weight_granularity": "tensor"}),
    "zeroquant": ("zeroquant_linear", lambda c: {"group_size": 8, "w_bits": 4}),
    "zeroquant_rows": ("zeroquant_linear", lambda c: {"group_size": None}),
    "smoothquant": ("smoothquant_linear", lambda c: {}),
    "smoothquant_token": ("smoothquant_linear", lambda c: {"act_granularity": "token", "alpha": 0.8}),
    "smoothquant_calibrated": ("smoothquant_linear", lambda c: {"act_absmax": c(np.linspace(0.5, 20.0, 32))}),
}
BAD_SPOTS = {"regular_column": (0, 1, 5), "outlier_column": (1, 2, 3)}  # (batch, token, feature) of x [2, 3, 32]


def _sim_case(seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``x [2, 3, 32]`` with two large feature columns (3, 17), ``w [24, 32]``, ``b [24]``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 32))
    x[..., [3, 17]] *= 8.0
    return x, rng.standard_normal((24, 32)) / 6.0, rng.standard_normal(24)


def _sim_faces(layer: str, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    fn, kwargs = SIM_LAYERS[layer]
    return {
        "reference": getattr(QR, fn)(x, w, b, **kwargs(lambda a: a)),
        "torch_ops": _np(getattr(QT, fn)(_t(x), _t(w), _t(b), **kwargs(_t))),
    }


@pytest.mark.parametrize("spot", list(BAD_SPOTS))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("layer", list(SIM_LAYERS))
def test_simulated_w8a8_layers_non_finite_activation_gives_a_nan_row(layer, value, spot):
    x, w, b = _sim_case()
    x[BAD_SPOTS[spot]] = value
    row = BAD_SPOTS[spot][0] * 3 + BAD_SPOTS[spot][1]  # the token's row in x.reshape(-1, 32)
    others = [r for r in range(6) if r != row]
    clean = _sim_faces(layer, x.reshape(-1, 32)[others], w, b)  # the same call on the other tokens alone
    faces = _sim_faces(layer, x, w, b)
    for name, y in faces.items():
        assert y.shape == (2, 3, 24) and y.dtype == np.float64, name
        y2 = y.reshape(-1, 24)
        assert np.isnan(y2[row]).all(), name  # the token with a NaN/inf: NaN in its whole output row
        assert np.isfinite(y2[others]).all(), name  # the other tokens: finite ...
        np.testing.assert_allclose(y2[others], clean[name], rtol=1e-12, atol=1e-12, err_msg=name)  # ... unchanged
    assert np.array_equal(np.isnan(faces["reference"]), np.isnan(faces["torch_ops"]))
    np.testing.assert_allclose(faces["reference"], faces["torch_ops"], rtol=1e-10, atol=1e-10)  # NaN == NaN here


@pytest.mark.parametrize("layer", ["vectorwise", "w8a8_tensor", "smoothquant"])
def test_simulated_w8a8_layers_every_token_non_finite(layer):
    # nothing finite left to calibrate on: every row NaN (no error, no finite number made up)
    x, w, b = _sim_case()
    x[:, :, 0] = np.nan
    x[1, 2, 4] = np.inf
    for name, y in _sim_faces(layer, x, w, b).items():
        assert np.isnan(y).all(), name


def test_simulated_w8a8_layers_float32_nan_row():
    # the compute dtype float32 (and float16 in torch): the same rows
    x, w, b = (a.astype(np.float32) for a in _sim_case())
    x[0, 2, 7] = np.nan
    for fn, kwargs in SIM_LAYERS.values():
        y = getattr(QR, fn)(x, w, b, **kwargs(lambda a: a))
        for dtype in (torch.float32, torch.float16):
            y_t = getattr(QT, fn)(_t(x).to(dtype), _t(w).to(dtype), _t(b).to(dtype), **kwargs(_t))
            assert y_t.dtype == dtype
            assert np.array_equal(np.isnan(_np(y_t.float())), np.isnan(y)), (fn, dtype)
        assert np.isnan(y[0, 2]).all() and np.isfinite(np.delete(y.reshape(-1, 24), 2, axis=0)).all(), fn


_READS = {"__bool__", "item", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu"}


class _ReadsOf(TorchFunctionMode):
    """Records every read-back to Python (``bool()``, ``.item()``, ``int()``, ...) of a tensor computed from
    ``source``: tensors made by an op with a marked input are marked, as is the target of an in-place op."""

    def __init__(self, source: torch.Tensor):
        super().__init__()
        self.marked = {id(source)}
        self.alive = [source]  # keeps every marked tensor alive, so no other tensor can reuse its id
        self.reads: list[str] = []
        self.calls = 0

    def _mark(self, obj) -> None:
        for t in torch.utils._pytree.tree_flatten(obj)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self.marked:
                self.marked.add(id(t))
                self.alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        self.calls += 1
        leaves = torch.utils._pytree.tree_flatten((args, kwargs))[0]
        hit = any(isinstance(t, torch.Tensor) and id(t) in self.marked for t in leaves)
        if hit and name in _READS:
            self.reads.append(name)
        out = func(*args, **kwargs)
        if hit:
            self._mark(out)
            if name.endswith("_") and args:  # in place (add_, masked_fill_, __iadd__, __setitem__, ...)
                self._mark(args[0])
            self._mark(kwargs.get("out"))
        return out


@pytest.mark.parametrize("layer", list(SIM_LAYERS))
def test_simulated_w8a8_torch_layers_read_nothing_back_from_the_activation(layer):
    # the activation changes every call (a decode loop: once per layer and token); reading a value computed
    # from it back to Python is a device sync on CUDA. The weight, bias and act_absmax are still validated
    # (they are made once; their reads are not recorded here)
    x, w, b = _sim_case()
    x[0, 1, 5] = np.nan
    xt = _t(x)
    fn, kwargs = SIM_LAYERS[layer]
    with _ReadsOf(xt) as mode:
        y = getattr(QT, fn)(xt, _t(w), _t(b), **kwargs(_t))
    if fn == "llm_int8_linear":  # the number of outlier columns shapes both parts: one read, inherent to it
        assert mode.calls and len(mode.reads) == 1, sorted(set(mode.reads))
    else:
        assert mode.calls and not mode.reads, sorted(set(mode.reads))
    assert torch.isnan(y[0, 1]).all()
    # the recorder does see a read-back of the activation: the standalone quantizer validates its input
    with _ReadsOf(xt) as control:
        with pytest.raises(ValueError, match="^x must contain only finite values"):
            QT.absmax_quantize(xt)
    assert "__bool__" in control.reads


# ============================================================================ quant: Triton epilogues
@needs_quant_kernels
def test_int8_gemm_nan_scales_and_bias_propagate():
    rng = np.random.default_rng(7)
    a = torch.tensor(rng.integers(-127, 128, (4, 32)), dtype=torch.int8, device=DEVICE)
    b = torch.tensor(rng.integers(-127, 128, (16, 32)), dtype=torch.int8, device=DEVICE)
    sa = torch.rand(4, device=DEVICE) + 0.5
    sb = torch.rand(16, device=DEVICE) + 0.5
    bias = torch.randn(16, device=DEVICE)
    sa[1], sb[5], bias[9] = float("nan"), float("nan"), float("nan")
    y = _np(QK.int8_gemm(a, b, sa, sb, bias))
    bad = np.zeros(y.shape, dtype=bool)
    bad[1, :], bad[:, 5], bad[:, 9] = True, True, True
    assert np.array_equal(np.isnan(y), bad)


@needs_quant_kernels
@pytest.mark.parametrize("groups", [False, True])
def test_dequantize_nan_scale_gives_nan_row(groups):
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    if groups:
        q, s = QK.quantize_groups(x, 8)
        s[2, 1] = float("nan")
        out = _np(QK.dequantize_groups(q, s))
        bad = np.zeros(out.shape, dtype=bool)
        bad[2, 8:16] = True
    else:
        q, s = QK.quantize_rows(x)
        s[2] = float("nan")
        out = _np(QK.dequantize_rows(q, s))
        bad = np.zeros(out.shape, dtype=bool)
        bad[2] = True
    assert np.array_equal(np.isnan(out), bad)


# ============================================================================ quant: quantizers reject
def _poisoned(h: np.ndarray, value: float) -> np.ndarray:
    out = h.copy()
    out[3, 5] = out[5, 3] = value
    return out


def _quantizer_calls():
    """(id, call(module, conv, bad), argument name): every function that makes integers from floats."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((8, 16))
    h = QR.gptq_hessian(rng.standard_normal((64, 16)))
    return [
        ("compute_qparams", lambda m, c, bad: m.compute_qparams(c(bad)), "x"),
        ("quantize", lambda m, c, bad: m.quantize(c(bad), m.compute_qparams(c(w))), "x"),
        ("fake_quantize", lambda m, c, bad: m.fake_quantize(c(bad), 4, False, "channel", axis=0), "x"),
        ("absmax_quantize", lambda m, c, bad: m.absmax_quantize(c(bad)), "x"),
        ("quantize_weight_int4", lambda m, c, bad: m.quantize_weight_int4(c(bad), 8), "w"),
        ("quantize_weight_int8", lambda m, c, bad: m.quantize_weight_int8(c(bad)), "w"),
        ("rtn_quantize_weight", lambda m, c, bad: m.rtn_quantize_weight(c(bad), 4, 8), "w"),
        ("gptq_quantize w", lambda m, c, bad: m.gptq_quantize(c(bad), c(h)), "w"),
        ("gptq_quantize h", lambda m, c, bad: m.gptq_quantize(c(w), c(_poisoned(h, bad[3, 5]))), "h"),
        ("gptq_hessian", lambda m, c, bad: m.gptq_hessian(c(bad)), "x"),
        ("gobo_quantize", lambda m, c, bad: m.gobo_quantize(c(np.concatenate([bad] * 4))), "w"),
        ("peg_fake_quantize", lambda m, c, bad: m.peg_fake_quantize(c(bad), 2), "x"),
        # the simulated W8A8 layers quantize their activation on every call and propagate a NaN in it (tests
        # above); what is made once, the weight, bias and calibrated act_absmax, is still validated
        ("vectorwise_linear", lambda m, c, bad: m.vectorwise_linear(c(w), c(bad)), "w"),
        ("llm_int8_linear", lambda m, c, bad: m.llm_int8_linear(c(w), c(bad)), "w"),
        ("w8a8_linear b", lambda m, c, bad: m.w8a8_linear(c(w), c(w), c(bad[3, :8])), "b"),
        ("zeroquant_linear", lambda m, c, bad: m.zeroquant_linear(c(w), c(bad), group_size=None), "w"),
        ("smoothquant_linear", lambda m, c, bad: m.smoothquant_linear(c(w), c(w), act_absmax=c(bad[3])), "act_absmax"),
    ]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("face", ["reference", "torch_ops"])
@pytest.mark.parametrize("call", _quantizer_calls(), ids=lambda c: c[0])
def test_quantizers_reject_non_finite_input_naming_the_argument(call, face, value):
    _, fn, arg = call
    mod, conv = (QR, lambda a: a) if face == "reference" else (QT, _t)
    bad = np.random.default_rng(10).standard_normal((8, 16))
    bad[3, 5] = value
    with pytest.raises(ValueError, match=rf"^{arg} must contain only finite values"):
        fn(mod, conv, bad)


@needs_quant_kernels
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_triton_quantizers_reject_non_finite_input(value):
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    x[2, 3] = value
    with pytest.raises(ValueError, match="^x must contain only finite values"):
        QK.quantize_rows(x)
    with pytest.raises(ValueError, match="^x must contain only finite values"):
        QK.quantize_groups(x, 8)


def test_qparams_built_by_hand_reject_a_nan_scale():
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        QR.QParams(np.array([[np.nan]]), np.zeros((1, 1), dtype=np.int32), 8, True, "tensor", 0)


# ============================================================================ GPTQ: positive definiteness
def _gptq_faces(w: np.ndarray, h: np.ndarray, damp: float) -> dict[str, object]:
    """What each face does: the exception (type, message) it raises, or "ok"."""
    out = {}
    for name, call in (
        ("reference", lambda: QR.gptq_quantize(w, h, damp=damp)),
        ("torch_ops", lambda: QT.gptq_quantize(_t(w), _t(h), damp=damp)),
    ):
        try:
            call()
            out[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - the test compares what is raised
            out[name] = (type(exc), str(exc))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [4, 8, 16, 64])
def test_gptq_identical_columns_without_damping_raise_in_both_faces(n, dtype):
    # the two faces used to disagree on some of these seeds (one LAPACK factorisation happened to succeed)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((64, n)).astype(dtype)
        x[:, 3] = x[:, 1]
        w = rng.standard_normal((4, n)).astype(dtype)
        h = QR.gptq_hessian(x)
        faces = _gptq_faces(w, h, damp=0.0)
        for name, got in faces.items():
            assert got != "ok", f"{name} accepted a singular h (seed {seed})"
            kind, msg = got
            assert kind is ValueError, (name, msg)
            assert "not positive definite" in msg and "damp > 0" in msg, (name, msg)
            assert "linear combination" in msg, (name, msg)
        # and with the default damping both succeed
        assert set(_gptq_faces(w, h, damp=0.01).values()) == {"ok"}


def test_gptq_nearly_dependent_but_positive_definite_h_is_accepted_by_both():
    # column 3 = column 1 plus a little noise: ill-conditioned, still positive definite well above rounding
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((64, 8))
        x[:, 3] = x[:, 1] + 1e-4 * rng.standard_normal(64)
        w = rng.standard_normal((4, 8))
        assert set(_gptq_faces(w, QR.gptq_hessian(x), damp=0.0).values()) == {"ok"}


# ============================================================================ compute_qparams near the limit
F32_MAX = float(np.finfo(np.float32).max)
LARGE = [
    [-3e38, 3e38, 1.0, -2.5],
    [-F32_MAX, F32_MAX, 0.0, 1e30],
    [F32_MAX, 0.5 * F32_MAX, 1.0, 0.0],
    [-F32_MAX, -1e38, 2.0, 3.0],
]


@pytest.mark.parametrize("face", ["reference", "torch_ops"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 8])
@pytest.mark.parametrize("values", LARGE, ids=["3e38", "max", "max-positive", "max-negative"])
def test_compute_qparams_near_float32_max(values, bits, symmetric, face):
    mod, conv = (QR, lambda a: a) if face == "reference" else (QT, _t)
    x = np.array(values, dtype=np.float32)[None, :].repeat(2, axis=0)
    x[1] = x[1] / 2.0**100  # a second, ordinary channel
    for granularity in ("tensor", "channel"):
        qp = mod.compute_qparams(conv(x), bits, symmetric, granularity, axis=0)
        scale = np.asarray(qp.scale, dtype=np.float64)
        assert np.isfinite(scale).all() and (scale > 0).all()
        x_hat = np.asarray(mod.dequantize(mod.quantize(conv(x), qp), qp), dtype=np.float64)
        assert np.isfinite(x_hat).all()
        # every value within one grid step (half a step, except where the grid had to be shortened to fit
        # float32: the top of a range that only a non-integer zero point could cover exactly)
        step = np.broadcast_to(scale, x.shape)
        assert (np.abs(x_hat - x.astype(np.float64)) <= step * (1 + 1e-6)).all()
        fq = np.asarray(mod.fake_quantize(conv(x), bits, symmetric, granularity, axis=0), dtype=np.float64)
        np.testing.assert_allclose(fq, x_hat, rtol=1e-6, atol=0)


@pytest.mark.parametrize("face", ["reference", "torch_ops"])
def test_compute_qparams_near_the_limit_of_float64_and_float16(face):
    mod, conv = (QR, lambda a: a) if face == "reference" else (QT, _t)
    for dtype in (np.float64, np.float16):
        big = float(np.finfo(dtype).max)
        x = np.array([-big, big, 1.0, 0.0], dtype=dtype)
        for symmetric in (True, False):
            qp = mod.compute_qparams(conv(x), 8, symmetric)
            assert np.isfinite(np.asarray(qp.scale, dtype=np.float64)).all()
            fq = np.asarray(mod.fake_quantize(conv(x), 8, symmetric))
            assert fq.dtype == dtype and np.isfinite(fq).all()


@pytest.mark.parametrize("face", ["reference", "torch_ops"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_compute_qparams_ordinary_values_keep_the_min_max_scale(face, symmetric):
    # the handling of the limit must leave ordinary ranges alone: scale = (hi - lo) / (qmax - qmin) (affine)
    # or max |x| / qmax (symmetric), here checked in float64 with float32 accuracy
    mod, conv = (QR, lambda a: a) if face == "reference" else (QT, _t)
    x = np.random.default_rng(12).standard_normal((6, 10)).astype(np.float32) * 3
    x[2] *= 1e30  # large, but far from the limit
    qp = mod.compute_qparams(conv(x), 8, symmetric, "channel", axis=0)
    x64 = x.astype(np.float64)
    lo = np.minimum(x64.min(axis=1, keepdims=True), 0)
    hi = np.maximum(x64.max(axis=1, keepdims=True), 0)
    expected = np.maximum(-lo, hi) / 127 if symmetric else (hi - lo) / 255
    np.testing.assert_allclose(np.asarray(qp.scale, dtype=np.float64), expected, rtol=1e-6, atol=0)


@needs_quant_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits", [8, 6])
def test_triton_quantize_rows_at_the_dtype_limit_matches_the_reference(dtype, bits):
    # a row whose absmax is the dtype's largest value: max / qmax can round up so far that qmax * scale
    # overflows; the kernel must lower it like compute_qparams, and dequantize to finite values
    big = float(torch.finfo(dtype).max)
    x = torch.tensor([[big, -0.5 * big, 1.0, 0.0], [3.0, -1.0, 0.5, 0.25]], dtype=dtype)
    q, scale = QK.quantize_rows(x.to(DEVICE), bits=bits)
    xr = x.numpy()
    qp = QR.compute_qparams(xr, bits, True, "channel", axis=0)
    np.testing.assert_array_equal(_np(q), QR.quantize(xr, qp))
    np.testing.assert_array_equal(_np(scale), qp.scale[:, 0])
    x_hat = _np(QK.dequantize_rows(q, scale, dtype=dtype))
    assert np.isfinite(x_hat).all()
