"""The package's import graph: layers import only from layers below them, with no cycles.

Parses every module's imports (no importing), so it also catches imports inside functions: those
are allowed only for the optional heavy dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import elastictok

PACKAGE = Path(elastictok.__file__).parent
# Bottom to top. A module may import from its own layer or from one listed before it.
LAYERS = ("_version", "utils", "model", "weights", "metrics", "media", "tokenfile", "coding", "files", "datasets",
          "train", "eval", "app")
TOP = ("__init__", "__main__")  # the public face sits above every layer
LOCAL_OK = {"gradio", "matplotlib", "av", "playwright", "ray", "pyarrow", "datasets"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """(elastictok modules imported, (line, top-level name) of imports inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found, local = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        found += [t for t in targets if t.split(".")[0] == "elastictok"]
        local += [(node.lineno, t.split(".")[0]) for t in targets[:1]]
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    local_lines = {n.lineno for n in ast.walk(tree) if id(n) in inner}
    return found, [(line, mod) for line, mod in local if line in local_lines]


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return len(LAYERS) if part in TOP else LAYERS.index(part)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for t in _imports(path)[0]:
            while t not in modules and "." in t:  # "pkg.mod.Name" -> "pkg.mod"
                t = t.rpartition(".")[0]
            if t in modules and t != name:
                targets.add(t)
        graph[name] = targets
    return graph


def test_every_module_belongs_to_a_layer():
    for name in _modules():
        assert name == "elastictok" or name.split(".")[1] in LAYERS + TOP, f"{name} is in no layer"


def test_no_import_from_a_higher_layer():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, upward


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_function_local_imports_only_for_optional_dependencies():
    bad = [f"{_module_name(p)}:{line} imports {mod}" for p in _modules().values()
           for line, mod in _imports(p)[1] if mod not in LOCAL_OK]
    assert not bad, bad
