"""The command starts at once: `--help` and `check` (run on every save and in pre-commit hooks) import
only what they use, and `--help` lists every command without importing any."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pipeline.cli import COMMANDS, cli, load_command

WEB_AND_STORE = {"sqlalchemy", "alembic", "psycopg", "starlette", "uvicorn", "sendgrid", "schedule"}
"""Libraries a command that neither sends nor serves must not load (they cost most of the start-up)."""
RENDERING = {"jinja2", "mjml", "markdown_it", "yaml", "pydantic", "email_validator"}


def modules_after(*args: str, cwd: Path) -> set[str]:
    """The top-level packages loaded by a fresh interpreter once `newsletter ARGS` has run."""
    script = (
        "import json, sys\n"
        "from pipeline.cli import main\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_no_command_and_no_heavy_library(tmp_path: Path) -> None:
    loaded = modules_after("--help", cwd=tmp_path)

    assert "click" in loaded
    assert not loaded & (WEB_AND_STORE | RENDERING)


def test_check_loads_neither_the_store_nor_the_web_stack(project: Path) -> None:
    loaded = modules_after("check", cwd=project)

    assert {"jinja2", "mjml", "yaml"} <= loaded, "check renders every issue"
    assert not loaded & WEB_AND_STORE


def test_a_current_store_is_checked_without_alembic(project: Path) -> None:
    """The first command migrates the new store; after that, opening it costs one query."""
    assert "alembic" in modules_after("segments", cwd=project)

    assert "alembic" not in modules_after("segments", cwd=project)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listed_summary_is_the_commands_own(name: str) -> None:
    command = load_command(name)

    assert COMMANDS[name].summary == command.get_short_help_str(limit=1000)


def test_help_lists_every_command_with_its_summary() -> None:
    with click.Context(cli) as ctx:
        listing = cli.get_help(ctx)

    for name, entry in COMMANDS.items():
        assert name in listing
        assert entry.summary.split()[-1] in listing
