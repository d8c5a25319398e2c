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

Status changes are applied only for events not stored before, and before they are stored: a crash in
between is healed by SendGrid's retry (the change is idempotent), while a replay of an event already
stored changes nothing, so it cannot undo a resubscribe that came after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Insert, select
from sqlalchemy.dialects import postgresql, sqlite

from pipeline.audience.fields import is_control, parse_email
from pipeline.audience.subscribers import set_status
from pipeline.dispatch import ledger
from pipeline.errors import AudienceError
from pipeline.store.engine import Store, in_chunks, utcnow
from pipeline.store.statuses import SubscriberStatus
from pipeline.store.tables import campaigns, delivery_events, subscribers
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
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:@]+")
_TOKEN_PATH = re.compile(r"^(https?://[^/?#]+)/(u|preferences|confirm)/[^/?#]+")


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One event as SendGrid reported it (or a bounce or complaint read from the mailbox), reduced to
    what the store keeps."""

    kind: str
    sg_event_id: str
    """SendGrid's id of the event, or a key derived from its content when it has none."""
    campaign_id: int | None
    subscriber_id: int | None
    delivery_id: int | None
    """The ledger row the message was sent for (a custom arg): any event proves SendGrid accepted it."""
    email_key: str | None
    url: str | None
    reason: str | None
    occurred_at: dt.datetime
    status: str | None
    """The subscription status this event calls for, if any."""


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
    new: set[str] = field(default_factory=set)
    """The keys (``sg_event_id``) of the events stored now for the first time."""


def load_post(body: bytes) -> list[Any]:
    """The items of a webhook post; ``ValueError`` saying why when it is not a JSON array.

    Nesting is bounded by the JSON parser's own recursion guard (a 50,000-deep array is refused,
    not a crash), and integers too long to be an id or a time stay text, so no single event can
    make the whole post fail.
    """
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


def _depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests, counting no further than ``limit`` + 1."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _number(value: Any) -> int | None:
    """A positive id from a custom arg (SendGrid passes them as strings); anything else, including a
    number too big for the store, is unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    return None


def _text(value: Any, limit: int) -> str | None:
    """A field as storable text: control characters (and lone surrogates) become spaces."""
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
    text = _TOKEN_PATH.sub(r"\1/\2/{token}", text)
    return _ADDRESS.sub("[address]", text)[:limit]


def _email_key(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_email(value).key
    except ValueError:
        return None


def _occurred(value: Any, now: dt.datetime) -> dt.datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return now
    return now


def _status(kind: str, raw: Mapping[str, Any]) -> str | None:
    if kind == "dropped":
        reason = str(raw.get("reason") or "").strip().lower()
        return STATUS_BY_DROP_REASON.get(reason)
    return STATUS_BY_KIND.get(kind)


def parse_event(raw: Any, now: dt.datetime) -> ProviderEvent | None:
    """One item of the posted JSON array, or None if it is not an event."""
    if not isinstance(raw, dict) or _depth(raw, MAX_DEPTH) > MAX_DEPTH:
        return None
    kind = _text(raw.get("event"), 32)
    if kind is None:
        return None
    if kind == "bounce" and str(raw.get("type") or "").lower() == BLOCKED:
        kind = BLOCKED
    reason = raw.get("reason") or raw.get("response")
    return ProviderEvent(
        kind=kind,
        sg_event_id=_text(raw.get("sg_event_id"), 100) or _derived_key(raw),
        campaign_id=_number(raw.get("campaign_id")),
        subscriber_id=_number(raw.get("subscriber_id")),
        delivery_id=_number(raw.get("delivery_id")),
        email_key=_email_key(raw.get("email")),
        url=scrub(_text(raw.get("url"), 4000), 2000) if kind == "click" else None,
        reason=scrub(_text(reason, 2000), 500),
        occurred_at=_occurred(raw.get("timestamp"), now),
        status=_status(kind, raw),
    )


@dataclass(frozen=True, slots=True)
class _Known:
    campaigns: set[int]
    key_by_id: dict[int, str]
    id_by_key: dict[str, int]
    stored_ids: set[str]


def _known(conn: Connection, events: Sequence[ProviderEvent]) -> _Known:
    """Which campaigns and subscribers the events name exist, and which events are stored already."""
    known = _Known(set(), {}, {}, set())
    campaign_ids = {e.campaign_id for e in events if e.campaign_id is not None}
    for chunk in in_chunks(campaign_ids):
        known.campaigns.update(conn.scalars(select(campaigns.c.id).where(campaigns.c.id.in_(chunk))))
    s = subscribers.c
    ids = {e.subscriber_id for e in events if e.subscriber_id is not None}
    keys = {e.email_key for e in events if e.email_key is not None}
    for column, values in ((s.id, ids), (s.email_key, keys)):
        for some in in_chunks(values):
            for subscriber_id, key in conn.execute(select(s.id, s.email_key).where(column.in_(some))):
                known.key_by_id[subscriber_id] = key
                known.id_by_key[key] = subscriber_id
    for sg_ids in in_chunks({e.sg_event_id for e in events}):
        query = select(delivery_events.c.sg_event_id).where(delivery_events.c.sg_event_id.in_(sg_ids))
        known.stored_ids.update(sg for sg in conn.scalars(query) if sg is not None)
    return known


def _subscriber(event: ProviderEvent, known: _Known) -> int | None:
    """The custom arg's subscriber if the event's address agrees (ids of erased people can be reused
    on SQLite), else whoever has the event's address, else unknown."""
    sid = event.subscriber_id
    if sid in known.key_by_id and event.email_key in (None, known.key_by_id[sid]):
        return sid
    return known.id_by_key.get(event.email_key) if event.email_key else None


def _apply_status(
    store: Store, subscriber_id: int, event: ProviderEvent, campaign_id: int | None, actor: str
) -> bool:
    assert event.status is not None
    detail = {"event": event.kind, "campaign_id": campaign_id, "sg_event_id": event.sg_event_id}
    try:
        return set_status(store, subscriber_id, event.status, actor=actor, detail=detail)
    except AudienceError:
        return False  # a move the library refuses (a complaint is final; erased meanwhile): never forced


def _insert_new(dialect: str) -> Insert:
    """INSERT that skips rows whose ``sg_event_id`` is stored already (a concurrent retry of the post)."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(delivery_events)
    return statement.on_conflict_do_nothing(index_elements=["sg_event_id"]).returning(
        delivery_events.c.sg_event_id
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
    as ``actor``; shared by the webhook and the bounce mailbox."""
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
    with store.read() as conn:
        known = _known(conn, events)
    rows = []
    for event in events:
        if event.sg_event_id in known.stored_ids:
            result.duplicates += 1
            continue
        campaign_id = event.campaign_id if event.campaign_id in known.campaigns else None
        subscriber_id = _subscriber(event, known)
        if event.status is not None and subscriber_id is not None:
            result.status_changes += _apply_status(store, subscriber_id, event, campaign_id, actor)
        if campaign_id is not None:
            result.campaigns.add(campaign_id)
        rows.append(
            {
                "sg_event_id": event.sg_event_id,
                "kind": event.kind,
                "campaign_id": campaign_id,
                "subscriber_id": subscriber_id,
                "url": event.url,
                "reason": event.reason,
                "occurred_at": event.occurred_at,
                "received_at": now,
            }
        )
    if rows:
        with store.write() as conn:
            result.new = set(conn.scalars(_insert_new(conn.dialect.name), rows))
        result.stored += len(result.new)
        result.duplicates += len(rows) - len(result.new)
    result.settled = _settle_in_doubt(store, events, known)
    return result


def _settle_in_doubt(store: Store, events: Sequence[ProviderEvent], known: _Known) -> int:
    """SendGrid reports only on messages it accepted: a row in doubt that an event names was sent."""
    by_campaign: dict[int, set[int]] = {}
    for event in events:
        if event.delivery_id is not None and event.campaign_id in known.campaigns:
            by_campaign.setdefault(event.campaign_id, set()).add(event.delivery_id)
    return sum(
        ledger.settle(
            store, campaign_id, [Outcome(i, "sent") for i in sorted(ids)], "confirmed by SendGrid's events"
        )
        for campaign_id, ids in by_campaign.items()
    )
