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
    "vmbench.rundir": 0,
    "vmbench.ablation": 0,
    "vmbench.tracking": 0,
    "vmbench.ops": 1,
    "vmbench.models": 2,
    "vmbench.data": 3,
    "vmbench.losses": 3,
    "vmbench.metrics": 3,
    "vmbench.statistics": 3,
    "vmbench.profiling": 3,
    "vmbench.engine": 4,
    "vmbench.predict": 4,
    "vmbench.visualize": 4,
    "vmbench.search_space": 4,
    "vmbench.sweep": 5,
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


def _full_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere (lazy imports inside functions included), each
    import resolved to the longest module that exists; a module's own packages are not edges."""
    names = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        targets = set()
        for imported, _ in _imports(path):
            parts = imported.split(".")
            while parts and ".".join(parts) not in names:
                parts.pop()
            target = ".".join(parts)
            if target and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
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
            if cycle:
                return cycle
    return None


def test_no_import_cycle_at_import_time():
    cycle = _find_cycle(_top_level_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_through_lazy_imports():
    """A lazy import that closes a circle (losses <-> losses_ds, transforms <-> nnunet_augment once)
    hides the cycle from Python, not from a reader: modules depend one way."""
    cycle = _find_cycle(_full_graph())
    assert cycle is None, "import cycle (lazy imports included): " + " -> ".join(cycle)
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the finder can fire


def test_the_reader_resolves_relative_and_lazy_imports():
    """Guards the checks above against passing vacuously: a snippet's imports are all found."""
    path = PACKAGE / "ops" / "selective_scan.py"
    snippet = ast.parse("from ..engine import fit\nfrom . import determinism\ndef f():\n    import vmbench.cli\n")
    found = {name for name, _ in _imports(path, snippet)}
    assert {"vmbench.engine", "vmbench.ops.determinism", "vmbench.cli"} <= found
    assert _layer("vmbench.engine.training") > _layer("vmbench.ops.selective_scan")


def _calls_and_strings(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(names of functions called, string constants) in a module, with their lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    calls, strings = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name:
                calls.append((name, node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.append((node.value, node.lineno))
    return calls, strings


# The run folder's file names: spelled out only by vmbench.rundir.RunDir, which every other module asks.
RUN_FOLDER_NAMES = ("last.pt", "best.pt", "mlflow_run.json")


def test_run_folder_paths_live_only_in_rundir():
    owner = PACKAGE / "rundir.py"
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in _sources() if path != owner
             for text, line in _calls_and_strings(path)[1] if text in RUN_FOLDER_NAMES]
    assert not found, "run-folder paths outside vmbench/rundir.py (use RunDir):\n" + "\n".join(found)
    assert {text for text, _ in _calls_and_strings(owner)[1]} >= set(RUN_FOLDER_NAMES)  # the check can fire


def test_datasets_are_built_only_by_dataset_for():
    owner = PACKAGE / "data" / "__init__.py"
    found = [f"{path.relative_to(ROOT)}:{line}" for path in _sources() if path != owner
             for name, line in _calls_and_strings(path)[0] if name == "build_dataset"]
    assert not found, "build_dataset called outside vmbench.data.dataset_for:\n" + "\n".join(found)
    assert "build_dataset" in {name for name, _ in _calls_and_strings(owner)[0]}  # the check can fire


def _argparse_uses(path: Path) -> list[str]:
    """Where ``path`` imports argparse or declares a (sub-)command: ``add_parser(`` / ``add_subparsers(``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names):
            found.append(f"{node.lineno}: import argparse")
        elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
            found.append(f"{node.lineno}: from argparse import ...")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("add_parser", "add_subparsers")):
            found.append(f"{node.lineno}: {node.func.attr}(")
    return found


def test_commands_live_in_cli():
    """Argument parsing and sub-commands live in vmbench/cli/ only: the rest of the package is a library."""
    cli = PACKAGE / "cli"
    inside = [p for p in _sources() if cli in p.parents]
    assert any(_argparse_uses(p) for p in inside), "the check found no sub-command even in vmbench/cli/"
    outside = [f"{p.relative_to(ROOT)}:{use}" for p in _sources() if cli not in p.parents for use in _argparse_uses(p)]
    assert not outside, "argparse outside vmbench/cli/ (move the command there):\n" + "\n".join(outside)


# Beyond this a module is split by what it does (models and kernels follow their official files).
MAX_MODULE_LINES = 500


def test_modules_stay_small_outside_models_and_kernels():
    large = [f"{p.relative_to(ROOT)}: {n} lines" for p in _sources()
             if p.parent.name not in ("models", "ops") and (n := p.read_text().count("\n")) > MAX_MODULE_LINES]
    assert not large, f"modules over {MAX_MODULE_LINES} lines (split them by what they do):\n" + "\n".join(large)
