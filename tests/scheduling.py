"""What the scheduler tests share: dated copies of a sample issue, tuned settings, readers in time zones,
and a scheduler that sends to the outbox (see ``tests/mail.py`` for reading what it wrote)."""

from __future__ import annotations

import datetime as dt
import re
import threading
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.audience.subscribers import add_subscriber
from pipeline.schedule.localtime import local_moment
from pipeline.schedule.scheduler import Scheduler
from pipeline.settings import Settings
from pipeline.store.engine import Store
from tests.mail import outbox_opener
from tests.paths import REPO

SAMPLE = REPO / "issues" / "2026-12-01-name-it-to-tame-it.yaml"
NEW_YORK = ZoneInfo("America/New_York")
SEVEN = dt.time(7, 0)
AUDIENCE = {"ann@example.com": None, "bo@example.com": "Europe/Berlin", "cy@example.com": None}
"""Three readers, one with a zone of her own: what most scheduler tests send to."""


def issues_dir(settings: Settings, *, clear: bool = True) -> Path:
    """The settings' issues folder, emptied of the sample issues unless ``clear`` is false."""
    folder = settings.path(settings.newsletter.issues_dir)
    if clear:
        for path in folder.glob("*.yaml"):
            path.unlink()
    return folder


def write_issue(settings: Settings, day: dt.date, slug: str = "weekly", **extra: str) -> str:
    """A copy of a sample issue dated ``day`` (extra top-level keys as raw YAML); returns its slug."""
    text = re.sub(r"^date: .*$", f"date: {day.isoformat()}", SAMPLE.read_text(), flags=re.MULTILINE)
    text += "".join(f"{key}: {value}\n" for key, value in extra.items())
    name = f"{day.isoformat()}-{slug}"
    (issues_dir(settings, clear=False) / f"{name}.yaml").write_text(text, encoding="utf-8")
    return name


def tuned(settings: Settings, **schedule: Any) -> Settings:
    """Settings with the given schedule options, fast sending and small batches."""
    delivery = settings.delivery.model_copy(update={"rate_per_second": 1e6, "batch_size": 4})
    return settings.model_copy(
        update={"schedule": settings.schedule.model_copy(update=schedule), "delivery": delivery}
    )


def readers_in_zones(store: Store, zones: dict[str, str | None]) -> list[str]:
    """One active subscriber per address, in its time zone (None: the newsletter's); the addresses."""
    for email, zone in zones.items():
        add_subscriber(store, email, name=email.split("@")[0].title(), timezone=zone)
    return list(zones)


def scheduler(store: Store, settings: Settings, clock: ManualClock, **kwargs: Any) -> Scheduler:
    """A scheduler on ``clock`` whose campaigns all go to the outbox, whatever transport they name."""
    return Scheduler(store, settings, clock=clock, transports=outbox_opener(settings), **kwargs)


def at_seven(day: dt.date, zone: dt.tzinfo = NEW_YORK) -> dt.datetime:
    """07:00 on ``day`` in ``zone``: when a weekly issue is due."""
    return local_moment(day, SEVEN, zone)


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
