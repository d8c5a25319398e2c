"""SendGrid Event Webhook events → the store: each kept once, and the ones about consent acted upon.

The bounce mailbox (``pipeline.feedback.bounces``) stores what it reads through the same
``store_events``, so bounces and complaints reach reports and the health guard however they came.

Every event lands in ``delivery_events`` once per ``sg_event_id``, tied to its campaign and subscriber
through the ``custom_args`` the SendGrid transport sets (SendGrid copies them to each event's top
level). An event without an ``sg_event_id`` is kept under a key derived from its content
(``sha256:…`` of its canonical JSON, in the same column), so a replay of it is a duplicate too.
Bounces, drops of bad addresses, spam reports and unsubscribes also change the subscriber's
status through the subscribers library (actor ``webhook``), which never brings anyone back.

Each event is read on its own and can never fail the post: an id that is not one of ours (too big
for the store, negative, not a number) is unknown, text loses control characters (PostgreSQL refuses
NUL) and is cut to its column, and items that are not events are skipped and counted (``ignored``).

Status changes are applied only for events not stored before, in the order the events came, and
in the same transaction as the post's events: a crash leaves neither and SendGrid's retry does
both, while a replay of an event already stored changes nothing, so it cannot undo a resubscribe
that came after it.

A post is SendGrid's batch of up to a thousand events, and it is stored as one: one lookup of the
people and campaigns its events name, one ``INSERT … ON CONFLICT DO NOTHING RETURNING`` of its
events (de-duplication by the unique ``sg_event_id``, whatever else writes at the same time), one
commit. ``bench/webhook.py`` measures it beside a bare route that only verifies and parses.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    String,
    cast,
    exists,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

from pipeline.audience.fields import is_control, parse_email
from pipeline.audience.subscribers import set_status
from pipeline.dispatch import ledger
from pipeline.errors import AudienceError
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import DeliveryStatus, SubscriberStatus
from pipeline.store.tables import campaigns, deliveries, delivery_events, subscribers
from pipeline.transports.base import Outcome

ACTOR = "webhook"
STATUS_BY_KIND = {
    "bounce": SubscriberStatus.BOUNCED,
    "spamreport": SubscriberStatus.COMPLAINED,
    "unsubscribe": SubscriberStatus.UNSUBSCRIBED,
    "group_unsubscribe": SubscriberStatus.UNSUBSCRIBED,
}
"""Events that say who must not be mailed again, and the status each one calls for."""
STATUS_BY_DROP_REASON = {
    "bounced address": SubscriberStatus.BOUNCED,
    "invalid": SubscriberStatus.BOUNCED,
    "spam reporting address": SubscriberStatus.COMPLAINED,
    "unsubscribed address": SubscriberStatus.UNSUBSCRIBED,
}
"""``dropped`` events whose reason is one of SendGrid's own suppression lists (lower-cased)."""
BLOCKED = "blocked"
"""A ``bounce`` of ``type: blocked`` (the receiving server refused for now): kept, but no status change."""
MAX_DEPTH = 16
"""Nesting deeper than this is no SendGrid event (theirs nest two levels: a list of categories)."""
MAX_ID = 2**63 - 1
"""The largest id the store holds (a signed 64-bit integer on PostgreSQL and SQLite)."""
DERIVED_KEY = "sha256:"
"""The prefix of a key derived from an event's content; SendGrid's own ids never have it."""
_ADDRESS_PART = r"[^\s<>()\[\]\"',;:@]"
_ADDRESS = re.compile(rf"(?<!{_ADDRESS_PART}){_ADDRESS_PART}++@{_ADDRESS_PART}++")
"""An address in provider text: tried only where a run of address characters starts, and never
backtracked into (possessive), so a long bounce reply costs one pass, not one pass per character."""
_CONTAINERS = (dict, list)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_DIGITS_ONLY = bytes(ord("0") if char in b"0123456789" else ord(" ") for char in range(256))
_LONG_NUMBER = b"0" * 19
"""A run of 19 digits, found in the post's bytes with every digit made ``0`` (C speed: a regular
expression takes twenty times as long)."""
_TOKEN_PATH = re.compile(r"^(https?://[^/?#]+)/(u|preferences|confirm)/[^/?#]+")


class ProviderEvent(NamedTuple):
    """One event as SendGrid reported it (or a bounce or complaint read from the mailbox), reduced to
    what the store keeps (a named tuple: a post makes a thousand of them)."""

    kind: str
    sg_event_id: str
    """SendGrid's id of the event, or a key derived from its content when it has none."""
    campaign_id: int | None
    subscriber_id: int | None
    delivery_id: int | None
    """The ledger row the message was sent for (a custom arg): any event proves SendGrid accepted it."""
    email: str | None
    """The address as the event gives it: read as an address only where it is not the one the store
    has for ``subscriber_id`` (SendGrid reports the address we sent to, so nearly never)."""
    url: str | None
    reason: str | None
    occurred_at: dt.datetime
    status: str | None
    """The subscription status this event calls for, if any."""

    @property
    def email_key(self) -> str | None:
        """The identity of ``email`` (``parse_email``), or None if it is no address."""
        return _email_key(self.email)


@dataclass(slots=True)
class Recorded:
    """What one webhook post did."""

    stored: int = 0
    duplicates: int = 0
    ignored: int = 0
    """Items skipped as no event: not an object, no ``event`` name, or nested deeper than MAX_DEPTH."""
    status_changes: int = 0
    settled: int = 0
    """Ledger rows in doubt that an event proved accepted: now sent."""
    campaigns: set[int] = field(default_factory=set)
    """Known campaigns the new events belong to (their health is worth a look)."""
    reported: set[tuple[int, str]] = field(default_factory=set)
    """(campaign, kind) of the new events of known campaigns: which ones got bounces or complaints."""
    new: set[str] = field(default_factory=set)
    """The keys (``sg_event_id``) of the events stored now for the first time."""


def load_post(body: bytes) -> list[Any]:
    """The items of a webhook post; ``ValueError`` saying why when it is not a JSON array.

    Nesting is bounded by the JSON parser's own recursion guard (a 50,000-deep array is refused,
    not a crash), and integers too long to be an id or a time stay text, so no single event can
    make the whole post fail. orjson reads the post when it reads it as the standard library does
    (three times as fast): never where a number has 19 digits or more (orjson makes a float of an
    integer past 64 bits), and whatever it refuses (NaN, lone surrogates, a BOM, UTF-16, deep
    nesting) goes to the standard library, which decides.
    """
    if _LONG_NUMBER not in body.translate(_DIGITS_ONLY):
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(items, list):
                return items
    try:
        items = json.loads(body, parse_int=_json_int)
    except RecursionError:
        raise ValueError("body is nested too deeply") from None
    except ValueError:
        raise ValueError("body is not JSON") from None
    if not isinstance(items, list):
        raise ValueError("body is not a JSON array of events")
    return items


def _json_int(digits: str) -> int | str:
    """An integer of JSON, or its digits when longer than any id or time (Python refuses to convert
    integers of more than 4300 digits, and such a number is nothing an event means)."""
    return int(digits) if len(digits) <= 20 else digits


def _deeper(value: dict[Any, Any] | list[Any], limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` levels deep (itself being one): only the dicts and
    lists inside are looked into, so a flat event costs one pass over its values."""
    if limit < 1:
        return True
    for child in value.values() if isinstance(value, dict) else value:
        if isinstance(child, _CONTAINERS) and _deeper(child, limit - 1):
            return True
    return False


def _number(value: Any) -> int | None:
    """A positive id from a custom arg (SendGrid passes them as strings); anything else, including a
    number too big for the store, is unknown."""
    if type(value) is str:
        return _digits(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return value if 0 < value <= MAX_ID else None


@functools.lru_cache(maxsize=16384)
def _digits(text: str) -> int | None:
    """``_number`` of a string, remembered: a post names one campaign a thousand times, and a person's
    processed, delivered and open events come in posts close together."""
    if not (text.isdigit() and text.isascii() and len(text) <= 19):
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


def _text(value: Any, limit: int) -> str | None:
    """A field as storable text: control characters (and lone surrogates) become spaces."""
    if type(value) is str and value.isprintable():  # nearly every value: one test
        return value.strip()[:limit] or None
    if value is None or isinstance(value, dict | list):
        return None
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(" " if is_control(ch) else ch for ch in text)
    return text.strip()[:limit] or None


def _derived_key(raw: Mapping[str, Any]) -> str:
    """A key for an event SendGrid gave no ``sg_event_id``: the same event posted again has the same."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return DERIVED_KEY + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def scrub(text: str | None, limit: int) -> str | None:
    """Provider text without addresses or link tokens: bounce replies often quote the address."""
    if text is None:
        return None
    if text.startswith("http"):  # (the one test costs less than the expression's search)
        text = _TOKEN_PATH.sub(r"\1/\2/{token}", text, count=1)
    return (_ADDRESS.sub("[address]", text) if "@" in text else text)[:limit]


def _email_key(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_email(value).key
    except ValueError:
        return None


def _occurred(value: Any, now: dt.datetime) -> dt.datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _utc(value) or now
    return now


@functools.lru_cache(maxsize=4096)
def _utc(seconds: float) -> dt.datetime | None:
    """A Unix time as UTC, or None if it is no time; remembered, as the events of a post share a few
    seconds."""
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _status(kind: str, raw: Mapping[str, Any]) -> str | None:
    if kind == "dropped":
        reason = str(raw.get("reason") or "").strip().lower()
        return STATUS_BY_DROP_REASON.get(reason)
    return STATUS_BY_KIND.get(kind)


def parse_event(raw: Any, now: dt.datetime) -> ProviderEvent | None:
    """One item of the posted JSON array, or None if it is not an event."""
    if not isinstance(raw, dict):
        return None
    if not _SCALARS.issuperset(map(type, raw.values())) and _deeper(raw, MAX_DEPTH):
        return None  # (nearly every event holds scalars only: one test at C speed)
    kind = _text(raw.get("event"), 32)
    if kind is None:
        return None
    if kind == "bounce" and str(raw.get("type") or "").lower() == BLOCKED:
        kind = BLOCKED
    reason = raw.get("reason") or raw.get("response")
    return ProviderEvent(
        kind,
        _text(raw.get("sg_event_id"), 100) or _derived_key(raw),
        _number(raw.get("campaign_id")),
        _number(raw.get("subscriber_id")),
        _number(raw.get("delivery_id")),
        email if isinstance(email := raw.get("email"), str) else None,
        scrub(_text(raw.get("url"), 4000), 2000) if kind == "click" else None,
        scrub(_text(reason, 2000), 500) if reason is not None else None,
        _occurred(raw.get("timestamp"), now),
        _status(kind, raw),
    )


def _among(conn: Connection, column: ColumnElement[Any], values: Collection[Any]) -> ColumnElement[bool]:
    """``column IN (values)`` with the values in one JSON parameter however many they are, read by
    the database itself: the statement's text is the same for every post, so it is parsed once (an
    ``IN`` list binds a parameter per value, each converted in Python, and is parsed every time)."""
    payload = literal(json.dumps(list(values)))
    if conn.dialect.name == "postgresql":
        value = func.jsonb_array_elements_text(cast(payload, postgresql.JSONB)).table_valued("value").c.value
        return column.in_(select(_typed(value, column.type)))
    return column.in_(select(func.json_each(payload).table_valued("value").c.value))


def _typed(text: ColumnElement[Any], type_: TypeEngine[Any]) -> ColumnElement[Any]:
    """PostgreSQL: a value of JSON text as the column's type. Text stays uncast: a cast to
    VARCHAR(n) would cut what the column itself refuses."""
    return text if isinstance(type_, String) else cast(text, type_)


@dataclass(frozen=True, slots=True)
class _Known:
    """What the store knows of the people and campaigns a post's events name."""

    campaigns: set[int] = field(default_factory=set)
    email_by_id: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Each subscriber found: the address stored and its identity (``email_key``)."""
    id_by_key: dict[str, int] = field(default_factory=dict)
    in_doubt: set[int] = field(default_factory=set)
    """The campaigns among them with ledger rows in doubt."""
    keys: dict[str, str | None] = field(default_factory=dict)
    """The identity of each address the events give, read once per post."""

    def key_of(self, email: str) -> str | None:
        if email not in self.keys:
            self.keys[email] = _email_key(email)
        return self.keys[email]


def _known(conn: Connection, events: Sequence[ProviderEvent]) -> _Known:
    """Which campaigns the events name exist (and have rows in doubt), and which subscribers: by the
    custom arg's id, and by address only for the events whose id is unknown or has another address."""
    known = _Known()
    campaign_ids = {e.campaign_id for e in events if e.campaign_id is not None}
    if campaign_ids:
        c, d = campaigns.c, deliveries.c
        doubt = exists().where(d.campaign_id == c.id, d.status == DeliveryStatus.IN_DOUBT)
        for campaign_id, in_doubt in conn.execute(
            select(c.id, doubt).where(_among(conn, c.id, campaign_ids))
        ).all():
            known.campaigns.add(campaign_id)
            if in_doubt:
                known.in_doubt.add(campaign_id)
    _look_up(conn, known, subscribers.c.id, {e.subscriber_id for e in events if e.subscriber_id is not None})
    unsettled = {e.email for e in events if e.email is not None and _subscriber(e, known) is None}
    keys = {key for email in unsettled if (key := known.key_of(email)) is not None}
    _look_up(conn, known, subscribers.c.email_key, keys - known.id_by_key.keys())
    return known


def _look_up(conn: Connection, known: _Known, column: ColumnElement[Any], values: Collection[Any]) -> None:
    if values:
        s = subscribers.c
        for subscriber_id, email, key in conn.execute(
            select(s.id, s.email, s.email_key).where(_among(conn, column, values))
        ).all():
            known.email_by_id[subscriber_id] = (email, key)
            known.id_by_key[key] = subscriber_id


def _stored_before(conn: Connection, events: Sequence[ProviderEvent]) -> set[str]:
    """Which of ``events`` are in the store already."""
    e = delivery_events.c
    query = select(e.sg_event_id).where(_among(conn, e.sg_event_id, [x.sg_event_id for x in events]))
    return set(conn.scalars(query).all())


def _subscriber(event: ProviderEvent, known: _Known) -> int | None:
    """The custom arg's subscriber if the event's address agrees (ids of erased people can be reused
    on SQLite), else whoever has the event's address, else unknown."""
    sid, email = event.subscriber_id, event.email
    found = known.email_by_id.get(sid) if sid is not None else None
    if found is not None and email in (None, found[0]):
        return sid  # no address, or the one stored character for character: nothing to read
    key = known.key_of(email) if email is not None else None
    if found is not None and key in (None, found[1]):
        return sid
    return known.id_by_key.get(key) if key else None


def _apply_status(
    store: Store, subscriber_id: int, event: ProviderEvent, campaign_id: int | None, actor: str
) -> bool:
    assert event.status is not None
    detail = {"event": event.kind, "campaign_id": campaign_id, "sg_event_id": event.sg_event_id}
    try:
        return set_status(store, subscriber_id, event.status, actor=actor, detail=detail)
    except AudienceError:
        return False  # a move the library refuses (a complaint is final; erased meanwhile): never forced


_COLUMNS = ("sg_event_id", "kind", "campaign_id", "subscriber_id", "url", "reason", "occurred_at")
"""The columns of ``delivery_events`` an event fills, in the order of its rows here."""
SQLITE_INSERT_ROWS = 500
"""Rows per INSERT on SQLite: 4,000 bound values, well inside its limit of 32,766 per statement."""


def _insert_new(conn: Connection, rows: Sequence[tuple[Any, ...]], now: dt.datetime) -> set[str]:
    """Store rows (values in ``_COLUMNS`` order) received ``now``, skipping rows whose ``sg_event_id``
    is stored already (a replay, or a concurrent retry of the post); the ids stored now.

    Not SQLAlchemy's executemany: it binds and converts 8 values a row in Python, which was most of
    the time a post took. PostgreSQL reads the rows from one JSON parameter; SQLite, whose JSON
    functions parse each row again for every column, takes them bound by the driver, a few hundred
    rows a statement. Times are converted once per distinct time, as SQLAlchemy binds them.
    """
    occurred_at = delivery_events.c.occurred_at.type
    bound = occurred_at.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    assert bound is not None
    times = {when: bound(when) for when in {row[-1] for row in rows} | {now}}
    if conn.dialect.name == "postgresql":
        return _insert_from_json(conn, [(*row[:-1], times[row[-1]].isoformat()) for row in rows], now)
    new: set[str] = set()
    for start in range(0, len(rows), SQLITE_INSERT_ROWS):
        some = rows[start : start + SQLITE_INSERT_ROWS]
        values = tuple(value for row in some for value in (*row[:-1], times[row[-1]], times[now]))
        new.update(conn.exec_driver_sql(_sqlite_insert(len(some)), values).scalars().all())
    return new


def _insert_from_json(conn: Connection, rows: list[tuple[Any, ...]], now: dt.datetime) -> set[str]:
    """PostgreSQL: INSERT … SELECT from the rows of one JSON array, … ON CONFLICT DO NOTHING RETURNING."""
    e = delivery_events.c
    columns = [e[name] for name in _COLUMNS]
    value = func.jsonb_array_elements(cast(literal(json.dumps(rows)), postgresql.JSONB)).table_valued("value")
    cells = [_typed(value.c.value.op("->>")(literal_column(str(i))), c.type) for i, c in enumerate(columns)]
    statement = postgresql.insert(delivery_events).from_select(
        [*columns, e.received_at], select(*cells, literal(now, e.received_at.type))
    )
    conflict_free = statement.on_conflict_do_nothing(index_elements=["sg_event_id"])
    return set(conn.scalars(conflict_free.returning(e.sg_event_id)).all())


@functools.lru_cache(maxsize=8)
def _sqlite_insert(count: int) -> str:
    """SQLite: the INSERT of ``count`` rows of ``_COLUMNS`` and ``received_at``, the same text for
    every post (so SQLite prepares it once), … ON CONFLICT DO NOTHING RETURNING the ids stored."""
    names = [*_COLUMNS, "received_at"]
    row = "(" + ", ".join("?" for _ in names) + ")"
    return (
        f"INSERT INTO {delivery_events.name} ({', '.join(names)}) VALUES {', '.join([row] * count)} "
        "ON CONFLICT (sg_event_id) DO NOTHING RETURNING sg_event_id"
    )


def record_events(store: Store, items: Sequence[Any], *, now: dt.datetime | None = None) -> Recorded:
    """Store a webhook post's events once each and apply the status changes the new ones call for."""
    now = now or utcnow()
    parsed = [parse_event(item, now) for item in items]
    result = store_events(store, [event for event in parsed if event is not None], now=now)
    result.ignored += sum(event is None for event in parsed)
    return result


def store_events(
    store: Store, items: Sequence[ProviderEvent], *, now: dt.datetime, actor: str = ACTOR
) -> Recorded:
    """Store events once each (by ``sg_event_id``) and apply the status changes the new ones call for,
    as ``actor``; shared by the webhook and the bounce mailbox.

    One transaction for the whole post. First the few events about consent, in the order they
    came: those not stored before change the subscriber's status, each through the subscribers
    library (which alone decides what move is allowed). Then every event is stored by one
    ``INSERT … ON CONFLICT DO NOTHING RETURNING`` (on SQLite one per 500 rows): what it returns is
    new, the rest were duplicates. Last, ledger rows in doubt that the events name are settled. A
    crash before the commit leaves nothing, and SendGrid's retry does it all.
    """
    result = Recorded()
    events: list[ProviderEvent] = []
    seen: set[str] = set()
    for event in items:
        if event.sg_event_id in seen:
            result.duplicates += 1
        else:
            seen.add(event.sg_event_id)
            events.append(event)
    if not events:
        return result
    with store.write() as conn:
        within = _InTransaction(store, conn)
        known = _known(conn, events)
        consent = [event for event in events if event.status is not None]
        if consent:
            result.status_changes = _change_statuses(within, conn, consent, known, actor)
        rows = [
            (
                event.sg_event_id,
                event.kind,
                event.campaign_id if event.campaign_id in known.campaigns else None,
                _subscriber(event, known),
                event.url,
                event.reason,
                event.occurred_at,
            )
            for event in events
        ]
        result.new = _insert_new(conn, rows, now)
        result.settled = _settle_in_doubt(within, events, known)
    result.stored = len(result.new)
    result.duplicates += len(rows) - len(result.new)
    result.reported = {(row[2], row[1]) for row in rows if row[2] is not None and row[0] in result.new}
    result.campaigns = {campaign_id for campaign_id, _ in result.reported}
    return result


class _InTransaction(Store):
    """The store as seen from inside an open transaction: the reads and writes of the libraries the
    post calls (subscribers, ledger) happen in it, each write in a savepoint of its own, so a refused
    move undoes only itself and everything commits with the post's events."""

    def __init__(self, store: Store, conn: Connection) -> None:
        super().__init__(store.engine, store.signer, segments_file=store.segments_file)
        self.conn = conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        yield self.conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._errors(), self.conn.begin_nested():
            yield self.conn


def _change_statuses(
    store: Store, conn: Connection, events: Sequence[ProviderEvent], known: _Known, actor: str
) -> int:
    """Apply, in order, the status changes that ``events`` not stored before call for; how many did.

    The people concerned are locked first, in the order of their ids (PostgreSQL; SQLite's writers
    take turns anyway), so two posts changing the same people at once wait for each other rather
    than deadlock.
    """
    stored = _stored_before(conn, events)
    new = [event for event in events if event.sg_event_id not in stored]
    people = sorted({sid for event in new if (sid := _subscriber(event, known)) is not None})
    if people and conn.dialect.name == "postgresql":
        s = subscribers.c
        conn.execute(select(s.id).where(_among(conn, s.id, people)).order_by(s.id).with_for_update()).all()
    changes = 0
    for event in new:
        subscriber_id = _subscriber(event, known)
        if subscriber_id is not None:
            campaign_id = event.campaign_id if event.campaign_id in known.campaigns else None
            changes += _apply_status(store, subscriber_id, event, campaign_id, actor)
    return changes


def _settle_in_doubt(store: Store, events: Sequence[ProviderEvent], known: _Known) -> int:
    """SendGrid reports only on messages it accepted: a row in doubt that an event names was sent."""
    by_campaign: dict[int, set[int]] = {}
    for event in events:
        if event.delivery_id is not None and event.campaign_id in known.in_doubt:
            by_campaign.setdefault(event.campaign_id, set()).add(event.delivery_id)
    return sum(
        ledger.settle(
            store, campaign_id, [Outcome(i, "sent") for i in sorted(ids)], "confirmed by SendGrid's events"
        )
        for campaign_id, ids in by_campaign.items()
    )
