"""Webhook posts as SendGrid sends them, a thousand events at a time: stored in one statement, yet
each event kept once, consent changes made in the order the events came, unknown ids and items that
are no events treated exactly as one at a time (on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.audience.subscribers import find_subscriber, set_status, subscriber_log
from pipeline.feedback.events import Recorded, load_post, record_events
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.tables import deliveries, delivery_events
from pipeline.web import create_app
from tests.emulators.sendgrid_events import EventKey, event, post_events
from tests.fixtures.store import snapshot
from tests.transport_helpers import new_campaign
from tests.web_support import Clock, mark_sent, person, readers, web_settings

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
POST = 1000
"""Events in a post, as SendGrid batches them."""


@pytest.fixture
def app(settings: Settings, store: Store, key: EventKey, clock: Clock) -> Starlette:
    """The webhook trusting ``key``, with room for a post of a thousand events."""
    return create_app(web_settings(settings, key, webhook_max_body_bytes=5_000_000), store, clock=clock)


def opens(count: int, email: str = "reader@example.com") -> list[dict[str, Any]]:
    """``count`` events that change nobody's status: the crowd a post's consent events hide in."""
    return [event("open", email) for _ in range(count)]


def kept(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(delivery_events)).scalar_one())


def status_of(store: Store, who: int | str) -> str:
    found = find_subscriber(store, who)
    assert found is not None
    return found.status


def moves(store: Store, subscriber_id: int) -> list[tuple[str | None, str | None, str]]:
    """(from, to, event) of each status change the webhook made for the subscriber, in order."""
    return [
        (entry.from_status, entry.to_status, entry.detail["event"])
        for entry in subscriber_log(store, subscriber_id)
        if entry.actor == "webhook"
    ]


def test_an_event_twice_in_a_post_and_again_in_the_next_is_kept_once_and_acted_on_once(
    client: TestClient, store: Store, key: EventKey
) -> None:
    ana = person(store)
    bounce = event("bounce", "ana@example.com", subscriber_id=ana.id, sg_event_id="bounce-1")
    crowd = opens(POST - 3)
    first = post_events(client, [bounce, *crowd[:500], bounce, *crowd[500:], crowd[0]], key)
    set_status(store, ana.id, "active", actor="preferences-page", resubscribe=True)

    again = post_events(client, [crowd[1], bounce, event("delivered", "ana@example.com")], key)

    assert first.json() == {
        "stored": POST - 2,
        "duplicates": 2,
        "ignored": 0,
        "status_changes": 1,
        "paused_campaigns": 0,
    }
    assert (again.json()["stored"], again.json()["duplicates"], again.json()["status_changes"]) == (1, 2, 0)
    assert kept(store) == POST - 1
    assert moves(store, ana.id) == [("active", "bounced", "bounce")]
    assert status_of(store, ana.id) == "active", "a replayed bounce never undoes a later resubscribe"


@pytest.mark.parametrize(
    ("kinds", "status", "changes"),
    [
        (("bounce", "unsubscribe"), "unsubscribed", [("active", "bounced"), ("bounced", "unsubscribed")]),
        (("unsubscribe", "bounce"), "bounced", [("active", "unsubscribed"), ("unsubscribed", "bounced")]),
        (("spamreport", "unsubscribe"), "complained", [("active", "complained")]),
        (
            ("unsubscribe", "spamreport"),
            "complained",
            [("active", "unsubscribed"), ("unsubscribed", "complained")],
        ),
        (("group_unsubscribe", "group_resubscribe"), "unsubscribed", [("active", "unsubscribed")]),
    ],
)
def test_consent_events_of_one_person_in_one_post_take_effect_in_the_order_they_came(
    client: TestClient,
    store: Store,
    key: EventKey,
    kinds: tuple[str, str],
    status: str,
    changes: list[tuple[str, str]],
) -> None:
    ana, ben = person(store), person(store, "ben@example.com")
    crowd = opens(POST - 3)
    first, second = (event(kind, "ana@example.com", subscriber_id=ana.id) for kind in kinds)

    response = post_events(
        client, [*crowd[:300], first, *crowd[300:], event("bounce", "ben@example.com"), second], key
    )

    assert response.json()["status_changes"] == len(changes) + 1
    assert status_of(store, ana.id) == status
    assert [(before, after) for before, after, _ in moves(store, ana.id)] == changes
    assert status_of(store, ben.id) == "bounced"


def test_many_consent_events_in_one_post_each_change_their_person(store: Store, tmp_path: Path) -> None:
    emails = readers(store, tmp_path, 300)
    items = [event("bounce" if i % 2 else "spamreport", email) for i, email in enumerate(emails)]

    result = record_events(store, [*items, *opens(POST - len(items))], now=NOW)

    assert (result.stored, result.status_changes) == (POST, 300)
    assert {status_of(store, email) for email in emails[1::2]} == {"bounced"}
    assert {status_of(store, email) for email in emails[::2]} == {"complained"}


def test_events_with_unknown_ids_are_kept_with_nulls_among_known_ones(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    """The custom args are checked for the whole post at once: ids nobody has are unknown, an
    address nobody has is unknown, and an id that belongs to someone other than the event's address
    gives way to the address, as it does one event at a time."""
    emails = readers(store, tmp_path, 50)
    campaign = new_campaign(store, settings)
    sent = mark_sent(store, campaign.id, 50)
    ana = person(store)
    known = [
        event(
            "delivered", email, campaign_id=campaign.id, subscriber_id=subscriber_id, delivery_id=delivery_id
        )
        for (delivery_id, subscriber_id), email in zip(sent, emails, strict=True)
    ]
    unknown = [
        event("open", "nobody@example.com", campaign_id=999_999, subscriber_id=999_999, delivery_id=999_999),
        event("open", "ana@example.com", subscriber_id=999_999),
        event("open", "ANA@example.com", subscriber_id=sent[0][1], sg_event_id="id-of-another"),
        event("open", "nobody@example.com", subscriber_id=sent[1][1]),
        event("open", "nobody@example.com"),
    ]

    result = record_events(store, [*known[:25], *unknown, *known[25:]], now=NOW)

    assert (result.stored, result.settled, result.campaigns) == (55, 0, {campaign.id})
    e = delivery_events.c
    with store.read() as conn:
        rows = [
            tuple(row) for row in conn.execute(select(e.kind, e.campaign_id, e.subscriber_id).order_by(e.id))
        ]
    assert rows[:25] + rows[30:] == [("delivered", campaign.id, subscriber_id) for _, subscriber_id in sent]
    assert rows[25:30] == [
        ("open", None, None),
        ("open", None, ana.id),
        ("open", None, ana.id),
        ("open", None, None),
        ("open", None, None),
    ]


def nest(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_a_post_mixing_events_and_malformed_items_stores_what_one_at_a_time_stored(
    client: TestClient, store: Store, key: EventKey, clock: Clock
) -> None:
    """The outcome the webhook had before posts were stored in one statement, item by item."""
    ana = person(store)
    clock.now = NOW.timestamp()
    items: list[Any] = [
        {
            "event": "open",
            "email": "ana@example.com",
            "subscriber_id": str(ana.id),
            "sg_event_id": "ok-1",
            "timestamp": 1_700_000_000,
        },
        *[None, 3, "open", [], {}, {"event": ""}, {"event": {"x": 1}}, {"no": "event"}],
        {"event": "open", "sg_event_id": "deep-16", "nest": nest(15)},
        {"event": "open", "sg_event_id": "deep-17", "nest": nest(16)},
        {
            "event": "click",
            "sg_event_id": "ids",
            "subscriber_id": "abc",
            "campaign_id": "-1",
            "delivery_id": "9223372036854775808",
            "url": "https://news.example.org/u/MTI.abc?x=1",
        },
        {
            "event": "bounce",
            "sg_event_id": "big",
            "subscriber_id": 10**30,
            "email": "not an address",
            "timestamp": "soon",
            "reason": '550 <ana@example.com>\x00 gone «voll» 😀 "q" \\',
        },
        {
            "event": "dropped",
            "sg_event_id": "x" * 150,
            "reason": "Bounced Address",
            "email": "ANA@Example.com",
            "timestamp": 1e20,
        },
        {
            "event": "deferred",
            "email": "ana@example.com",
            "response": "r" * 3000,
            "timestamp": 1_700_000_000.25,
        },
        {"event": "open\x07", "sg_event_id": "ctl", "email": "ana@example.com"},
    ]

    response = post_events(client, items, key, timestamp=int(NOW.timestamp()))

    assert response.json() == {
        "stored": 7,
        "duplicates": 0,
        "ignored": 9,
        "status_changes": 1,
        "paused_campaigns": 0,
    }
    e = delivery_events.c
    with store.read() as conn:
        query = select(e.sg_event_id, e.kind, e.campaign_id, e.subscriber_id, e.url, e.reason, e.occurred_at)
        rows = [tuple(row) for row in conn.execute(query.order_by(e.id))]
    received = NOW  # the time of the post stands in for a time that is none
    then = dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    assert [row[0] for row in rows][:4] == ["ok-1", "deep-16", "ids", "big"]
    assert rows[4][0] == "x" * 100 and rows[5][0].startswith("sha256:") and rows[6][0] == "ctl"
    assert [row[1:] for row in rows] == [
        ("open", None, ana.id, None, None, then),
        ("open", None, None, None, None, received),
        ("click", None, None, "https://news.example.org/u/{token}?x=1", None, received),
        ("bounce", None, None, None, '550 <[address]>  gone «voll» 😀 "q" \\', received),
        ("dropped", None, ana.id, None, "Bounced Address", received),
        ("deferred", None, ana.id, None, "r" * 500, then + dt.timedelta(milliseconds=250)),
        ("open", None, ana.id, None, None, received),
    ]
    assert status_of(store, ana.id) == "bounced"


def test_times_are_stored_as_the_store_keeps_them_and_found_again(store: Store) -> None:
    """Times reach the store inside one JSON parameter; they must be the very values SQLAlchemy
    would have bound, or queries by time would miss them (SQLite compares its text form)."""
    at = 1_700_000_000.123456
    when = dt.datetime.fromtimestamp(at, dt.UTC)

    record_events(store, [{"event": "open", "timestamp": at, "sg_event_id": "t"}], now=NOW)

    e = delivery_events.c
    with store.read() as conn:
        found = conn.execute(select(e.sg_event_id).where(e.occurred_at == when, e.received_at == NOW)).all()
        later = conn.execute(select(func.count()).where(e.occurred_at > when)).scalar_one()
    assert [row[0] for row in found] == ["t"] and later == 0


def test_rows_in_doubt_that_a_big_post_names_are_settled_and_no_others(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    emails = readers(store, tmp_path, 40)
    campaign = new_campaign(store, settings)
    sent = mark_sent(store, campaign.id, 40)
    doubtful = [delivery_id for delivery_id, _ in sent[:20]]
    with store.write() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id.in_(doubtful)).values(status="in_doubt"))
    named = [
        event("delivered", email, campaign_id=campaign.id, delivery_id=delivery_id)
        for (delivery_id, _), email in zip(sent[10:30], emails[10:30], strict=True)
    ]

    result = record_events(store, [*opens(POST - len(named)), *named], now=NOW)

    assert result.settled == 10
    with store.read() as conn:
        statuses = dict(conn.execute(select(deliveries.c.id, deliveries.c.status)).all())
    assert [statuses[i] for i in doubtful] == ["in_doubt"] * 10 + ["sent"] * 10
    assert {statuses[delivery_id] for delivery_id, _ in sent[20:]} == {"sent"}


def test_the_same_post_arriving_twice_at_once_is_kept_once_and_acted_on_once(store: Store) -> None:
    """SendGrid retries a post it thinks failed; the retry may arrive while the first is stored."""
    ana = person(store)
    items = [event("unsubscribe", "ana@example.com", subscriber_id=ana.id), *opens(POST - 1)]
    start = threading.Barrier(2)
    results: list[Recorded] = []

    def post() -> None:
        start.wait()
        results.append(record_events(store, items, now=NOW))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [result.stored + result.duplicates for result in results] == [POST, POST]
    assert sum(result.stored for result in results) == POST
    assert sum(result.status_changes for result in results) == 1
    assert kept(store) == POST
    assert moves(store, ana.id) == [("active", "unsubscribed", "unsubscribe")]


def test_a_replayed_post_of_a_thousand_changes_nothing(
    client: TestClient, store: Store, key: EventKey
) -> None:
    ana = person(store)
    items = [*opens(POST - 2), event("bounce", "ana@example.com"), event("spamreport", "ana@example.com")]
    body = json.dumps(items).encode()
    assert post_events(client, body, key).json()["stored"] == POST
    before = snapshot(store)

    again = post_events(client, body, key)

    assert (again.json()["stored"], again.json()["duplicates"], again.json()["status_changes"]) == (
        0,
        POST,
        0,
    )
    assert snapshot(store) == before
    assert status_of(store, ana.id) == "complained"


def standard_reading(body: bytes) -> Any:
    """How the standard library reads a post: integers longer than 20 digits stay text; whatever it
    refuses is the error."""
    try:
        return json.loads(body, parse_int=lambda digits: int(digits) if len(digits) <= 20 else digits)
    except (ValueError, RecursionError) as exc:
        return type(exc)


def reading(body: bytes) -> Any:
    try:
        return load_post(body)
    except ValueError:
        return ValueError


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=())),  # lone surrogates too
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)


@hypothesis_settings(deadline=None)  # no timing assertions: a busy machine must not fail these
@given(st.lists(JSON_VALUES, max_size=6), st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]), st.booleans())
def test_a_post_is_read_as_the_standard_library_reads_it(
    items: list[Any], encoding: str, ascii_only: bool
) -> None:
    """The faster reader (orjson) is used only where it reads what the standard library reads: big
    integers, lone surrogates, other encodings and all it refuses go the standard library's way."""
    body = json.dumps(items, ensure_ascii=ascii_only).encode(encoding, errors="surrogatepass")

    assert repr(reading(body)) == repr(standard_reading(body))  # repr: NaN is not equal to itself


@hypothesis_settings(deadline=None)
@given(st.binary(max_size=60))
def test_bytes_that_are_no_post_are_refused_as_before(body: bytes) -> None:
    expected = standard_reading(body)

    assert repr(reading(body)) == repr(expected if isinstance(expected, list) else ValueError)
