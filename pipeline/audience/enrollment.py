"""The welcome series' members: who joined it, when, and who is still in it.

A person joins (is *enrolled*) once: when they confirm their first signup (double opt-in), or when
an operator adds or imports them with ``--welcome``. The moment they join times every step
(``after: 3d`` is three days later). Leaving is for good: anyone who unsubscribed, bounced or
complained after joining is out of the series, even once they come back, and joining again never
restarts it (the row stays, so nobody is enrolled twice). Both are read from the consent log, which
every change of status writes, so no path that changes a status has to remember the series.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import Exists, Select, and_, exists, insert, literal, select
from sqlalchemy.engine import Connection

from pipeline.store.engine import Store, in_chunks
from pipeline.store.statuses import LEFT, SubscriberStatus
from pipeline.store.tables import (
    UtcDateTime,
    subscriber_events,
    subscribers,
    suppressions,
    welcome_enrollments,
)


def enroll(conn: Connection, subscriber_ids: Collection[int], *, now: dt.datetime, source: str) -> int:
    """Enroll those of ``subscriber_ids`` who are active and not yet enrolled, as of ``now``, in the
    caller's transaction; returns how many joined. ``source`` says what enrolled them."""
    s, e = subscribers.c, welcome_enrollments.c
    joined = 0
    for chunk in in_chunks(subscriber_ids):
        newcomers = select(s.id, literal(now, UtcDateTime()), literal(source)).where(
            s.id.in_(chunk),
            s.status == SubscriberStatus.ACTIVE,
            ~exists().where(e.subscriber_id == s.id),
        )
        columns = ["subscriber_id", "enrolled_at", "source"]
        statement = insert(welcome_enrollments).from_select(columns, newcomers).returning(e.subscriber_id)
        joined += len(conn.execute(statement).all())  # an INSERT … SELECT's rowcount is -1 through psycopg
    return joined


def left_since_joining() -> Exists:
    """The SQL condition "this enrolled person unsubscribed, bounced or complained after joining"
    (correlated with ``welcome_enrollments``): they have left the series for good."""
    ev, e = subscriber_events.c, welcome_enrollments.c
    return exists().where(ev.subscriber_id == e.subscriber_id, ev.at >= e.enrolled_at, ev.to_status.in_(LEFT))


def in_series() -> Select[tuple[int, str, str | None, str | None, dt.datetime]]:
    """``SELECT id, email, name, timezone, enrolled_at`` of everyone in the series who may be sent to
    now: enrolled, active, not suppressed, and not gone since joining. Callers add when they are due."""
    s, e = subscribers.c, welcome_enrollments.c
    suppressed = exists().where(suppressions.c.address_hash == s.address_hash)
    return (
        select(s.id, s.email, s.name, s.timezone, e.enrolled_at)
        .select_from(welcome_enrollments.join(subscribers, s.id == e.subscriber_id))
        .where(and_(s.status == SubscriberStatus.ACTIVE, ~suppressed, ~left_since_joining()))
    )


def enrolled_at(store: Store, subscriber_id: int) -> dt.datetime | None:
    """When the person joined the welcome series, or None if they never did."""
    e = welcome_enrollments.c
    with store.read() as conn:
        query = select(e.enrolled_at).where(e.subscriber_id == subscriber_id)
        return conn.execute(query).scalar_one_or_none()
