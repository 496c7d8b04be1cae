"""The package's layering, read from the source (ast), so that it stays as docs/architecture.md draws it.

Imports run one way: foundation -> ops -> models -> data/metrics/losses -> engine -> sweep ->
leaderboard/report -> cli. Lazy imports inside functions count too: they are dependencies all the
same. The core never imports the ``baselines`` plug-in, and the leaderboard never imports the sweep.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vmbench"

# Longest prefix wins. A module may import its own layer and the layers below it.
LAYERS = {
    "vmbench": 0,  # the package __init__: the registry's public functions
    "vmbench.errors": 0,
    "vmbench.protocols": 0,
    "vmbench.environment": 0,
    "vmbench.io": 0,
    "vmbench.checkpoints": 0,
    "vmbench.registry": 0,
    "vmbench.config": 0,
    "vmbench.tracking": 0,
    "vmbench.ops": 1,
    "vmbench.models": 2,
    "vmbench.data": 3,
    "vmbench.losses": 3,
    "vmbench.losses_ds": 3,
    "vmbench.metrics": 3,
    "vmbench.statistics": 3,
    "vmbench.profiling": 3,
    "vmbench.engine": 4,
    "vmbench.predict": 4,
    "vmbench.visualize": 4,
    "vmbench.search_space": 4,
    "vmbench.sweep": 5,
    "vmbench.localcluster": 5,
    "vmbench.leaderboard": 6,
    "vmbench.report": 6,
    "vmbench.ui": 6,
    "vmbench.bench": 6,
    "vmbench.cli": 7,
    "vmbench.__main__": 7,
}
FORBIDDEN = {
    # (importer prefix, imported prefix): why
    ("vmbench", "baselines"): "the core never imports the baselines plug-in (it registers itself by entry point)",
    ("vmbench.leaderboard", "vmbench.sweep"): "the leaderboard reads MLflow runs; MLflow conventions live in vmbench.tracking",
    ("vmbench.report", "vmbench.sweep"): "the report reads MLflow runs; MLflow conventions live in vmbench.tracking",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, tree: ast.AST | None = None) -> list[tuple[str, int]]:
    """Absolute names of every vmbench/baselines module imported in ``tree`` (default: the whole file)."""
    tree = tree if tree is not None else ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            # `from vmbench import engine` imports the submodule vmbench.engine
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] in ("vmbench", "baselines")]


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in _sources() if _layer(_module_name(p)) is None]
    assert not missing, f"modules without a layer in tests/test_architecture.py LAYERS: {missing}"


def test_imports_run_one_way():
    violations = []
    for path in _sources():
        importer = _module_name(path)
        own = _layer(importer)
        for imported, line in _imports(path):
            if imported.startswith("baselines"):
                continue  # reported by the forbidden-edges test
            target = _layer(imported)
            if target is not None and own is not None and target > own:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {importer} (layer {own}) imports {imported} (layer {target})")
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_forbidden_edges():
    violations = []
    for path in _sources():
        importer = _module_name(path)
        for imported, line in _imports(path):
            for (src, dst), why in FORBIDDEN.items():
                if (importer == src or importer.startswith(src + ".")) and (imported == dst or imported.startswith(dst + ".")):
                    violations.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {imported}: {why}")
    assert not violations, "\n".join(violations)


def _top_level_graph() -> dict[str, set[str]]:
    """Module -> modules it imports at import time (module level, outside functions and TYPE_CHECKING)."""
    names = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
        body = [n for n in body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        imported = _imports(path, ast.Module(body=body, type_ignores=[]))
        graph[module] = {name for name, _ in imported if name in names and name != module}
    return graph


def test_no_import_cycle_at_import_time():
    graph = _top_level_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_reader_resolves_relative_and_lazy_imports():
    """Guards the checks above against passing vacuously: a snippet's imports are all found."""
    path = PACKAGE / "ops" / "selective_scan.py"
    snippet = ast.parse("from ..engine import fit\nfrom . import determinism\ndef f():\n    import vmbench.cli\n")
    found = {name for name, _ in _imports(path, snippet)}
    assert {"vmbench.engine", "vmbench.ops.determinism", "vmbench.cli"} <= found
    assert _layer("vmbench.engine.training") > _layer("vmbench.ops.selective_scan")
