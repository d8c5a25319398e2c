"""One subscriber at a time: add, look up, change status, suppress and erase, each with a consent event.

Every change of status is checked against one table of allowed moves, so no code path can quietly turn
someone who unsubscribed, bounced or complained back into an ``active`` subscriber. The events log
records who changed what and when, but never an address: erasing a person leaves nothing to find.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, RowMapping, delete, insert, select, update

from pipeline.audience.enrollment import enroll
from pipeline.audience.fields import (
    check_attribute,
    check_name,
    check_tag,
    check_timezone,
    parse_email,
)
from pipeline.audience.segments import SegmentSpec, resolve, where
from pipeline.errors import AudienceError
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import LEFT, SubscriberStatus
from pipeline.store.tables import (
    deliveries,
    subscriber_events,
    subscriber_tags,
    subscribers,
    suppressions,
)

# Moves any actor may make; the people who left come back only through ``resubscribe=True``.
_ALLOWED: dict[str, set[SubscriberStatus]] = {
    SubscriberStatus.UNCONFIRMED: {SubscriberStatus.ACTIVE, *LEFT},
    SubscriberStatus.ACTIVE: set(LEFT),
    SubscriberStatus.UNSUBSCRIBED: {SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED},
    SubscriberStatus.BOUNCED: {SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.COMPLAINED},
    SubscriberStatus.COMPLAINED: set(),
}
_COME_BACK = {SubscriberStatus.UNCONFIRMED, SubscriberStatus.ACTIVE}
_RESUBSCRIBE = {SubscriberStatus.UNSUBSCRIBED: _COME_BACK, SubscriberStatus.BOUNCED: _COME_BACK}
NEW_STATUSES = (SubscriberStatus.ACTIVE, SubscriberStatus.UNCONFIRMED)
"""The states a person may be added in (by hand or by import); the others are reached, never given."""


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    email: str
    name: str | None
    status: str
    timezone: str | None
    source: str
    attributes: dict[str, Any]
    tags: tuple[str, ...]
    created_at: dt.datetime
    confirmed_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    subscriber_id: int | None
    at: dt.datetime
    kind: str
    from_status: str | None
    to_status: str | None
    actor: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Erasure:
    subscriber_id: int | None
    """The id the person had, or None if the address was not in the store (it is suppressed anyway)."""
    events_redacted: int


def event_row(
    subscriber_id: int | None,
    kind: str,
    actor: str,
    *,
    at: dt.datetime,
    from_status: str | None = None,
    to_status: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row for ``subscriber_events``; ``detail`` must never hold an address or a name."""
    return {
        "subscriber_id": subscriber_id,
        "at": at,
        "kind": kind,
        "from_status": from_status,
        "to_status": to_status,
        "actor": actor,
        "detail": detail or {},
    }


def status_timestamps(status: str, now: dt.datetime) -> dict[str, dt.datetime]:
    """The timestamp columns that entering ``status`` sets."""
    if status == SubscriberStatus.ACTIVE:
        return {"confirmed_at": now}
    if status == SubscriberStatus.UNSUBSCRIBED:
        return {"unsubscribed_at": now}
    return {}


def _tags_of(conn: Connection, subscriber_id: int) -> tuple[str, ...]:
    query = select(subscriber_tags.c.tag).where(subscriber_tags.c.subscriber_id == subscriber_id)
    return tuple(conn.scalars(query.order_by(subscriber_tags.c.tag)))


def _subscriber(row: RowMapping, tags: tuple[str, ...]) -> Subscriber:
    values = {field.name: row[field.name] for field in fields(Subscriber) if field.name != "tags"}
    return Subscriber(**values, tags=tags)


def _row_of(conn: Connection, who: int | str, *, for_update: bool = False) -> RowMapping | None:
    column, value = (subscribers.c.id, who) if isinstance(who, int) else (subscribers.c.email_key, _key(who))
    query = select(subscribers).where(column == value)
    return conn.execute(query.with_for_update() if for_update else query).mappings().first()


def _key(email: str) -> str:
    try:
        return parse_email(email).key
    except ValueError as exc:
        raise AudienceError(str(exc)) from None


def _checked(field: str, value: str, check: Callable[[str], str]) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise AudienceError(f"{field}: {exc}") from None


def _required(row: RowMapping | None, who: int | str) -> RowMapping:
    if row is None:
        raise AudienceError(f"no subscriber {who!r}" if isinstance(who, int) else f"{who}: not a subscriber")
    return row


def find_subscriber(store: Store, who: int | str) -> Subscriber | None:
    """The subscriber with this id or address (any letter case), or None."""
    with store.read() as conn:
        row = _row_of(conn, who)
        return None if row is None else _subscriber(row, _tags_of(conn, row["id"]))


def get_subscriber(store: Store, who: int | str) -> Subscriber:
    """Like ``find_subscriber`` but an unknown subscriber is an ``AudienceError``."""
    with store.read() as conn:
        row = _required(_row_of(conn, who), who)
        return _subscriber(row, _tags_of(conn, row["id"]))


def subscriber_log(store: Store, subscriber_id: int) -> list[Event]:
    """The consent log of one subscriber, oldest first."""
    query = select(subscriber_events).where(subscriber_events.c.subscriber_id == subscriber_id)
    with store.read() as conn:
        rows = conn.execute(query.order_by(subscriber_events.c.id)).mappings()
        return [Event(**row) for row in rows]


def is_suppressed(conn: Connection, address_hash: str) -> bool:
    query = select(suppressions.c.reason).where(suppressions.c.address_hash == address_hash)
    return conn.execute(query).first() is not None


def add_subscriber(
    store: Store,
    email: str,
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    status: str = SubscriberStatus.ACTIVE,
    timezone: str | None = None,
    attributes: dict[str, str] | None = None,
    actor: str = "admin",
    welcome: bool = False,
) -> Subscriber:
    """Add one person; an existing or suppressed address is an ``AudienceError``, never an overwrite.

    The name and attributes follow the import's rules (no control characters, a bounded length).
    ``welcome`` enrolls them in the welcome series in the same transaction (active people only: the
    unconfirmed join it when they confirm).
    """
    if status not in NEW_STATUSES:
        raise AudienceError(f"status: new subscribers are active or unconfirmed, not '{status}'")
    if welcome and status != SubscriberStatus.ACTIVE:
        raise AudienceError(
            "welcome: only active people join the welcome series; unconfirmed ones join it when they confirm"
        )
    try:
        address = parse_email(email)
        clean_tags = list(dict.fromkeys(check_tag(tag) for tag in tags))
        zone = check_timezone(timezone) if timezone else None
    except ValueError as exc:
        raise AudienceError(str(exc)) from None
    given_name = _checked("name", (name or "").strip(), check_name) or None
    for key, value in (attributes or {}).items():
        _checked(f"attributes.{key}", value, check_attribute)
    now = utcnow()
    address_hash = store.address_hash(address.key)
    with store.write() as conn:
        existing = _row_of(conn, address.key)
        if existing is not None:
            raise AudienceError(f"{email}: already a subscriber (status {existing['status']})")
        if is_suppressed(conn, address_hash):
            raise AudienceError(f"{email}: on the suppression list (erased or blocked); it cannot be added")
        values = {
            "email": address.email,
            "email_key": address.key,
            "address_hash": address_hash,
            "name": given_name,
            "status": status,
            "attributes": attributes or {},
            "timezone": zone,
            "source": actor,
            "created_at": now,
            "updated_at": now,
            **status_timestamps(status, now),
        }
        new_id = conn.execute(insert(subscribers).returning(subscribers.c.id), values).scalar_one()
        if clean_tags:
            conn.execute(insert(subscriber_tags), [{"subscriber_id": new_id, "tag": t} for t in clean_tags])
        conn.execute(insert(subscriber_events), event_row(new_id, "added", actor, at=now, to_status=status))
        if welcome:
            enroll(conn, [new_id], now=now, source=actor)
    return get_subscriber(store, new_id)


def set_status(
    store: Store,
    who: int | str,
    status: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
    resubscribe: bool = False,
    then: Callable[[Connection, int, dt.datetime], object] | None = None,
) -> bool:
    """Move a subscriber to ``status``; False if already there. ``resubscribe`` is the person's own wish.

    Only the person themself (a confirmed subscribe form, say) may bring back someone who unsubscribed
    or bounced; a complaint is final. Any other move out of those states is an ``AudienceError``.
    ``then(conn, subscriber_id, now)`` runs in the same transaction once the status has changed (a
    first confirmation enrolls in the welcome series with it).
    """
    if status not in set(SubscriberStatus):
        raise AudienceError(f"status: '{status}' is not one of {', '.join(SubscriberStatus)}")
    now = utcnow()
    with store.write() as conn:
        row = _required(_row_of(conn, who, for_update=True), who)
        current = row["status"]
        if current == status:
            return False
        allowed = _ALLOWED[current] | (_RESUBSCRIBE.get(current, set()) if resubscribe else set())
        if status not in allowed:
            why = (
                "only the person can resubscribe" if current in _RESUBSCRIBE else "that change is not allowed"
            )
            raise AudienceError(f"{row['email']}: cannot change status from {current} to {status}: {why}")
        kind = (
            "resubscribed"
            if current in LEFT
            else "unsubscribed"
            if status == SubscriberStatus.UNSUBSCRIBED
            else None
        )
        values: dict[str, Any] = {"status": status, "updated_at": now, **status_timestamps(status, now)}
        conn.execute(update(subscribers).where(subscribers.c.id == row["id"]).values(values))
        event = event_row(
            row["id"],
            kind or "status_changed",
            actor,
            at=now,
            from_status=current,
            to_status=status,
            detail=detail,
        )
        conn.execute(insert(subscriber_events), event)
        if then is not None:
            then(conn, row["id"], now)
    return True


def unsubscribe(store: Store, who: int | str, *, actor: str = "admin") -> bool:
    """Honour an unsubscribe (link, webhook or admin); False if the person had already left."""
    row = get_subscriber(store, who)
    if row.status in LEFT:
        return False
    return set_status(store, row.id, SubscriberStatus.UNSUBSCRIBED, actor=actor)


def suppress(store: Store, email: str, reason: str, *, actor: str = "admin") -> bool:
    """Put an address on the suppression list (never mailed, never imported); False if it already was."""
    address_hash = store.address_hash(_key(email))
    now = utcnow()
    with store.write() as conn:
        if is_suppressed(conn, address_hash):
            return False
        conn.execute(insert(suppressions).values(address_hash=address_hash, reason=reason, created_at=now))
        row = _row_of(conn, email)
        subscriber_id = row["id"] if row is not None else None
        conn.execute(insert(subscriber_events), event_row(subscriber_id, "suppressed", actor, at=now))
    return True


def erase(store: Store, email: str, *, actor: str = "admin") -> Erasure:
    """GDPR erasure: delete the person and their tags, redact their log, and suppress the address for good.

    What is left is the keyed hash on the suppression list (so an old CSV cannot bring them back) and
    log entries that say what happened to subscriber N, without any personal detail.
    """
    key = _key(email)
    address_hash = store.address_hash(key)
    now = utcnow()
    with store.write() as conn:
        row = _row_of(conn, key, for_update=True)
        subscriber_id = row["id"] if row is not None else None
        redacted = 0
        if subscriber_id is not None:
            conn.execute(delete(subscriber_tags).where(subscriber_tags.c.subscriber_id == subscriber_id))
            conn.execute(delete(subscribers).where(subscribers.c.id == subscriber_id))
            mine = subscriber_events.c.subscriber_id == subscriber_id
            redacted = conn.execute(update(subscriber_events).where(mine).values(detail={})).rowcount
            conn.execute(
                update(deliveries)
                .where(deliveries.c.subscriber_id == subscriber_id)
                .values(email=f"erased-{subscriber_id}@invalid", name=None)
            )
        if is_suppressed(conn, address_hash):
            conn.execute(
                update(suppressions)
                .where(suppressions.c.address_hash == address_hash)
                .values(reason="erased", created_at=now)
            )
        else:
            conn.execute(
                insert(suppressions).values(address_hash=address_hash, reason="erased", created_at=now)
            )
        from_status = row["status"] if row is not None else None
        conn.execute(
            insert(subscriber_events),
            event_row(subscriber_id, "erased", actor, at=now, from_status=from_status),
        )
    return Erasure(subscriber_id, redacted)


def list_subscribers(
    store: Store,
    *,
    segments: SegmentSpec | None = None,
    statuses: Sequence[str] = (),
    limit: int | None = 50,
) -> list[Subscriber]:
    """Subscribers in id order, filtered by segment and/or status (in SQL), at most ``limit``."""
    query = select(subscribers).order_by(subscribers.c.id).limit(limit)
    if segments is not None:
        query = query.where(where(resolve(store, segments)))
    if statuses:
        query = query.where(subscribers.c.status.in_(statuses))
    with store.read() as conn:
        rows = conn.execute(query).mappings().all()
        tags: dict[int, list[str]] = {row["id"]: [] for row in rows}
        if tags:
            pairs = select(subscriber_tags).where(subscriber_tags.c.subscriber_id.in_(tags)).order_by("tag")
            for subscriber_id, tag in conn.execute(pairs):
                tags[subscriber_id].append(tag)
    return [_subscriber(row, tuple(tags[row["id"]])) for row in rows]
