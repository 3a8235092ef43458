"""The package's import structure (docs/ARCHITECTURE.md), read from the source with
``ast``.

Four rules, each with a checker below and a test that feeds the checker a synthetic
violation (rule e):

(a) **Layers.** Chapters import shared code, never each other; shared code never imports
    a chapter. The core (the modules ``effx_lab/*.py``) and the shared packages
    (:data:`SHARED_PACKAGES`) are shared; the chapter packages are listed in
    :data:`CHAPTER_PACKAGES`. Every import counts, also one inside a function: a lazy
    import is still a dependency. The driver modules (:data:`DRIVERS`) run every chapter
    (the command line, the GPU check, ``python -m effx_lab.bench``): they may import
    anything, and only a driver imports a driver.
(b) **Private names stay in their package.** ``from effx_lab.attention.params import
    _init_bytes`` in ``effx_lab.flash`` is a violation, and so are ``from effx_lab.quant
    import _np_gptq`` (a private module) and ``AT._transformer_layer`` (a private
    attribute of a module of another package); within one package anything goes. The
    core counts as one package. Its private-prefixed top-level modules
    (``effx_lab/_*.py``: ``_validate``, the argument checks, and ``_triton``, the one
    Triton import guard) are the core's internals shared with every package on purpose:
    the underscore keeps them out of the students' API, not out of the packages. Any
    package may import them and their public names; a name starting with ``_`` inside
    them stays private to the core.
(c) **Twin faces.** Every package with a ``reference.py`` (NumPy) and a ``torch_ops.py``
    (PyTorch) exports the same ``__all__`` from both, in the same order, and every
    exported function or class takes parameters of the same names and kinds in both
    (defaults may differ). Torch-only names are listed in :data:`TORCH_ONLY` and
    torch-only keyword-only parameters (``device=``) in :data:`TORCH_ONLY_PARAMS`, each
    with its reason.
(d) **No import cycles** among effx_lab modules. The graph holds the imports that run
    when a module is imported: module level, including ``try``/``if`` blocks and class
    bodies. Imports inside a function body run when the function is called, after every
    module finished importing, so they are left out (rule a still counts them); so are
    ``if TYPE_CHECKING:`` blocks, which never run. An edge goes to the module named
    (``from pkg import mod`` to ``pkg.mod`` when that is a module, else to ``pkg``), not
    to its parent packages: a parent is always imported first and is complete or in
    progress by then.

Beside them, kernel modules (``effx_lab.<pkg>.kernels``) take Triton from
``effx_lab._triton``, the one import guard, and never import ``triton`` themselves.

A violation in code that is being moved may be allowed for a while in
:data:`TEMPORARY_ALLOWED`; an entry that no longer matches anything fails a test.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "effx_lab"
CORE = ""  # the package name of effx_lab/*.py

# The chapter packages, one per chapter of the course (ch01 costs, ch02 quant, ch07
# flash). A new chapter adds its package here; test_every_package_is_classified fails
# until it is listed here or in SHARED_PACKAGES.
CHAPTER_PACKAGES = frozenset({"costs", "quant", "flash", "prune", "nm", "moe"})
# Packages every chapter may build on: shared layers, models, data, sparsity formats,
# the benchmark library.
SHARED_PACKAGES = frozenset({"attention", "bench", "data", "models", "sparse"})
# Modules that run every chapter, and why they may import them all.
DRIVERS = {
    "effx_lab.cli": "the effx-lab command: the bench driver, the student versions",
    "effx_lab.gpu_check": "compiles and compares every chapter's kernels on a GPU",
    "effx_lab.bench.__main__": "python -m effx_lab.bench <chapter>: each chapter's run",
}

# Names a torch face exports without a NumPy twin: (package, name) -> why.
TORCH_ONLY = {
    ("quant", "hvp_fn"): "Hessian-vector products need autograd (double backprop)",
    ("quant", "layer_traces"): "Hutchinson traces of an nn.Module's loss, via autograd",
    ("quant", "fake_quantize_ste"): "a straight-through gradient: an autograd.Function",
    ("attention", "transformer_layer_with_core"): "its core is a torch callable (SDPA)",
}
# Keyword-only parameters a torch function or class takes beyond its NumPy twin:
# (package, name, parameter) -> why.
TORCH_ONLY_PARAMS = {
    ("models", "KVCache", "device"): "a torch cache lives on a device; NumPy has none",
}

# TEMPORARY: violations in modules that other work is moving right now. Each entry is
# (rule, module, what) as the checkers word it, without line numbers (they move); the
# fixes are in the report of the architecture issue. Delete an entry when its module is
# fixed: test_temporary_allow_list_is_not_stale fails for an entry that no longer
# matches anything, so this list can only shrink.
TEMPORARY_ALLOWED: set[tuple[str, str, str]] = set()


# ======================================================================================
# reading the source
# ======================================================================================
@dataclass(frozen=True)
class Source:
    module: str  # dotted name, e.g. "effx_lab.flash.params"
    path: str  # for messages, e.g. "effx_lab/flash/params.py"
    text: str
    is_package: bool  # an __init__.py


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the module imported (from), e.g. "effx_lab.quant.reference"
    name: str | None  # the name imported from target; None: target itself
    lazy: bool  # inside a function body
    type_only: bool  # under `if TYPE_CHECKING:`


@dataclass(frozen=True)
class Violation:
    rule: str
    module: str
    what: str  # a key without line number, e.g. "effx_lab.attention.params._init_bytes"
    where: str  # path:line
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def load_tree(root: Path = PACKAGE) -> dict[str, Source]:
    """Every module of the package, by dotted name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if "__pycache__" in rel.parts:
            continue
        parts = list(rel.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        module = ".".join(parts)
        out[module] = Source(
            module, rel.as_posix(), path.read_text(encoding="utf-8"), is_package
        )
    return out


def sources_from(snippets: Mapping[str, str]) -> dict[str, Source]:
    """Synthetic modules for the rules' own tests: ``{"effx_lab.a.b": source}``; a name
    ending in ``.__init__`` is a package."""
    out = {}
    for name, text in snippets.items():
        is_package = name.endswith(".__init__")
        module = name.removesuffix(".__init__")
        path = module.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        out[module] = Source(module, path, text, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


class _Reader(ast.NodeVisitor):
    """The imports of one module, and the private attributes it reads from modules it
    imported."""

    def __init__(self, src: Source, modules: Iterable[str]):
        self.src = src
        self.modules = set(modules)
        self.imports: list[Import] = []
        self.attributes: list[tuple[int, str, str]] = []  # (line, module, attribute)
        self.scopes: list[dict[str, str]] = [{}]  # local name -> module it is bound to
        self.lazy = 0
        self.type_only = 0

    def _resolve(self, level: int, name: str | None) -> str:
        if level == 0:
            return name or ""
        parts = self.src.module.split(".")
        if not self.src.is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (level - 1)]
        return ".".join(parts + ([name] if name else []))

    def _add(self, line: int, target: str, name: str | None) -> None:
        self.imports.append(
            Import(
                self.src.module, line, target, name, self.lazy > 0, self.type_only > 0
            )
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != "effx_lab":
                continue
            self._add(node.lineno, alias.name, None)
            if alias.asname:
                self.scopes[-1][alias.asname] = alias.name
            else:
                self.scopes[-1]["effx_lab"] = "effx_lab"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.level, node.module)
        if base.split(".")[0] != "effx_lab":
            return
        for alias in node.names:
            if alias.name == "*":
                self._add(node.lineno, base, "*")
                continue
            sub = f"{base}.{alias.name}"
            if sub in self.modules:
                self._add(node.lineno, sub, None)
                self.scopes[-1][alias.asname or alias.name] = sub
            else:
                self._add(node.lineno, base, alias.name)

    def _scoped(self, node: ast.AST, lazy: bool) -> None:
        self.scopes.append(dict(self.scopes[-1]))
        self.lazy += lazy
        self.generic_visit(node)
        self.lazy -= lazy
        self.scopes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, lazy=True)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.visit(node.test)
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = _dotted(node)
        if parts is not None and parts[0] in self.scopes[-1]:
            full = self.scopes[-1][parts[0]].split(".") + parts[1:]
            # the longest prefix that is a module; the next part is an attribute read
            # from it
            for cut in range(len(full) - 1, 0, -1):
                module = ".".join(full[:cut])
                if module in self.modules:
                    self.attributes.append((node.lineno, module, full[cut]))
                    break
            return  # the inner attributes are prefixes of this chain
        self.generic_visit(node)


def read(sources: Mapping[str, Source]) -> dict[str, _Reader]:
    """Every module's imports and attributes (parsed once per set of sources)."""
    return _read(tuple(sources.values()))


@functools.lru_cache(maxsize=4)
def _read(sources: tuple[Source, ...]) -> dict[str, _Reader]:
    names = {src.module for src in sources}
    readers = {}
    for src in sources:
        reader = _Reader(src, names)
        reader.visit(ast.parse(src.text, filename=src.path))
        readers[src.module] = reader
    return readers


def packages(sources: Iterable[str]) -> set[str]:
    """The subpackages of effx_lab (``quant`` for ``effx_lab.quant.reference``)."""
    out = set()
    for module in sources:
        parts = module.split(".")
        if len(parts) >= 3:
            out.add(parts[1])
    return out


def package_of(module: str, pkgs: set[str]) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in pkgs:
        return parts[1]
    return CORE


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _where(sources: Mapping[str, Source], module: str, line: int) -> str:
    return f"{sources[module].path}:{line}"


# ======================================================================================
# the rules
# ======================================================================================
def check_layers(
    sources: Mapping[str, Source],
    chapters: frozenset[str] = CHAPTER_PACKAGES,
    drivers: Mapping[str, str] = DRIVERS,
) -> list[Violation]:
    """Rule (a): no chapter imports another chapter, no shared code imports a chapter,
    only drivers import drivers."""
    pkgs = packages(sources)
    out = []
    for module, reader in read(sources).items():
        if module in drivers:
            continue
        mine = package_of(module, pkgs)
        for imp in reader.imports:
            target, where = imp.target, _where(sources, module, imp.line)
            theirs = package_of(target, pkgs)
            if target in drivers:
                msg = f"{module} imports the driver {target}; only drivers may"
            elif theirs in chapters and theirs != mine:
                who = f"the chapter {mine}" if mine in chapters else "shared code"
                msg = (
                    f"{who} ({module}) imports the chapter {theirs} ({target}); move "
                    "what both need into a shared package"
                )
            else:
                continue
            out.append(Violation("layers", module, target, where, msg))
    return out


def _private_module(target: str) -> bool:
    """Whether a module path holds a private part: ``effx_lab.quant._np_gptq`` does;
    ``effx_lab._validate`` and ``effx_lab._triton`` (core internals) do not."""
    parts = target.split(".")[1:]
    if len(parts) == 1:
        return False
    return any(_private(p) for p in parts)


def check_private(sources: Mapping[str, Source]) -> list[Violation]:
    """Rule (b): no private module or name is imported, or read as an attribute, across
    packages."""
    pkgs = packages(sources)
    out = []
    for module, reader in read(sources).items():
        mine = package_of(module, pkgs)
        for imp in reader.imports:
            if package_of(imp.target, pkgs) == mine:
                continue
            if _private_module(imp.target) and imp.name is None:
                what = imp.target
            elif _private_module(imp.target) or _private(imp.name or ""):
                what = f"{imp.target}.{imp.name}"
            else:
                continue
            msg = (
                f"{module} imports the private {what} of another package; make it "
                "public where it is defined (or in a shared module both import)"
            )
            out.append(
                Violation(
                    "private", module, what, _where(sources, module, imp.line), msg
                )
            )
        for line, target, attr in reader.attributes:
            if package_of(target, pkgs) == mine:
                continue
            if _private(attr) or _private_module(target):
                what = f"{target}.{attr}"
                msg = f"{module} reads the private {what} of another package"
                where = _where(sources, module, line)
                out.append(Violation("private", module, what, where, msg))
    return out


def check_cycles(sources: Mapping[str, Source]) -> list[Violation]:
    """Rule (d): the graph of module-level imports has no cycle (one violation per
    strongly connected set)."""
    edges: dict[str, dict[str, int]] = {m: {} for m in sources}
    for module, reader in read(sources).items():
        for imp in reader.imports:
            runs_on_import = not (imp.lazy or imp.type_only)
            if not runs_on_import or imp.target not in sources or imp.target == module:
                continue
            edges[module].setdefault(imp.target, imp.line)

    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(sources):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    out = []
    for component in components:
        members = set(component)
        steps = [
            f"{_where(sources, a, line)} {a} -> {b}"
            for a in component
            for b, line in sorted(edges[a].items())
            if b in members
        ]
        msg = f"import cycle among {', '.join(component)}:\n    " + "\n    ".join(steps)
        what, where = " <-> ".join(component), _where(sources, component[0], 1)
        out.append(Violation("cycles", component[0], what, where, msg))
    return out


def check_triton_guard(sources: Mapping[str, Source]) -> list[Violation]:
    """Kernel modules (``effx_lab.<pkg>.kernels``) take Triton from
    ``effx_lab._triton``, the one import guard, and never import ``triton``
    themselves."""
    out = []
    for module, src in sources.items():
        if module.rsplit(".", 1)[-1] != "kernels":
            continue
        tree = ast.parse(src.text, filename=src.path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "triton" for name in names):
                where = _where(sources, module, node.lineno)
                msg = f"{module} imports triton itself; use effx_lab._triton (jit, tl)"
                out.append(Violation("triton", module, "import triton", where, msg))
        guarded = any(
            imp.target == "effx_lab._triton" for imp in read(sources)[module].imports
        )
        if not guarded:
            msg = f"{module} does not import effx_lab._triton, the one Triton guard"
            where = _where(sources, module, 1)
            out.append(Violation("triton", module, "effx_lab._triton", where, msg))
    return out


def _params(obj: object) -> list[tuple[str, str]] | None:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return [(p.name, p.kind.name) for p in sig.parameters.values()]


def check_faces(
    package: str,
    reference: types.ModuleType,
    torch_ops: types.ModuleType,
    torch_only: Mapping[tuple[str, str], str] = TORCH_ONLY,
    torch_only_params: Mapping[tuple[str, str, str], str] = TORCH_ONLY_PARAMS,
) -> list[Violation]:
    """Rule (c): one ``__all__`` in both faces, in one order (less the listed torch-only
    names), and the same parameter names and kinds (less the listed torch-only
    keyword-only parameters).
    """
    out = []
    module, where = torch_ops.__name__, f"effx_lab/{package}/torch_ops.py"

    def add(what: str, message: str) -> None:
        msg = f"effx_lab.{package}: {message}"
        out.append(Violation("faces", module, f"{package}.{what}", where, msg))

    ref_all = list(getattr(reference, "__all__", []))
    all_torch = list(getattr(torch_ops, "__all__", []))
    torch_all = [n for n in all_torch if (package, n) not in torch_only]
    for name in all_torch:
        if (package, name) in torch_only and name in ref_all:
            add(name, f"{name} is in TORCH_ONLY, yet reference.__all__ exports it too")
    for name in ref_all:
        if name not in torch_all:
            add(name, f"{name} is in reference.__all__, not in torch_ops.__all__")
    for name in torch_all:
        if name not in ref_all:
            add(name, f"{name} is in torch_ops.__all__, not in reference.__all__ "
                "(nor in TORCH_ONLY)")
    if [n for n in ref_all if n in torch_all] != [n for n in torch_all if n in ref_all]:
        add("__all__", "reference.__all__ and torch_ops.__all__ list the same names "
            "in another order")
    for name in (n for n in ref_all if n in torch_all):
        a, b = getattr(reference, name, None), getattr(torch_ops, name, None)
        if a is b:
            continue
        if not (callable(a) and callable(b)):
            if callable(a) or callable(b) or type(a) is not type(b) or a != b:
                add(name, f"{name} is {a!r} in reference, {b!r} in torch_ops")
            continue
        pa, pb = _params(a), _params(b)
        if pb is not None:  # drop the listed torch-only keyword-only parameters
            extra = {p for pk, n, p in torch_only_params if (pk, n) == (package, name)}
            pb = [(p, k) for p, k in pb if not (p in extra and k == "KEYWORD_ONLY")]
        if pa != pb:
            add(name, f"{name} takes the parameters {pa} in reference, {pb} in "
                "torch_ops")
    return out


def _allowed(violations: list[Violation]) -> list[Violation]:
    allowed = TEMPORARY_ALLOWED
    return [v for v in violations if (v.rule, v.module, v.what) not in allowed]


def _report(violations: list[Violation]) -> str:
    return "\n".join(str(v) for v in violations)


@pytest.fixture(scope="module")
def tree() -> dict[str, Source]:
    return load_tree()


def _face_packages() -> list[str]:
    faces = PACKAGE.glob("*/reference.py")
    return sorted(p.parent.name for p in faces if (p.parent / "torch_ops.py").exists())


# ======================================================================================
# the package follows the rules
# ======================================================================================
def test_every_package_is_classified(tree):
    unclassified = packages(tree) - CHAPTER_PACKAGES - SHARED_PACKAGES
    assert not unclassified, (
        f"effx_lab packages {sorted(unclassified)} are neither in CHAPTER_PACKAGES nor "
        "in SHARED_PACKAGES (tests/core/test_architecture.py): add each to one of them"
    )
    assert not CHAPTER_PACKAGES & SHARED_PACKAGES
    missing = [m for m in DRIVERS if m not in tree]
    assert not missing, f"DRIVERS lists modules that do not exist: {missing}"


def test_chapters_import_only_shared_code(tree):
    violations = _allowed(check_layers(tree))
    assert not violations, "layer violations:\n" + _report(violations)


def test_no_private_name_crosses_a_package(tree):
    violations = _allowed(check_private(tree))
    assert not violations, "private names across packages:\n" + _report(violations)


def test_no_import_cycles(tree):
    violations = _allowed(check_cycles(tree))
    assert not violations, "\n".join(v.message for v in violations)


def test_kernel_modules_use_the_one_triton_guard(tree):
    assert any(m.endswith(".kernels") for m in tree)
    violations = _allowed(check_triton_guard(tree))
    assert not violations, "\n".join(str(v) for v in violations)


@pytest.mark.parametrize("package", _face_packages())
def test_twin_faces_export_the_same_names_and_parameters(package):
    reference = importlib.import_module(f"effx_lab.{package}.reference")
    torch_ops = importlib.import_module(f"effx_lab.{package}.torch_ops")
    violations = _allowed(check_faces(package, reference, torch_ops))
    assert not violations, "\n".join(v.message for v in violations)


def test_torch_only_exceptions_exist():
    for package, name in TORCH_ONLY:
        exported = importlib.import_module(f"effx_lab.{package}.torch_ops").__all__
        assert name in exported, f"TORCH_ONLY lists {package}.{name}, not exported"
    for package, name, param in TORCH_ONLY_PARAMS:
        torch_ops = importlib.import_module(f"effx_lab.{package}.torch_ops")
        kinds = dict(_params(getattr(torch_ops, name)) or [])
        assert kinds.get(param) == "KEYWORD_ONLY", (
            f"TORCH_ONLY_PARAMS lists {package}.{name}({param}=...), which is not a "
            "keyword-only parameter there"
        )


def test_temporary_allow_list_is_not_stale(tree):
    found = check_layers(tree) + check_private(tree) + check_cycles(tree)
    found += check_triton_guard(tree)
    for package in _face_packages():
        reference = importlib.import_module(f"effx_lab.{package}.reference")
        torch_ops = importlib.import_module(f"effx_lab.{package}.torch_ops")
        found += check_faces(package, reference, torch_ops)
    stale = sorted(TEMPORARY_ALLOWED - {(v.rule, v.module, v.what) for v in found})
    assert not stale, f"fixed: delete these entries from TEMPORARY_ALLOWED: {stale}"


# ======================================================================================
# (e) each rule catches a violation
# ======================================================================================
def _whats(violations: list[Violation]) -> set[tuple[str, str]]:
    return {(v.module, v.what) for v in violations}


def test_layers_rule_catches_chapter_and_shared_imports_of_a_chapter():
    src = sources_from({
        "effx_lab.__init__": "",
        # a lazy import still counts
        "effx_lab.check": "def f():\n    from effx_lab.flash import reference\n",
        "effx_lab.cli": "from effx_lab.flash import reference\n",  # a driver: fine
        "effx_lab.viz": "import effx_lab.cli\n",  # only drivers import drivers
        "effx_lab.attention.__init__": "",
        "effx_lab.attention.layers": "from effx_lab.quant.reference import q\n",
        "effx_lab.flash.__init__": "",
        "effx_lab.flash.reference": "from ..quant import reference\n",
        "effx_lab.flash.shapes": "from effx_lab.attention import layers\n",  # fine
        "effx_lab.quant.__init__": "",
        "effx_lab.quant.reference": "",
    })  # fmt: skip
    chapters, drivers = frozenset({"flash", "quant"}), {"effx_lab.cli": "test"}
    assert _whats(check_layers(src, chapters, drivers)) == {
        ("effx_lab.check", "effx_lab.flash.reference"),
        ("effx_lab.viz", "effx_lab.cli"),
        ("effx_lab.attention.layers", "effx_lab.quant.reference"),
        ("effx_lab.flash.reference", "effx_lab.quant.reference"),
    }


def test_private_rule_catches_names_modules_and_attributes_across_packages():
    flash_params = (
        "from effx_lab.attention.params import _init_bytes\n"  # 1: a private name
        "from effx_lab import _validate\n"  # a core internal: fine
        "from effx_lab._validate import check_int, _helper\n"  # 3: its private name
        "from effx_lab.attention import _util\n"  # 4: a private module
        "import effx_lab.attention.params as AP\n"
        "def f():\n"
        "    from effx_lab.attention import params as P\n"
        "    return P._init_bytes, AP.__name__\n"  # 8: a private attribute
    )
    src = sources_from({
        "effx_lab.__init__": "",
        "effx_lab._validate": "def check_int(): ...\ndef _helper(): ...\n",
        "effx_lab.device": "from ._validate import _helper\n",  # core -> core: fine
        "effx_lab.attention.__init__": "",
        # within one package: fine
        "effx_lab.attention.params": "def _init_bytes(): ...\nfrom ._util import x\n",
        "effx_lab.attention._util": "x = 1\n",
        "effx_lab.flash.__init__": "",
        "effx_lab.flash.params": flash_params,
        "effx_lab.flash.bench": (
            "import effx_lab.attention.params\n"
            "y = effx_lab.attention.params._init_bytes\n"
        ),
    })  # fmt: skip
    violations = check_private(src)
    assert _whats(violations) == {
        ("effx_lab.flash.params", "effx_lab.attention.params._init_bytes"),
        ("effx_lab.flash.params", "effx_lab._validate._helper"),
        ("effx_lab.flash.params", "effx_lab.attention._util"),
        ("effx_lab.flash.bench", "effx_lab.attention.params._init_bytes"),
    }
    lines = sorted(v.where for v in violations if v.module == "effx_lab.flash.params")
    assert lines == [f"effx_lab/flash/params.py:{n}" for n in (1, 3, 4, 8)]


def test_cycles_rule_catches_a_cycle_but_not_lazy_or_type_only_imports():
    src = sources_from({
        "effx_lab.__init__": "",
        "effx_lab.quant.__init__": "from . import reference\n",
        "effx_lab.quant.reference": "from ._np_gptq import gptq\n",
        "effx_lab.quant._np_gptq": "from .reference import quantize\n",  # a cycle
        "effx_lab.flash.__init__": "",
        "effx_lab.flash.a": "from . import b\n",
        "effx_lab.flash.b": "def f():\n    from . import a\n",  # lazy: no edge
        "effx_lab.flash.c": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from . import d\n"  # never runs: no edge
        ),
        "effx_lab.flash.d": "from . import c\n",
    })  # fmt: skip
    violations = check_cycles(src)
    assert [v.what for v in violations] == [
        "effx_lab.quant._np_gptq <-> effx_lab.quant.reference"
    ]
    edge = "effx_lab/quant/_np_gptq.py:1 effx_lab.quant._np_gptq -> effx_lab.quant."
    assert edge + "reference" in violations[0].message


def test_triton_rule_catches_a_kernel_module_with_its_own_guard():
    src = sources_from({
        "effx_lab.__init__": "",
        "effx_lab._triton": "",
        "effx_lab.quant.__init__": "",
        "effx_lab.quant.kernels": "from effx_lab._triton import jit, tl\n",  # fine
        "effx_lab.flash.__init__": "",
        "effx_lab.flash.kernels": (
            "try:\n"
            "    import triton.language as tl\n"  # its own guard
            "except ImportError:\n"
            "    tl = None\n"
        ),
    })  # fmt: skip
    violations = check_triton_guard(src)
    assert [(v.module, v.what, v.where) for v in violations] == [
        ("effx_lab.flash.kernels", "import triton", "effx_lab/flash/kernels.py:2"),
        ("effx_lab.flash.kernels", "effx_lab._triton", "effx_lab/flash/kernels.py:1"),
    ]


def _module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_faces_rule_catches_names_order_and_parameters():
    def quantize(x, qparams): ...
    def quantize_t(x, params): ...  # another name
    def dequantize(q, qparams, dtype=None): ...
    def dequantize_t(q, qparams, dtype=float): ...  # another default: fine
    def scale(x, *, bits): ...
    def scale_t(x, bits): ...  # another kind
    def cache(config, *, dtype=None): ...
    def cache_t(config, *, dtype=None, device=None): ...  # fine if listed

    shared = object()
    names = ["quantize", "dequantize", "scale", "Shared", "MODES", "cache"]
    ref = _module("ref", __all__=names, quantize=quantize, dequantize=dequantize,
                  scale=scale, Shared=shared, MODES=("a", "b"), cache=cache)
    tops = _module("tops", __all__=names, quantize=quantize_t, dequantize=dequantize_t,
                   scale=scale_t, Shared=shared, MODES=("a", "c"), cache=cache_t)
    found = {v.what for v in check_faces("p", ref, tops, {}, {})}
    assert found == {"p.quantize", "p.scale", "p.MODES", "p.cache"}
    device = {("p", "cache", "device"): "a device"}
    found = {v.what for v in check_faces("p", ref, tops, {}, device)}
    assert found == {"p.quantize", "p.scale", "p.MODES"}

    extra = _module("tops", __all__=["dequantize", "quantize", "hvp"],
                    quantize=quantize, dequantize=dequantize, hvp=quantize)
    mine = _module("ref", __all__=["quantize", "dequantize"],
                   quantize=quantize, dequantize=dequantize)
    order = "effx_lab.p: reference.__all__ and torch_ops.__all__ list the same names "
    order += "in another order"
    only_torch = "effx_lab.p: hvp is in torch_ops.__all__, not in reference.__all__ "
    only_torch += "(nor in TORCH_ONLY)"
    only_ref = "effx_lab.p: hvp is in reference.__all__, not in torch_ops.__all__"
    assert [v.message for v in check_faces("p", mine, extra, {})] == [only_torch, order]
    hvp = {("p", "hvp"): "autograd"}
    assert [v.message for v in check_faces("p", mine, extra, hvp)] == [order]
    assert [v.message for v in check_faces("p", extra, mine, {})] == [only_ref, order]
    assert check_faces("p", mine, mine, {}) == []


def test_the_checkers_read_the_real_tree(tree):
    """The rules are not vacuous on the package: it has imports, lazy ones, attributes
    read from imported modules, and twin faces to compare."""
    readers = read(tree)
    imports = [imp for r in readers.values() for imp in r.imports]
    assert len(tree) > 50 and len(imports) > 200
    assert any(imp.lazy for imp in imports)
    assert any(imp.target == "effx_lab._validate" for imp in imports)
    assert any(r.attributes for r in readers.values())
    assert {"attention", "costs", "flash", "quant"} <= set(_face_packages())
