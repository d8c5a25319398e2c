"""Local send times: an issue's date at the schedule's time of day, in a time zone, as a UTC moment.

Times are computed with ``zoneinfo`` from the date and the wall-clock time each time, never by adding
168 hours to last week's moment, so 07:00 stays 07:00 local on both sides of a DST change.

With per-recipient time zones the campaign is created when the issue's time comes anywhere on Earth
(UTC+14) and each ledger row gets its own ``send_at``: one ``UPDATE`` per distinct time zone.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import Connection

from pipeline.dispatch import ledger
from pipeline.settings import Settings

EARLIEST = dt.timezone(dt.timedelta(hours=14))
"""The time zone where a calendar day starts first (Pacific/Kiritimati)."""


@cache
def zone(name: str) -> dt.tzinfo:
    return ZoneInfo(name)


def schedule_zone(settings: Settings) -> str:
    """The IANA name issue times are read in: schedule.timezone, else newsletter.timezone."""
    return settings.schedule.timezone or settings.newsletter.timezone


def clock_time(hhmm: str) -> dt.time:
    hours, minutes = hhmm.split(":")
    return dt.time(int(hours), int(minutes))


def local_moment(day: dt.date, at: dt.time, tz: dt.tzinfo) -> dt.datetime:
    """``day`` at wall time ``at`` in ``tz``, as UTC.

    ``fold=0`` (PEP 495): a repeated wall time is its first occurrence, and one inside a spring-forward
    gap is read with the offset before the change, which lands just after the gap (02:30 → 03:30).
    """
    return dt.datetime.combine(day, at, tzinfo=tz).astimezone(dt.UTC)


def due_moment(settings: Settings, day: dt.date) -> dt.datetime:
    """When the issue dated ``day`` is due: at schedule.time in the schedule's zone, or, with
    per-recipient time zones, when that time first comes anywhere (the campaign must exist by then)."""
    at = clock_time(settings.schedule.time)
    if settings.schedule.per_recipient_timezone:
        return local_moment(day, at, EARLIEST)
    return local_moment(day, at, zone(schedule_zone(settings)))


def _known(name: str | None) -> bool:
    if not name:
        return False
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def fill_send_times(conn: Connection, campaign_id: int, day: dt.date, settings: Settings) -> int:
    """Give each ledger row of the campaign its recipient's local send time; returns the zones seen.

    Subscribers without a (known) time zone get the schedule's.
    """
    at = clock_time(settings.schedule.time)
    fallback = zone(schedule_zone(settings))

    def moment_in(name: str | None) -> dt.datetime:
        return local_moment(day, at, zone(name) if name is not None and _known(name) else fallback)

    return ledger.set_send_times(conn, campaign_id, moment_in)
