"""``POST /webhooks/sendgrid`` with a real P-256 key pair: what it accepts, what it refuses, what it changes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.audience.subscribers import find_subscriber, set_status, subscriber_log
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.tables import deliveries, delivery_events
from pipeline.transports.sendgrid import SendGridTransport
from pipeline.web import create_app
from tests.emulators.sendgrid import SendGridEmulator
from tests.emulators.sendgrid_events import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventKey,
    event,
    events_for,
    post_events,
)
from tests.fixtures.store import snapshot
from tests.fixtures.web import OpenClient
from tests.transport_helpers import dispatcher, new_campaign
from tests.web_support import Clock, person, readers, web_settings

MAX_BODY = 4096


@pytest.fixture
def app(settings: Settings, store: Store, key: EventKey, clock: Clock) -> Starlette:
    """The webhook trusting ``key``, on ``clock``, with a small body cap and a ten-minute window."""
    configured = web_settings(settings, key, webhook_max_body_bytes=MAX_BODY, webhook_max_age_seconds=600)
    return create_app(configured, store, clock=clock)


def stored(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(select(delivery_events).order_by(delivery_events.c.id)).mappings()
        return [dict(row) for row in rows]


def status_of(store: Store, subscriber_id: int) -> str:
    subscriber = find_subscriber(store, subscriber_id)
    assert subscriber is not None
    return subscriber.status


def test_signed_events_are_stored_tied_to_campaign_and_subscriber(
    client: TestClient, settings: Settings, store: Store, key: EventKey
) -> None:
    ana = person(store)
    campaign = new_campaign(store, settings)
    events = [
        event("processed", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id, delivery_id=1),
        event("delivered", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id, delivery_id=1),
        event("open", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id),
        event(
            "click", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id, url="https://x.org/a"
        ),
        event(
            "deferred", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id, response="421 later"
        ),
    ]

    response = post_events(client, events, key)

    assert response.status_code == 200
    assert response.json() == {
        "stored": 5,
        "duplicates": 0,
        "ignored": 0,
        "status_changes": 0,
        "paused_campaigns": 0,
    }
    rows = stored(store)
    assert [r["kind"] for r in rows] == ["processed", "delivered", "open", "click", "deferred"]
    assert {(r["campaign_id"], r["subscriber_id"]) for r in rows} == {(campaign.id, ana.id)}
    assert rows[3]["url"] == "https://x.org/a" and rows[4]["reason"] == "421 later"
    assert [r["sg_event_id"] for r in rows] == [e["sg_event_id"] for e in events]
    assert status_of(store, ana.id) == "active"


def test_a_replayed_post_counts_nothing_twice(
    client: TestClient, settings: Settings, store: Store, key: EventKey
) -> None:
    ana = person(store)
    campaign = new_campaign(store, settings)
    body = [
        event("delivered", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id),
        event("bounce", "ana@example.com", campaign_id=campaign.id, subscriber_id=ana.id, reason="550 gone"),
    ]
    post_events(client, body, key)
    log = subscriber_log(store, ana.id)

    again = post_events(client, body, key)

    assert again.status_code == 200
    assert again.json()["stored"] == 0 and again.json()["duplicates"] == 2
    assert len(stored(store)) == 2
    assert subscriber_log(store, ana.id) == log


@pytest.mark.parametrize(
    ("kind", "fields", "status"),
    [
        ("bounce", {"reason": "550 5.1.1 <ana@example.com> no such user", "type": "bounce"}, "bounced"),
        ("bounce", {"reason": "blocked for now", "type": "blocked"}, "active"),
        ("dropped", {"reason": "Bounced Address"}, "bounced"),
        ("dropped", {"reason": "Invalid"}, "bounced"),
        ("dropped", {"reason": "Spam Content (if spam checker app enabled)"}, "active"),
        ("spamreport", {}, "complained"),
        ("unsubscribe", {}, "unsubscribed"),
        ("group_unsubscribe", {"asm_group_id": 1}, "unsubscribed"),
        ("group_resubscribe", {"asm_group_id": 1}, "active"),
    ],
)
def test_events_about_consent_change_the_status_through_the_library(
    client: TestClient, store: Store, key: EventKey, kind: str, fields: dict[str, Any], status: str
) -> None:
    ana = person(store)

    assert (
        post_events(client, [event(kind, "ana@example.com", subscriber_id=ana.id, **fields)], key).status_code
        == 200
    )

    assert status_of(store, ana.id) == status
    if status != "active":
        last = subscriber_log(store, ana.id)[-1]
        assert (last.actor, last.to_status) == ("webhook", status)
        assert "ana@example.com" not in repr(last.detail)
    assert "ana@example.com" not in repr(stored(store))


@pytest.mark.parametrize(
    ("was", "kind"),
    [("complained", "unsubscribe"), ("complained", "bounce"), ("unsubscribed", "group_resubscribe")],
)
def test_no_event_ever_revives_anyone(
    client: TestClient, store: Store, key: EventKey, was: str, kind: str
) -> None:
    ana = person(store)
    set_status(store, ana.id, was, actor="test")

    assert post_events(client, [event(kind, "ana@example.com", subscriber_id=ana.id)], key).status_code == 200

    assert status_of(store, ana.id) == was


def test_unknown_subscribers_and_campaigns_are_stored_with_nulls(
    client: TestClient, store: Store, key: EventKey
) -> None:
    response = post_events(
        client,
        [event("bounce", "nobody@example.com", campaign_id=999, subscriber_id=999, delivery_id=5)],
        key,
    )

    assert response.status_code == 200 and response.json()["stored"] == 1
    (row,) = stored(store)
    assert (row["kind"], row["campaign_id"], row["subscriber_id"]) == ("bounce", None, None)


def test_items_that_are_not_events_are_ignored(client: TestClient, store: Store, key: EventKey) -> None:
    response = post_events(client, [{"no": "event"}, "text", 3, event("open", "x@example.com")], key)

    assert response.json()["ignored"] == 3 and response.json()["stored"] == 1


def headers_for(key: EventKey, body: bytes, timestamp: int) -> dict[str, str]:
    return key.headers(body, timestamp)


@pytest.mark.parametrize(
    "case",
    [
        "tampered body",
        "wrong key",
        "old timestamp",
        "future timestamp",
        "timestamp not signed",
        "no signature",
        "no timestamp",
        "signature not base64",
        "timestamp not a number",
    ],
)
def test_a_post_that_is_not_provably_sendgrids_is_403_and_stores_nothing(
    client: TestClient, store: Store, key: EventKey, case: str
) -> None:
    ana = person(store)
    now = int(time.time())
    body = f'[{{"event": "bounce", "email": "ana@example.com", "subscriber_id": "{ana.id}", "sg_event_id": "e1"}}]'.encode()
    headers = key.headers(body, now)
    sent = body
    if case == "tampered body":
        sent = body.replace(b"bounce", b"open")
    elif case == "wrong key":
        headers = EventKey().headers(body, now)
    elif case == "old timestamp":
        headers = key.headers(body, now - 601)
    elif case == "future timestamp":
        headers = key.headers(body, now + 3600)
    elif case == "timestamp not signed":
        headers[TIMESTAMP_HEADER] = str(now - 1)
    elif case == "no signature":
        del headers[SIGNATURE_HEADER]
    elif case == "no timestamp":
        del headers[TIMESTAMP_HEADER]
    elif case == "signature not base64":
        headers[SIGNATURE_HEADER] = "%%%not base64%%%"
    elif case == "timestamp not a number":
        headers[TIMESTAMP_HEADER] = "yesterday"
    before = snapshot(store)

    response = client.post("/webhooks/sendgrid", content=sent, headers=headers)

    assert response.status_code == 403
    assert snapshot(store) == before


def test_without_a_configured_key_every_post_is_refused(
    settings: Settings, store: Store, key: EventKey, open_client: OpenClient
) -> None:
    assert settings.web.webhook_public_key is None
    response = post_events(open_client(create_app(settings, store)), [event("open", "ana@example.com")], key)

    assert response.status_code == 403
    assert stored(store) == []


def test_a_body_over_the_cap_is_413_whether_its_length_is_declared_or_not(
    client: TestClient, store: Store, key: EventKey
) -> None:
    body = b"[" + b" " * MAX_BODY + b"]"
    headers = key.headers(body)

    declared = client.post("/webhooks/sendgrid", content=body, headers=headers)
    streamed = client.post("/webhooks/sendgrid", content=iter([body[:1000], body[1000:]]), headers=headers)

    assert declared.status_code == streamed.status_code == 413
    assert stored(store) == []


def test_a_signed_body_that_is_not_an_array_of_events_is_400(client: TestClient, key: EventKey) -> None:
    assert post_events(client, b"{not json", key).status_code == 400
    assert post_events(client, b'{"event": "open"}', key).status_code == 400


def test_a_timestamp_within_the_window_is_accepted(client: TestClient, key: EventKey, clock: Clock) -> None:
    clock.advance(590)

    response = post_events(client, [event("open", "ana@example.com")], key, timestamp=int(time.time()))

    assert response.status_code == 200


def test_events_for_a_campaign_sent_through_the_sendgrid_emulator_find_their_way_back(
    client: TestClient, settings: Settings, store: Store, key: EventKey, tmp_path: Path
) -> None:
    audience = readers(store, tmp_path, 30)
    campaign = new_campaign(store, settings)
    with SendGridEmulator(api_key="SG.events") as emulator:
        config = settings.sendgrid.model_copy(update={"host": emulator.url})
        transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), "SG.events")
        dispatcher(store, settings, transport, batch_size=7).run(campaign.id)
        messages = emulator.messages

    delivered = [item for message in messages for item in events_for(message, "delivered")]
    opened = [item for message in messages[:2] for item in events_for(message, "open")]
    batches = [delivered[i : i + 6] for i in range(0, len(delivered), 6)] + [opened[:7], opened[7:]]
    results = [post_events(client, batch, key).json() for batch in batches]  # the test's cap is 4 KB

    assert sum(result["stored"] for result in results) == len(audience) + 14

    with store.read() as conn:
        tied = conn.execute(
            select(func.count())
            .select_from(
                delivery_events.join(
                    deliveries, deliveries.c.subscriber_id == delivery_events.c.subscriber_id
                )
            )
            .where(delivery_events.c.campaign_id == campaign.id, deliveries.c.campaign_id == campaign.id)
        ).scalar_one()
    assert tied == len(audience) + 14
