"""Time as the scheduler sees it, injected, so a year of weekly issues can be simulated in milliseconds.

The scheduler asks its clock what time it is and waits on it; nothing in it reads the system time
directly. ``SystemClock`` is the real one; ``ManualClock`` only moves when told to (tests, dry runs).
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


class ManualClock:
    """A clock that stands still until ``advance`` or ``set`` moves it; ``wait`` moves it at once."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = _aware(start)
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def set(self, moment: dt.datetime) -> None:
        with self._lock:
            self._now = _aware(moment)

    def advance(self, delta: dt.timedelta | float) -> dt.datetime:
        step = delta if isinstance(delta, dt.timedelta) else dt.timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        if not stop.is_set():
            self.advance(max(0.0, seconds))
        return stop.is_set()


def _aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: clocks keep timezone-aware UTC")
    return moment.astimezone(dt.UTC)
