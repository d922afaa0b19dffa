"""The package's import structure: no module of ``dgm`` or ``kernels`` imports itself back through
others (every import counted, lazy ones inside functions too), and importing the package or the
training CLI loads no kernel module until a backend is used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dgm": ROOT / "dgm", "dgm.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package (kernels as ``dgm.kernels``)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if package == "dgm" and parts[0] == "kernels":
                continue  # a development symlink to kernels/, not a second copy
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import dgm.ops.reference` names a module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_import_cycle():
    modules = _modules()
    # A submodule importing a name from its own ancestor package is Python's normal order (the
    # package's __init__ runs first), not a cycle, so those edges are left out.
    graph = {name: {t for t in _imports(name, path, modules) if not _is_ancestor(t, name)}
             for name, path in modules.items()}
    assert _cycles(graph) == []


def test_backends_are_leaves():
    """Kernel modules never import the dispatcher (it imports them, by name, when first used)."""
    modules = _modules()
    kernels = {name: path for name, path in modules.items() if name.startswith("dgm.kernels")}
    assert {name: sorted(t for t in _imports(name, path, modules) if t.startswith("dgm.ops"))
            for name, path in kernels.items()} == {name: [] for name in kernels}


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_the_cli_loads_no_kernel():
    code = ("import sys, dgm, dgm.cli.train, dgm.cli.data, dgm.cli.results\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton' or m.startswith('dgm.kernels')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
