"""The package is grouped by stage and data flows one way: no module imports from a stage above its own.

A stage may import from itself and from the stages below it, never from one beside or above it. The
order is DESIGN.md's: cli → web → schedule, feedback → dispatch → transports → audience, render →
content, store → the shared modules at the top of the package (errors, settings, tokens…).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import REPO

PACKAGE = REPO / "pipeline"

RANK = {
    "": 0,  # errors, settings, validation, tokens, clock
    "content": 1,
    "store": 1,
    "audience": 2,
    "render": 2,
    "transports": 3,
    "dispatch": 4,
    "feedback": 5,
    "schedule": 5,
    "web": 6,
    "preview": 6,
    "cli": 7,
}


def stage_of(module: str) -> str:
    """``pipeline.dispatch.ledger`` → ``dispatch``; a module at the top of the package → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else ""


def imported_modules(path: Path) -> set[str]:
    """Every ``pipeline.…`` module the file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline")
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_folder_of_the_package_is_a_known_stage() -> None:
    folders = {p.relative_to(PACKAGE).parts[0] for p in MODULES if len(p.relative_to(PACKAGE).parts) > 1}
    assert folders <= set(RANK), f"add the new stage to RANK (and DESIGN.md): {folders - set(RANK)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_stage_beside_or_above_its_own(path: Path) -> None:
    own = stage_of(module_name(path))
    wrong = sorted(
        name
        for name in imported_modules(path)
        if (other := stage_of(name)) != own and RANK[other] >= RANK[own]
    )
    assert not wrong, f"{module_name(path)} ({own or 'top'}) imports {wrong}"
