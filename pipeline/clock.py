"""Time as the scheduler sees it, injected, so a year of weekly issues can be simulated in milliseconds.

The scheduler asks its clock what time it is and waits on it; nothing in it reads the system time
directly. ``SystemClock`` is the real one; the tests' ``ManualClock`` only moves when told to.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Now, timezone-aware UTC."""
        ...

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; True when stopped."""
        ...


class SystemClock:
    """The wall clock; waiting ends early when ``stop`` is set (a signal handler sets it)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(max(0.0, seconds))
