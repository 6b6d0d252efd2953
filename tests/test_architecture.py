"""The house rules of bench/ (docs/architecture.md), checked by parsing every module's imports.

Every import counts, at module level, inside a function or under ``if TYPE_CHECKING:`` (a lazy
or type-only import hides a cycle, it does not remove it). A package's ``__init__`` is a module of
its own, and ``from bench.pkg import name`` is an import of ``bench.pkg`` (and of
``bench.pkg.name`` when that is a module).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bench"
MAX_LINES = 400

# Bottom to top: a module may import only from its own layer's unit or a lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("bench.core",),
    ("bench.diffusion",),
    ("bench.models", "bench.data"),
    ("bench.rules",),
    ("bench.metrics", "bench.training"),
    ("bench.jobs",),
    ("bench.plan",),
    ("bench.study",),
    ("bench.execute",),
    ("bench.tracking",),
    ("bench.search",),
    ("bench.report",),
    ("bench.pipeline", "bench.rescore"),
    ("bench.cli", "bench.perf"),
    ("bench",),  # the package's own __init__ (bench.run_study) sits on top
]
ONLY_IN = {  # third-party package -> the units allowed to import it
    "mlflow": ("bench.tracking",),
    "optuna": ("bench.search",),
}
NOT_IN_DIFFUSION = ("pandas", "mlflow", "optuna", "yaml", "json", "pathlib", "os", "io", "bench.models",
                    "bench.data", "bench.metrics")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def unit(mod: str) -> str:
    """The layer unit of a module: the longest listed prefix (``bench.study.build`` -> ``bench.study``)."""
    best = ""
    for names in LAYERS:
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and len(n) > len(best):
                best = n
    return best


def layer(mod: str) -> int:
    u = unit(mod)
    return next(i for i, names in enumerate(LAYERS) if u in names)


def imports(mod: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``mod``; ``from bench.x import y`` names
    ``bench.x.y`` when that is a module, else ``bench.x``."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names if f"{base}.{a.name}" in MODULES]
    return out


def graph() -> dict[str, set[str]]:
    return {m: {i for i, _ in imports(m) if i in MODULES and i != m} for m in MODULES}


def test_no_import_cycles() -> None:
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_only_flow_down_the_layers() -> None:
    bad = []
    for mod in MODULES:
        for imp, line in imports(mod):
            if imp in MODULES and unit(imp) != unit(mod) and layer(imp) > layer(mod):
                bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line} imports {imp} (a higher layer)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(ONLY_IN))
def test_heavy_packages_stay_in_their_unit(package: str) -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}" for m in MODULES for imp, line in imports(m)
           if (imp == package or imp.startswith(package + ".")) and unit(m) not in ONLY_IN[package]]
    assert not bad, f"{package} imported outside {ONLY_IN[package]}: {bad}"


def test_the_math_does_no_io_and_knows_no_models() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {imp}" for m in MODULES if unit(m) == "bench.diffusion"
           for imp, line in imports(m) if any(imp == n or imp.startswith(n + ".") for n in NOT_IN_DIFFUSION)]
    assert not bad, "\n".join(bad)


def test_every_module_has_a_layer_and_is_short() -> None:
    assert all(unit(m) for m in MODULES), [m for m in MODULES if not unit(m)]
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_what_it_checks() -> None:
    """The parser finds lazy imports, relative imports and skips TYPE_CHECKING blocks."""
    assert ("bench.jobs", 1) not in imports("bench.core.config")
    found = {i for i, _ in imports("bench.execute.scheduler")}
    assert "bench.jobs" in found  # imported inside done_keys()
    assert "bench.jobs" in {i for i, _ in imports("bench.search.run")}  # import bench.jobs as jobs, lazily
    assert layer("bench.study.build") > layer("bench.metrics.registry") > layer("bench.core.config")


def test_import_bench_is_light() -> None:
    code = ("import sys, bench; heavy = [m for m in ('mlflow', 'optuna', 'pandas', 'ray', 'torch') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
