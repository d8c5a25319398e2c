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

from sqlalchemy import exists, or_, select, update
from sqlalchemy.engine import Connection

from pipeline.settings import Settings
from pipeline.store.tables import deliveries

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

    Subscribers without a (known) time zone get the schedule's. One UPDATE per distinct zone.
    """
    d = deliveries.c
    at = clock_time(settings.schedule.time)
    fallback = zone(schedule_zone(settings))
    names = conn.execute(select(d.timezone).where(d.campaign_id == campaign_id).distinct()).scalars().all()
    for name in names:
        tz = zone(name) if name is not None and _known(name) else fallback
        same_zone = d.timezone.is_(None) if name is None else d.timezone == name
        conn.execute(
            update(deliveries)
            .where(d.campaign_id == campaign_id, same_zone)
            .values(send_at=local_moment(day, at, tz))
        )
    return len(names)


def only_waiting(conn: Connection, campaign_id: int, horizon: dt.datetime) -> bool:
    """True when every unsent row of the campaign waits for a time after ``horizon`` (nothing to
    send and nothing to tidy up: the scheduler need not start a dispatch run for it this tick)."""
    d = deliveries.c
    mine = d.campaign_id == campaign_id
    queued = exists().where(mine, d.status == "queued")
    due = exists().where(mine, d.status == "queued", or_(d.send_at.is_(None), d.send_at <= horizon))
    sending = exists().where(mine, d.status == "sending")
    return bool(conn.execute(select(queued & ~due & ~sending)).scalar())
