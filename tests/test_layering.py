"""The package's layering, checked on the import graph of the sources (docs/DESIGN.md, "Layers").

Each package may import only from packages in lower layers (and from itself); packages in the same
layer do not import each other. Imports inside functions count: a lazy import is still a
dependency. The kernels package (kernels/, installed as repro.kernels) is checked as repro.kernels.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. "util" is the bottom: helpers every layer may use.
LAYERS = [
    {"util"},
    {"kernels"},
    {"nn"},
    {"models", "data"},
    {"tasks"},
    {"track"},
    {"train"},
    {"tables", "bench"},
    {"analysis"},
    {"cli"},
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def sources() -> list[tuple[str, Path]]:
    """(dotted module name, path) for every module of the installed package."""
    found = [("repro.kernels." + ".".join(p.relative_to(ROOT / "kernels").with_suffix("").parts), p)
             for p in (ROOT / "kernels").rglob("*.py")]
    found += [(".".join(p.relative_to(ROOT).with_suffix("").parts), p) for p in (ROOT / "repro").rglob("*.py")]
    return [(name.removesuffix(".__init__"), path) for name, path in found]


def imported_modules(module: str, path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def package_of(module: str) -> str | None:
    """The layer package of a repro module (repro.nn.norms -> nn); None for repro itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "repro" and len(parts) > 1 else None


def test_every_package_has_a_layer():
    packages = {package_of(name) for name, _ in sources()} - {None}
    assert packages <= set(RANK), f"packages without a layer: {packages - set(RANK)}"


def violations() -> list[str]:
    found = []
    for module, path in sources():
        own = package_of(module)
        for target in imported_modules(module, path):
            other = package_of(target)
            if target.split(".")[0] != "repro" or other is None or other == own or other not in RANK:
                continue
            if own is None or RANK[other] >= RANK[own]:
                found.append(f"{module} imports {target} ({own or 'repro'} -> {other})")
    return found


def test_imports_go_down_the_layers_only():
    assert violations() == []


def test_the_trainer_knows_no_particular_task():
    """repro.train reaches tasks only through the Task interface and the task factory: a new task
    adds no line to repro/train (nor does it import data code to validate options)."""
    allowed = {"repro.tasks", "repro.tasks.base"}
    found = [f"{module} imports {target}" for module, path in sources() if package_of(module) == "train"
             for target in imported_modules(module, path)
             if package_of(target) in ("tasks", "data", "models") and target not in allowed]
    assert found == []


@pytest.mark.parametrize("source, target", [
    ("repro.analysis.x", "repro.cli.train"),   # analysis never imports cli
    ("repro.track.x", "repro.train"),          # track sits below train
    ("repro.tables.x", "repro.bench"),         # same layer: no imports across
    ("repro.nn.x", "repro.models"),
])
def test_the_check_catches_an_upward_import(source, target, tmp_path, monkeypatch):
    path = tmp_path / "x.py"
    path.write_text(f"def f():\n    import {target}\n")  # a lazy import counts too
    monkeypatch.setitem(globals(), "sources", lambda: [(source, path)])
    assert violations() == [f"{source} imports {target} ({package_of(source)} -> {package_of(target)})"]
