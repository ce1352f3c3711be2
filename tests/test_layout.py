"""The package's stages import only the stages below them, and op rules import no engine.

The order (README, Layout): base (errors, limits, outputs) < ops < graph < resources < report <
surgery < learn < shrink < cli. Imports under ``if TYPE_CHECKING:`` are type hints and do
not count; imports inside functions (lazy imports) do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "morphcli"
STAGES = ("base", "ops", "graph", "resources", "report", "surgery", "learn", "shrink", "cli")
BASE_MODULES = {"errors", "limits", "outputs"}
# The package's own entry points: the lazy API and ``python -m morphcli``.
ENTRY_MODULES = {"morphcli", "morphcli.__main__"}


def stage_of(module: str) -> str:
    """``morphcli.surgery.apply`` -> ``surgery``; ``morphcli.errors`` -> ``base``."""
    parts = module.split(".")
    if len(parts) < 2:
        raise ValueError(f"{module} is not inside the package")
    top = parts[1]
    if top in BASE_MODULES:
        return "base"
    if top not in STAGES:
        raise ValueError(f"{module} belongs to no stage")
    return top


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir()


def imports_of(source: str, module: str) -> set[str]:
    """The morphcli modules ``source`` imports at run time (type-checking blocks skipped)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("morphcli."))
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: relative import (the package imports absolutely)"
            base = node.module or ""
            if base.startswith("morphcli."):
                found.add(base)
            elif base == "morphcli":  # submodules by name; a name (__version__) is the root's
                found.update(
                    f"morphcli.{alias.name}" for alias in node.names if _is_submodule(alias.name)
                )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def package_modules() -> dict[str, str]:
    """Module name -> source of every module in the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path.read_text()
    return modules


def violations(modules: dict[str, str]) -> list[str]:
    """Every import that goes up the stage order, or from an op rule into an engine."""
    rank = {stage: i for i, stage in enumerate(STAGES)}
    found = []
    for module, source in modules.items():
        if module in ENTRY_MODULES:
            continue
        stage = stage_of(module)
        for imported in sorted(imports_of(source, module)):
            other = stage_of(imported)
            if stage == "ops" and other not in ("ops", "base"):
                found.append(f"{module} (an op rule) imports the engine {imported}")
            elif rank[other] > rank[stage]:
                found.append(f"{module} ({stage}) imports {imported} ({other}), a later stage")
    return found


def test_every_module_belongs_to_a_stage():
    for module in package_modules():
        if module not in ENTRY_MODULES:
            assert stage_of(module) in STAGES


def test_stages_import_only_stages_below_them():
    modules = package_modules()
    edges = sum(len(imports_of(s, m)) for m, s in modules.items())
    assert edges > 100, f"only {edges} imports found: the import scan is broken"
    assert violations(modules) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("morphcli.graph.model", "from morphcli.surgery.apply import apply_copies\n", 1),
        ("morphcli.graph.model", "def f():\n    from morphcli.learn import wrapper\n", 1),
        ("morphcli.ops.conv", "from morphcli.graph.channels import IN\n", 1),
        (
            "morphcli.ops.conv",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from morphcli.graph.builder import ChannelBuilder\n",
            0,
        ),
        ("morphcli.cli.shrink", "from morphcli.shrink.algorithm import run_shrink\n", 0),
        ("morphcli.learn.train", "from morphcli.errors import MorphError\n", 0),
    ],
)
def test_the_check_finds_upward_imports(module, source, expected):
    assert len(violations({module: source})) == expected
