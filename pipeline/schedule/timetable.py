"""Which issue is due when: the issue files, each with the UTC moment it goes out.

The scheduler looks every minute, so files are re-read only when they change (size and mtime). A file
that cannot be loaded still has a slot when its name carries a date (``YYYY-MM-DD-slug.yaml``): an issue
broken on its day must be reported, not silently skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.content.folder import ChangedFiles
from pipeline.content.issue import FILE_NAME, load_issue
from pipeline.errors import ContentError
from pipeline.schedule.localtime import due_moment
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Slot:
    """One issue file and when it is due."""

    path: Path
    slug: str
    day: dt.date
    due_at: dt.datetime
    segments: tuple[str, ...]
    problem: str | None = None
    """Why the file cannot be loaded (its date then comes from its name), or None."""


class Timetable:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files = ChangedFiles(settings.path(settings.newsletter.issues_dir), self._slot)

    def slots(self) -> list[Slot]:
        """Every issue file with a date, earliest due first."""
        slots = [slot for slot in self.files.read() if slot is not None]
        return sorted(slots, key=lambda s: (s.due_at, s.slug))

    def _slot(self, path: Path) -> Slot | None:
        defaults = tuple(self.settings.newsletter.default_segments)
        try:
            issue = load_issue(path).issue
        except ContentError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else "cannot be loaded"
            day = _named_date(path)
            if day is None:
                log.warning("%s: ignored by the scheduler: %s", path.name, problem)
                return None
            return Slot(path, path.stem, day, due_moment(self.settings, day), defaults, problem)
        day = issue.date
        assert day is not None, "an issue file outside welcome/ has a date (parse_issue requires it)"
        weekday = self.settings.schedule.weekday
        if day.strftime("%A").lower() != weekday:
            log.warning(
                "%s: dated %s, a %s; schedule.weekday is %s", path.name, day, day.strftime("%A"), weekday
            )
        segments = tuple(issue.segments or defaults)
        return Slot(path, path.stem, day, due_moment(self.settings, day), segments)


def _named_date(path: Path) -> dt.date | None:
    """The date in a ``YYYY-MM-DD-slug.yaml`` name, if it has a real one."""
    match = FILE_NAME.match(path.stem)
    try:
        return dt.date.fromisoformat(match["date"]) if match else None
    except ValueError:
        return None
