"""One Triton import guard for every kernel module of the course.

Triton publishes wheels for Linux only: a student on macOS or Windows, or anyone who installed the
package without the ``triton`` extra, has none. A kernel module must still import there, its kernels'
*source* must still be readable (the notebooks show it), and every call that would launch a kernel must
say why it cannot instead of failing somewhere inside. This module is the one place that knows how:

* :data:`triton` / :data:`tl` are the modules, or ``None`` without Triton; :data:`IMPORT_ERROR` says why;
* :func:`jit` is ``triton.jit`` with Triton and the identity without it (the function is never launched);
* :func:`kernel_source` gives a kernel's Python source either way (``inspect.getsource(kernel.fn)`` works
  only when Triton wrapped it);
* :func:`is_interpreted` / :func:`why_unavailable` tell whether kernels run here, and why not.

``import effx_lab`` must come before ``import triton`` (it switches on the CPU interpreter when there is no
GPU), so this module imports ``effx_lab.device`` first.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from typing import Any, Sequence

from effx_lab import device as _device  # first: sets TRITON_INTERPRET=1 when there is no GPU

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # macOS, Windows, or installed without the [triton] extra
    triton = None
    tl = None
    IMPORT_ERROR = (
        f"Triton is not installed ({exc}). It ships for Linux only: `pip install triton` there; on macOS "
        "and Windows the course uses the PyTorch versions instead"
    )

__all__ = [
    "IMPORT_ERROR", "compile_report", "dot_dtype", "is_interpreted", "jit", "kernel_source", "refuse_grad", "tl",
    "triton", "why_unavailable",
]


def refuse_grad(tensors: Sequence[Any], training: str) -> None:
    """The course's Triton kernels are forward-only: raise ``ValueError`` when autograd
    is recording and one of ``tensors`` (``None`` entries skipped) requires grad, naming
    ``training``, the differentiable function to use instead. Returning a result with no
    gradient would silently stop training."""
    import torch

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise ValueError(
            "the Triton kernel has no backward: inputs that require grad would get a "
            "result with no gradient; call it under torch.no_grad() or pass detached "
            f"tensors (use {training} for training)"
        )


def jit(fn):
    """``triton.jit(fn)`` when Triton is installed; otherwise ``fn`` unchanged (it is never launched)."""
    return triton.jit(fn) if triton is not None else fn


def kernel_source(kernel: Any) -> str:
    """The Python source of a kernel defined with :func:`jit`, with or without Triton installed.

    With Triton the kernel is a ``JITFunction`` (or the interpreter's wrapper) whose ``.fn`` is the plain
    function; without Triton it *is* the plain function. Either way the decorator line is included.
    """
    fn = getattr(kernel, "fn", kernel)
    if not callable(fn):
        raise TypeError(f"kernel must be a function defined with effx_lab._triton.jit, got {type(kernel).__name__}")
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise ValueError(f"the source of kernel {getattr(fn, '__name__', fn)!r} is not available: {exc}") from exc


def is_interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` was defined under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return type(kernel).__name__ == "InterpretedFunction"


def dot_dtype(dtype: Any, kernel: Any) -> Any:
    """The operand dtype of ``kernel``'s ``tl.dot`` for inputs of torch ``dtype``
    (float16, bfloat16 or float32): the input dtype, except bfloat16 in the CPU
    interpreter.

    Triton's interpreter stores bfloat16 as raw ``uint16`` bits and its ``tl.dot``
    multiplies those bits (triton-lang/triton#11584), so there the kernels feed their
    dots float32; compiled on a GPU, bfloat16 stays bfloat16.
    """
    import torch

    table = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
    if dtype not in table:
        raise TypeError(f"dtype must be torch.float16, bfloat16 or float32, got {dtype!r}")
    if dtype == torch.bfloat16 and is_interpreted(kernel):
        return tl.float32
    return table[dtype]


def why_unavailable(kernel: Any, module: str) -> str | None:
    """Why the kernels of ``module`` (represented by one of them, ``kernel``) cannot run here, or ``None``.

    They run with a CUDA GPU (compiled) or, without one, in Triton's CPU interpreter, which must have been
    switched on before the module defined its kernels.
    """
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if is_interpreted(kernel) or _device.has_cuda():
        return None
    return (
        f"no CUDA GPU here and Triton's CPU interpreter is off: TRITON_INTERPRET was not '1' when {module} was "
        "imported. Restart Python and import effx_lab before triton (or set TRITON_INTERPRET=1 in the environment)"
    )


# Run in a subprocess with TRITON_INTERPRET=0: a kernel defined for the interpreter
# cannot be compiled. argv: module, capabilities, case names.
_COMPILE_SCRIPT = r"""
import importlib, json, os, re, subprocess, sys, tempfile
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
K = importlib.import_module(sys.argv[1])
caps, wanted = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = []
for case in [c for c in K._report_cases() if c["name"] in wanted]:
    fn = getattr(K, case["kernel"])
    consts = {k: (eval(v) if isinstance(v, str) and v.startswith("tl.") else v)
              for k, v in case["constexprs"].items()}
    sig = dict(case["signature"])
    sig.update({k: "constexpr" for k in consts})
    params = [p.name for p in fn.params]
    # torch allocations are 16-byte aligned: tell the compiler, as a launch would
    attrs = {(params.index(k),): [["tt.divisibility", 16]]
             for k, v in case["signature"].items() if v.startswith("*")}
    for cap in caps:
        row = {"name": case["name"], "target": f"sm_{cap}"}
        try:
            src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
            opts = {"num_warps": case["num_warps"], "num_stages": case.get("num_stages", 3),
                    "enable_fp_fusion": case.get("fp_fusion", True)}
            ck = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=opts)
            arch, ptxas = sm_arch_from_capability(cap), get_ptxas(cap).path
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "k.ptx")
                with open(path, "w") as f:
                    f.write(ck.asm["ptx"])
                cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2",
                       f"--gpu-name={arch}", path, "-o", os.path.join(tmp, "k.cubin")]
                log = subprocess.run(cmd, capture_output=True, text=True,
                                     check=True).stderr
            num = lambda pattern: int(re.search(pattern, log).group(1))
            ptx = ck.asm["ptx"]
            mma = "mma.sync" if "mma.sync" in ptx else None
            mma = "wgmma" if "wgmma" in ptx else mma
            row.update(ok=True, registers=num(r"Used (\d+) registers"),
                       spill_bytes=num(r"(\d+) bytes spill stores")
                       + num(r"(\d+) bytes spill loads"),
                       stack_bytes=num(r"(\d+) bytes stack frame"),
                       shared_bytes=int(ck.metadata.shared),
                       num_warps=case["num_warps"], mma=mma)
        except Exception as exc:  # report, do not crash
            last = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ""
            row.update(ok=False, error=f"{type(exc).__name__}: {last}")
        out.append(row)
print("@@REPORT@@" + json.dumps(out))
"""


def compile_report(
    module: str,
    case_names: Sequence[str],
    capabilities: Sequence[int] = (80, 90),
    match: str | None = None,
    timeout: float = 600.0,
) -> list[dict]:
    """Compile the report cases of kernel module ``module`` for NVIDIA GPUs, without a GPU.

    ``module`` (e.g. ``"effx_lab.sparse.kernels"``) defines ``_report_cases()``: a list of dicts with
    ``name``, ``kernel`` (the name of a :func:`jit` kernel), ``signature``, ``constexprs``, ``num_warps``
    and optionally ``num_stages`` (3) and ``fp_fusion`` (True); ``case_names`` are their names (the
    module's ``compile_report`` passes them). ``capabilities``: compute capabilities as ints (75 = T4,
    80 = A100, 89 = L4, 90 = H100); ``match``: keep only the cases whose name contains this text;
    ``timeout`` in seconds. Runs in a subprocess with ``TRITON_INTERPRET=0`` (kernels defined for the
    interpreter cannot be compiled) and asks the ``ptxas`` shipped with Triton (``-v``, Triton's flags)
    for the resources. One dict per (case, target): ``name``, ``target``, ``ok``, and when it compiled
    ``registers`` (per thread), ``spill_bytes`` (spill stores + loads per thread; 0 is what you want),
    ``stack_bytes``, ``shared_bytes`` (per program, Triton's count), ``num_warps`` and ``mma`` (the
    tensor-core instruction emitted: ``"mma.sync"`` (sm_80+), ``"wgmma"`` (sm_90) or ``None``: float32
    dots run on FMA units); otherwise ``error``.
    """
    from effx_lab._validate import check_int, describe

    if not isinstance(module, str) or not module:
        raise TypeError(f"module must be a module name such as 'effx_lab.sparse.kernels', got {describe(module)}")
    if isinstance(case_names, str) or not isinstance(case_names, Sequence):
        raise TypeError(f"case_names must be a list of case names, got {describe(case_names)}")
    if not isinstance(capabilities, (tuple, list)) or not capabilities:
        raise TypeError(
            f"capabilities must be a non-empty tuple of ints such as (80, 90), got {describe(capabilities)}"
        )
    caps = [check_int("capabilities[i]", c, min_value=70, max_value=120) for c in capabilities]
    if match is not None and not isinstance(match, str):
        raise TypeError(f"match must be None or a str, got {describe(match)}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if IMPORT_ERROR is not None:
        raise RuntimeError(IMPORT_ERROR)
    names = [n for n in case_names if match is None or match in n]
    if not names:
        raise ValueError(f"match={match!r} selects no case; the cases are {list(case_names)}")
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder that holds effx_lab/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache  # a fresh cache: nothing from an interpreted run is reused
        proc = subprocess.run(
            [sys.executable, "-c", _COMPILE_SCRIPT, module, json.dumps(caps), json.dumps(names)],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )  # fmt: skip
    marker = "@@REPORT@@"
    for line in proc.stdout.splitlines():
        if line.startswith(marker):
            return json.loads(line[len(marker):])
    raise RuntimeError(f"compile_report's subprocess failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
