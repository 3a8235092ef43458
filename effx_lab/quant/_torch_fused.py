"""Weight-only int8 / int4 linears that never build the float weight matrix (chapter 2,
the decode path).

``w8a16_linear`` and ``w4a16_linear`` of :mod:`._torch_gptq` call :func:`w8a16` /
:func:`w4a16` here. The readable form, "dequantize the whole matrix, then one GEMM",
writes ``N x K`` floats (4x the int8 bytes) and reads them back: more memory traffic
than the float32 GEMV it is meant to beat. Two paths avoid that:

* **Fused (decode, ``x`` has at most :data:`DECODE_MAX_ROWS` rows, CPU).** The product
  written as an elementwise multiply and a sum,
  ``y[m, n] = sum_k x[m, k] * float(q[n, k]) * s[n]``, compiled by ``torch.compile``
  (TorchInductor): the int -> float conversion, the multiply and the reduction become
  one vectorised loop over the int8 (or packed int4) bytes, read once from memory.
  Inductor does not fuse the matmul-after-dequantize form (the GEMM is a library call),
  so the form matters. int4:
  the low and the high nibble of a byte are the codes of the even and the odd input;
  ``x`` is split into its even and odd halves first (two contiguous ``[M, K/2]``
  vectors: a strided read inside the loop would not vectorise), and each group's partial
  sum is scaled inside the loop. Accumulation is in float32 (float64 for float64 ``x``),
  also for bfloat16/float16 ``x``; the result has x's dtype.
* **Blocked (decode rows, up to :data:`BLOCKED_MAX_ROWS`, when the fused path does not
  apply: compiling off or failed, or weights too small to be worth a compile).** Row
  blocks of ``W`` (:data:`BLOCK_BYTES` of floats at a time) are dequantized into one
  reused buffer that stays in cache and multiplied into their slice of the output: one
  GEMM per block, the weights read from memory once, as integers.
* **Plain (prefill: more than :data:`BLOCKED_MAX_ROWS` rows).** Dequantize the whole
  matrix, then one GEMM: compute-bound, and one large GEMM beats many thin ones.

Compiling: once per (kind, dtype, ``M``, ``N``, ``K``, groups), ``dynamic=False``, each
shape with its own copy of the function (so dynamo's per-function recompile limit never
sends a shape to the eager form, which *would* build an ``[M, N, K]`` temporary), at
most :data:`MAX_COMPILED` shapes (then blocked). Weights under :data:`FUSED_MIN_WEIGHTS`
elements stay blocked (cache-resident, and not worth a compile). If compiling fails (no
C++ compiler, a platform quirk, any exception), the blocked path is used from then on
and a ``RuntimeWarning`` says why, once; :func:`fused_backend` reports ``"compiled"`` or
``"eager: <reason>"``. Set the environment variable ``EFFX_NO_COMPILE=1`` to force the
blocked path (read at each call).

CUDA (and any non-CPU device): the plain dequantize-then-GEMM form (cuBLAS; the course's
Triton kernels in :mod:`effx_lab.quant.kernels` are the fused path there). A call that
needs a gradient with respect to ``x`` also takes that form (the fused and blocked paths
are inference-only).
"""

from __future__ import annotations

import os
import threading
import types
import warnings

import torch
import torch.nn.functional as F

from effx_lab._validate import check_int

__all__ = [
    "BLOCK_BYTES",
    "BLOCKED_MAX_ROWS",
    "DECODE_MAX_ROWS",
    "ENV_NO_COMPILE",
    "FUSED_MIN_WEIGHTS",
    "MAX_COMPILED",
    "fused_backend",
    "route",
    "w4a16",
    "w8a16",
]

#: environment variable that forces the blocked (eager) path when set to anything but
#: "", "0"
ENV_NO_COMPILE = "EFFX_NO_COMPILE"
#: the fused kernel serves inputs with at most this many rows (decode). Its loop reads
#: ``W`` once per row of ``x``; measured at 4096 x 4096 (loaded 2-core CPU): at 8 rows
#: it still matched the blocked int8 path and beat the blocked int4 path 2.3x
DECODE_MAX_ROWS = 8
#: weights with fewer elements stay on the blocked path (they sit in cache; a compile
#: would not pay)
FUSED_MIN_WEIGHTS = 2**20
#: bytes of dequantized floats per row block of the blocked path (stays in L2 / LLC)
BLOCK_BYTES = 2 * 2**20
#: the blocked path serves at most this many rows; more rows (prefill) dequantize the
#: whole matrix, then one GEMM (measured at 4096 x 4096, 2 threads: at 256 rows one big
#: GEMM beat 32 blocked ones 2.2-3.3x; at 16 rows blocked int4 was 1.0-1.5x slower, at
#: 1-8 rows blocked was 1.0-3.2x faster than the whole-matrix dequantize)
BLOCKED_MAX_ROWS = 8
#: at most this many compiled shapes per process; later shapes take the blocked path
MAX_COMPILED = 32

_lock = threading.Lock()
_compiled: dict[tuple, object] = {}
_state: dict[str, str | None] = {"failure": None, "warned": None}


def _env_off() -> bool:
    return os.environ.get(ENV_NO_COMPILE, "").strip() not in ("", "0")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------- the fused expressions
def _w8_expr(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``[M, K] x [N, K] -> [M, N]``: multiply-and-sum, one pass over the int8 bytes
    once compiled."""
    acc = _acc_dtype(x.dtype)
    y = (x.to(acc)[:, None, :] * q.to(acc)[None, :, :]).sum(-1) * s.to(acc)
    return y.to(x.dtype)


def _w4_expr(
    xe: torch.Tensor, xo: torch.Tensor, p: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """``xe``/``xo`` ``[M, K/2]`` (even / odd inputs), ``p`` uint8 ``[N, K/2]``, ``s``
    ``[N, G]`` -> ``[M, N]`` in ``xe``'s dtype (float32 or float64: the caller
    converts)."""
    m, half = xe.shape
    n, groups = s.shape
    hg = half // groups  # bytes per group
    lo = ((p & 15).to(xe.dtype) - 8).view(1, n, groups, hg)
    hi = ((p >> 4).to(xe.dtype) - 8).view(1, n, groups, hg)
    xe4 = xe.view(m, 1, groups, hg)
    xo4 = xo.view(m, 1, groups, hg)
    return ((xe4 * lo + xo4 * hi) * s.to(xe.dtype)[None, :, :, None]).sum((-1, -2))


def _fresh(fn):
    """A copy of ``fn`` with its own code object: dynamo keeps its compiled entries per
    code object."""
    code = fn.__code__.replace()
    return types.FunctionType(
        code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _record_failure(reason: str) -> None:
    with _lock:
        if _state["failure"] is None:
            _state["failure"] = reason
        first = _state["warned"] is None
        _state["warned"] = reason
    if first:
        warnings.warn(
            "effx_lab.quant: torch.compile is not used for the fused int8/int4 decode "
            f"path ({reason}); falling back to the blocked eager path (same results, "
            "slower).",
            RuntimeWarning,
            stacklevel=4,
        )


def _get_compiled(key: tuple, expr):
    """The compiled function for ``key`` (compiled lazily on its first call), or
    ``None`` (blocked path)."""
    with _lock:
        fn = _compiled.get(key)
        if fn is not None or len(_compiled) >= MAX_COMPILED:
            return fn
        try:
            fn = torch.compile(_fresh(expr), dynamic=False, fullgraph=True)
        except Exception as exc:  # noqa: BLE001 - e.g. a Python torch can't compile for
            fn = None
            why = f"{type(exc).__name__}: {_first_line(exc)}"
            reason = f"torch.compile refused it ({why})"
        else:
            _compiled[key] = fn
            return fn
    _record_failure(reason)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _run_compiled(key: tuple, expr, args: tuple) -> torch.Tensor | None:
    """Run the compiled ``expr`` on ``args``; ``None`` when compiling is off or failed
    (the caller goes blocked)."""
    if _state["failure"] is not None:
        return None
    fn = _get_compiled(key, expr)
    if fn is None:
        return None
    try:
        with torch.no_grad():
            return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the compiler's failure, not the caller's
        with _lock:
            _compiled.pop(key, None)
        _record_failure(f"compiling failed ({type(exc).__name__}: {_first_line(exc)})")
        return None


def _use_fused(x2: torch.Tensor, weight_elems: int, needs_grad: bool) -> bool:
    m = x2.shape[0]
    return (
        x2.device.type == "cpu"
        and not needs_grad
        and 1 <= m <= DECODE_MAX_ROWS
        and weight_elems >= FUSED_MIN_WEIGHTS
        and x2.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and _state["failure"] is None
        and not _env_off()
    )


def fused_backend(device: str | torch.device = "cpu", probe: bool = True) -> str:
    """Which path a decode-sized ``w8a16_linear`` / ``w4a16_linear`` takes on
    ``device``: ``"compiled"`` (the fused ``torch.compile`` kernel) or ``"eager:
    <reason>"`` (the blocked path).

    On CPU, when nothing has been compiled yet in this process, ``probe=True`` compiles
    a tiny int8 kernel once to find out (seconds: the first compile of a process loads
    TorchInductor; a failure is remembered and warned about once); ``probe=False``
    answers ``"untried"`` instead."""
    if not isinstance(probe, bool):
        raise TypeError(f"probe must be a bool, got {type(probe).__name__}")
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}"
            ) from exc
    if not isinstance(device, torch.device):
        got = type(device).__name__
        raise TypeError(f"device must be a str or torch.device, got {got}")
    if device.type != "cpu":
        return (
            f"eager: on {device.type} the dequantize-then-matmul path is used (the "
            "fused path there is effx_lab.quant.kernels' Triton kernels)"
        )
    if _env_off():
        return f"eager: {ENV_NO_COMPILE}={os.environ.get(ENV_NO_COMPILE)} is set"
    if _state["failure"] is None and not _compiled:
        if not probe:
            return "untried"
        x = torch.zeros(1, 16)
        q = torch.zeros(16, 16, dtype=torch.int8)
        key = ("probe", torch.float32, 1, 16, 16, 1)
        _run_compiled(key, _w8_expr, (x, q, torch.ones(16)))
    if _state["failure"] is not None:
        return f"eager: {_state['failure']}"
    return "compiled"


def route(rows: int, weight_elems: int, device: str | torch.device = "cpu") -> str:
    """The path a call with ``rows`` rows of ``x`` and a weight of ``weight_elems``
    elements takes on ``device`` (float ``x``, no gradient): ``"fused (compiled)"``,
    ``"blocked (eager)"``, ``"blocked (eager: <reason>)"`` or ``"dequantize + matmul"``
    (prefill, or not CPU)."""
    rows = check_int("rows", rows, min_value=0)
    weight_elems = check_int("weight_elems", weight_elems, min_value=1)
    if torch.device(device).type != "cpu":
        return "dequantize + matmul"
    if rows > BLOCKED_MAX_ROWS:
        return "dequantize + matmul"
    if not (1 <= rows <= DECODE_MAX_ROWS and weight_elems >= FUSED_MIN_WEIGHTS):
        return "blocked (eager)"
    backend = fused_backend(device)
    return "fused (compiled)" if backend == "compiled" else f"blocked ({backend})"


# ------------------------------------------------------------- blocked and plain paths
def _block_rows(k: int, dtype: torch.dtype) -> int:
    return max(1, BLOCK_BYTES // (k * torch.empty((), dtype=dtype).element_size()))


def _w8_blocked(x2: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    dtype = x2.dtype
    rows = _block_rows(k, dtype)
    if rows >= n:
        return F.linear(x2, q.to(dtype)) * s.to(dtype)
    buf = torch.empty((rows, k), dtype=dtype, device=q.device)
    # y^T: its row blocks are contiguous
    out_t = torch.empty((n, x2.shape[0]), dtype=dtype, device=x2.device)
    xt = x2.t()
    for i in range(0, n, rows):
        r = min(rows, n - i)
        b = buf[:r]
        b.copy_(q[i : i + r])
        torch.mm(b, xt, out=out_t[i : i + r])
    return out_t.t() * s.to(dtype)


def _dequant4_into(buf: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(code - 8) * scale`` of packed rows ``p [r, K/2]`` written into ``buf [r, K]``
    (x's dtype)."""
    r, half = p.shape
    pairs = buf.view(r, half, 2)
    pairs[..., 0].copy_(p & 0x0F)
    pairs[..., 1].copy_(p >> 4)
    groups = s.shape[1]
    buf.view(r, groups, 2 * half // groups).sub_(8).mul_(s.to(buf.dtype).unsqueeze(-1))
    return buf


def _w4_blocked(x2: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, half = p.shape
    k = 2 * half
    dtype = x2.dtype
    rows = min(n, _block_rows(k, dtype))
    buf = torch.empty((rows, k), dtype=dtype, device=p.device)
    if rows >= n:
        return F.linear(x2, _dequant4_into(buf, p, s))
    out_t = torch.empty((n, x2.shape[0]), dtype=dtype, device=x2.device)
    xt = x2.t()
    for i in range(0, n, rows):
        r = min(rows, n - i)
        block = _dequant4_into(buf[:r], p[i : i + r], s[i : i + r])
        torch.mm(block, xt, out=out_t[i : i + r])
    return out_t.t()


def _w4_plain(x2: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Dequantize the whole matrix, then one GEMM (differentiable in ``x``; the form
    used on CUDA)."""
    n, half = p.shape
    w = torch.empty((n, 2 * half), dtype=x2.dtype, device=p.device)
    return F.linear(x2, _dequant4_into(w, p, s))


# ------------------------------------------------------------- entry points (no checks)
def w8a16(x2: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(x2 @ q^T) * s`` for ``x2 [M, K]`` (float), int8 ``q [N, K]``, ``s [N]``, in
    x2's dtype, by the fastest path that applies (module docstring). Inputs are assumed
    validated by the caller."""
    needs_grad = torch.is_grad_enabled() and x2.requires_grad
    n, k = q.shape
    if _use_fused(x2, n * k, needs_grad):
        key = ("int8", x2.dtype, x2.shape[0], n, k, 1)
        args = (x2.contiguous(), q.contiguous(), s.contiguous())
        y = _run_compiled(key, _w8_expr, args)
        if y is not None:
            return y
    if x2.device.type != "cpu" or needs_grad or x2.shape[0] > BLOCKED_MAX_ROWS:
        return F.linear(x2, q.to(x2.dtype)) * s.to(x2.dtype)
    return _w8_blocked(x2, q, s)


def w4a16(x2: torch.Tensor, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x2 @ W^T`` for ``x2 [M, K]`` (float), packed int4 ``p`` uint8 ``[N, K/2]`` (low
    nibble: even input, code + 8) and group scales ``s [N, G]``, in x2's dtype, by the
    fastest path that applies. Inputs are assumed validated by the caller."""
    needs_grad = torch.is_grad_enabled() and x2.requires_grad
    n, half = p.shape
    if _use_fused(x2, 2 * n * half, needs_grad) and half % s.shape[1] == 0:
        acc = _acc_dtype(x2.dtype)
        pairs = x2.to(acc).reshape(x2.shape[0], half, 2)
        xe, xo = pairs[..., 0].contiguous(), pairs[..., 1].contiguous()
        key = ("int4", x2.dtype, x2.shape[0], n, 2 * half, s.shape[1])
        y = _run_compiled(key, _w4_expr, (xe, xo, p.contiguous(), s.contiguous()))
        if y is not None:
            return y.to(x2.dtype)
    if x2.device.type != "cpu" or needs_grad or x2.shape[0] > BLOCKED_MAX_ROWS:
        return _w4_plain(x2, p, s)
    return _w4_blocked(x2, p, s)
