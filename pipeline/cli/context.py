"""What every command shares: the settings (loaded once, on first use) and the consoles."""

from __future__ import annotations

from functools import cached_property

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
