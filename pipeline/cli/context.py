"""What every command shares: the settings (loaded once, on first use), the consoles, the stop signal."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
from rich.console import Console

if TYPE_CHECKING:
    from pipeline.settings import Settings

console = Console(highlight=False)
console_err = Console(stderr=True, highlight=False)


class CliContext:
    def __init__(self, settings_path: str | None) -> None:
        self.settings_path = settings_path

    @cached_property
    def settings(self) -> Settings:
        from pipeline.settings import load_settings  # not on import: `--help` loads no settings

        return load_settings(self.settings_path)


pass_context = click.make_pass_decorator(CliContext)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it: shorter, and clickable."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM: stop claiming batches; the ones in flight finish and are recorded."""
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            console_err.print(
                f"{signal.Signals(signum).name}: finishing the batches in flight, then stopping…"
            )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
