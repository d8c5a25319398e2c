"""``pipeline.feedback.events``: SendGrid events read, tied to people and campaigns, stored once, acted on once."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from pipeline.audience.subscribers import find_subscriber, set_status, subscriber_log
from pipeline.dispatch import campaigns
from pipeline.feedback.events import parse_event, record_events, scrub
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.tables import deliveries, delivery_events
from tests.emulators.sendgrid_events import event
from tests.transport_helpers import new_campaign
from tests.web_support import person

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def rows(store: Store) -> list[tuple[str, int | None, int | None]]:
    e = delivery_events.c
    with store.read() as conn:
        query = select(e.kind, e.campaign_id, e.subscriber_id).order_by(e.id)
        return [(kind, campaign, subscriber) for kind, campaign, subscriber in conn.execute(query)]


def test_parsing_reads_custom_args_times_and_kinds() -> None:
    parsed = parse_event(
        event(
            "bounce",
            "Ana@Example.com",
            campaign_id=3,
            subscriber_id=7,
            timestamp=1_700_000_000,
            type="blocked",
        ),
        NOW,
    )

    assert parsed is not None
    assert (parsed.kind, parsed.campaign_id, parsed.subscriber_id, parsed.email_key) == (
        "blocked",
        3,
        7,
        "ana@example.com",
    )
    assert parsed.occurred_at == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    assert parsed.status is None  # a block is not a bounce of the address


@pytest.mark.parametrize("value", ["0", "-4", "abc", "1.5", "", None, True, "٣"])
def test_ids_that_are_not_positive_numbers_are_unknown(value: object) -> None:
    parsed = parse_event({"event": "open", "subscriber_id": value, "campaign_id": value}, NOW)

    assert parsed is not None and parsed.subscriber_id is None and parsed.campaign_id is None


def test_addresses_and_link_tokens_never_reach_the_store() -> None:
    bounce = parse_event(
        {"event": "bounce", "reason": "550 <ana@example.com>: unknown user ana@example.com"}, NOW
    )
    click = parse_event(
        {"event": "click", "url": "https://news.example.org/u/MTI.abcdef?x=1", "timestamp": "not a number"},
        NOW,
    )

    assert bounce is not None and bounce.reason == "550 <[address]>: unknown user [address]"
    assert click is not None and click.url == "https://news.example.org/u/{token}?x=1"
    assert click.occurred_at == NOW


@pytest.mark.parametrize("item", [None, 3, "open", [], {}, {"event": ""}, {"event": {"x": 1}}])
def test_items_that_are_not_events_are_none(item: object) -> None:
    assert parse_event(item, NOW) is None


def test_duplicates_in_one_post_and_across_posts_are_stored_once(store: Store) -> None:
    item = event("open", "ana@example.com", sg_event_id="same")

    first = record_events(store, [item, item])
    second = record_events(store, [item])

    assert (first.stored, first.duplicates, second.stored, second.duplicates) == (1, 1, 0, 1)
    assert len(rows(store)) == 1


def test_a_replayed_bounce_never_undoes_a_later_resubscribe(store: Store) -> None:
    ana = person(store)
    bounce = event("bounce", "ana@example.com", subscriber_id=ana.id)
    assert record_events(store, [bounce]).status_changes == 1
    set_status(store, ana.id, "active", actor="preferences-page", resubscribe=True)

    replay = record_events(store, [bounce])

    assert replay.status_changes == 0 and replay.duplicates == 1
    assert find_subscriber(store, ana.id).status == "active"  # type: ignore[union-attr]


def test_the_event_address_wins_over_an_id_that_belongs_to_someone_else(store: Store) -> None:
    ana, ben = person(store), person(store, "ben@example.com")

    record_events(store, [event("spamreport", "ana@example.com", subscriber_id=ben.id)])

    assert find_subscriber(store, ana.id).status == "complained"  # type: ignore[union-attr]
    assert find_subscriber(store, ben.id).status == "active"  # type: ignore[union-attr]
    assert rows(store) == [("spamreport", None, ana.id)]


@pytest.mark.parametrize("address", ["ANA@Example.COM", " ana@example.com ", "not an address", None])
def test_the_custom_args_subscriber_stands_when_the_address_is_theirs_in_another_form_or_unreadable(
    store: Store, address: str | None
) -> None:
    ana, _ = person(store), person(store, "ben@example.com")
    reported = event("bounce", "x@example.com", subscriber_id=ana.id)
    reported["email"] = address

    record_events(store, [reported])

    assert rows(store) == [("bounce", None, ana.id)]
    assert find_subscriber(store, ana.id).status == "bounced"  # type: ignore[union-attr]


@given(st.text(alphabet="ab.@ <>,;:'\"()[]\tx", max_size=40))
def test_addresses_are_found_in_provider_text_as_the_plain_expression_finds_them(text: str) -> None:
    """The scrub's expression (tried only where a run starts, never backtracked into) against the
    plain one it replaced, which took a pass per character and so seconds for a long bounce reply."""
    plain = re.compile(r"[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:@]+")

    assert scrub(text, 500) == plain.sub("[address]", text)[:500]


def test_an_event_without_custom_args_is_matched_by_address(store: Store) -> None:
    ana = person(store)

    result = record_events(store, [event("group_unsubscribe", "ANA@example.com")])

    assert result.status_changes == 1
    assert find_subscriber(store, ana.id).status == "unsubscribed"  # type: ignore[union-attr]
    last = subscriber_log(store, ana.id)[-1]
    assert (last.actor, last.detail["event"]) == ("webhook", "group_unsubscribe")


def test_only_known_campaigns_are_reported_for_a_health_check(store: Store, settings: Settings) -> None:
    campaign = new_campaign(store, settings)

    result = record_events(
        store,
        [
            event("bounce", "a@example.com", campaign_id=campaign.id),
            event("open", "b@example.com", campaign_id=99),
        ],
    )

    assert result.campaigns == {campaign.id}
    assert rows(store) == [("bounce", campaign.id, None), ("open", None, None)]


def test_events_without_an_id_are_de_duplicated_by_their_content(store: Store) -> None:
    """Issue 12 item 14: an event without ``sg_event_id`` is kept once under a key derived from its
    content, however often it is posted; an event that differs in anything is another event."""
    item = {"event": "open", "email": "ana@example.com", "timestamp": 1_700_000_000}
    later = {**item, "timestamp": 1_700_000_001}

    first = record_events(store, [item, item, later])
    replay = record_events(store, [dict(reversed(item.items()))])

    assert (first.stored, first.duplicates, replay.stored, replay.duplicates) == (2, 1, 0, 1)
    assert len(rows(store)) == 2
    with store.read() as conn:
        keys = list(conn.scalars(select(delivery_events.c.sg_event_id)))
    assert all(key.startswith("sha256:") and len(key) == 71 for key in keys)


def test_an_event_for_a_row_in_doubt_proves_sendgrid_accepted_it(store: Store, settings: Settings) -> None:
    """A run killed while its request was out leaves rows in doubt; SendGrid's events for them (they
    carry the row's delivery id) settle them as sent. Rows no event names stay for the operator."""
    person(store, "ana@example.com")
    person(store, "bo@example.com")
    campaign = new_campaign(store, settings)
    with store.write() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.campaign_id == campaign.id).values(status="in_doubt")
        )
        row_of = dict(
            conn.execute(
                select(deliveries.c.email, deliveries.c.id).where(deliveries.c.campaign_id == campaign.id)
            ).all()
        )
    ana = find_subscriber(store, "ana@example.com")
    assert ana is not None

    result = record_events(
        store,
        [
            event(
                "processed",
                "ana@example.com",
                campaign_id=campaign.id,
                subscriber_id=ana.id,
                delivery_id=row_of["ana@example.com"],
            )
        ],
    )

    assert result.settled == 1
    report = campaigns.report(store, campaign.id)
    assert report.counts == {"sent": 1, "in_doubt": 1} and report.settled == 1
    again = record_events(
        store,
        [
            event(
                "delivered", "ana@example.com", campaign_id=campaign.id, delivery_id=row_of["ana@example.com"]
            )
        ],
    )
    assert again.settled == 0, "a row already sent is left as it is"
