"""What every command shares: the settings (loaded once, on first use) and the consoles."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import click
from rich.console import Console

from pipeline.settings import Settings, load_settings

console = Console(highlight=False)
console_err = Console(stderr=True, highlight=False)


class CliContext:
    def __init__(self, settings_path: str | None) -> None:
        self.settings_path = settings_path

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.settings_path)


pass_context = click.make_pass_decorator(CliContext)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it: shorter, and clickable."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative
