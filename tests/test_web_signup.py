"""``/subscribe`` and ``/confirm/{token}``: double opt-in that never tells whether an address was known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.audience.subscribers import find_subscriber, set_status, subscriber_log, suppress
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.transports.outbox import OutboxTransport
from pipeline.web import create_app
from tests.fixtures.store import snapshot
from tests.fixtures.web import OpenClient
from tests.mail import outbox_messages, outbox_transport
from tests.signup_support import settle
from tests.web_support import Clock, heading, link_in, path_of, person, web_settings

HOUR = 3600


@pytest.fixture
def outbox(settings: Settings) -> OutboxTransport:
    """The real outbox transport, shared so ``stats.requests`` counts the confirmations sent."""
    return outbox_transport(settings)


@pytest.fixture
def app(settings: Settings, store: Store, clock: Clock, outbox: OutboxTransport) -> Starlette:
    """The signup form on ``clock``, mailing confirmations to ``outbox``, with room for 50 signups an hour."""
    return create_app(
        web_settings(settings, signups_per_ip_per_hour=50), store, clock=clock, transport=lambda: outbox
    )


def sign_up(client: TestClient, email: str = "ana@example.com", **fields: object) -> str:
    """Post the form and wait for the job it leaves (the store writes and the mail)."""
    response = client.post("/subscribe", data={"email": email, **fields})
    assert response.status_code == 200, response.text
    settle(client)
    return response.text.replace(email, "ADDRESS")


def test_the_form_has_the_fields_topics_and_a_hidden_honeypot(client: TestClient) -> None:
    page = client.get("/subscribe")

    assert page.status_code == 200
    for field in ('name="email" type="email" required', 'name="name"', 'name="topic" value="toddler"'):
        assert field in page.text
    assert '<div class="hp" aria-hidden="true">' in page.text
    assert 'name="website" type="text" tabindex="-1" autocomplete="off"' in page.text


def test_a_signup_makes_an_unconfirmed_subscriber_and_mails_one_confirmation(
    client: TestClient, settings: Settings, store: Store, outbox: OutboxTransport
) -> None:
    answer = client.post(
        "/subscribe", data={"email": "Ana@Example.com", "name": "Ana", "topic": ["toddler", "admin"]}
    )
    settle(client)

    assert answer.status_code == 200 and heading(answer.text) == "Check your inbox"
    ana = find_subscriber(store, "ana@example.com")
    assert ana is not None and (ana.status, ana.name, ana.tags) == ("unconfirmed", "Ana", ("toddler",))
    assert [(e.kind, e.actor) for e in subscriber_log(store, ana.id)] == [("added", "signup-form")]
    assert outbox.stats.requests == 1
    (message,) = outbox_messages(settings)
    assert message["To"] == "Ana <Ana@example.com>"
    assert message["Subject"] == "Please confirm your subscription to The Juggle"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert store.signer.verify("confirm", link_in(message, "confirm").rsplit("/", 1)[1]) == ana.id
    assert "Hi Ana," in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_the_confirmation_button_activates_once_and_is_logged(
    client: TestClient, settings: Settings, store: Store
) -> None:
    sign_up(client)
    link = path_of(link_in(outbox_messages(settings)[0], "confirm"))

    first, again = client.post(link), client.post(link)

    assert heading(first.text) == "You are subscribed"
    assert heading(again.text) == "You were already subscribed"
    ana = find_subscriber(store, "ana@example.com")
    assert ana is not None and ana.status == "active" and ana.confirmed_at is not None
    last = subscriber_log(store, ana.id)[-1]
    assert (last.kind, last.actor, last.from_status, last.to_status) == (
        "status_changed",
        "confirm-link",
        "unconfirmed",
        "active",
    )
    assert len(subscriber_log(store, ana.id)) == 2


def test_an_expired_or_tampered_confirmation_link_changes_nothing(
    client: TestClient, settings: Settings, store: Store, clock: Clock
) -> None:
    sign_up(client)
    link = path_of(link_in(outbox_messages(settings)[0], "confirm"))
    clock.advance(settings.web.confirm_hours * HOUR + 1)
    before = snapshot(store)

    expired, tampered = client.get(link), client.get(link[:-3] + "abc")
    pressed, forged = client.post(link), client.post(link[:-3] + "abc")

    assert expired.status_code == tampered.status_code == pressed.status_code == forged.status_code == 400
    assert "Sign up again" in expired.text and "Sign up again" in pressed.text
    assert snapshot(store) == before


def test_resubmitting_sends_at_most_one_confirmation_an_hour_and_answers_the_same(
    client: TestClient, store: Store, clock: Clock, outbox: OutboxTransport
) -> None:
    answers = [sign_up(client) for _ in range(3)]
    clock.advance(59 * 60)
    answers.append(sign_up(client))
    assert outbox.stats.requests == 1

    clock.advance(2 * 60)
    answers.append(sign_up(client))

    assert outbox.stats.requests == 2
    assert len(set(answers)) == 1


def test_the_answer_never_tells_whether_an_address_was_known(
    client: TestClient, store: Store, outbox: OutboxTransport
) -> None:
    person(store, "active@example.com", name="Kept Name", tags=["teen"])
    set_status(store, person(store, "complained@example.com").id, "complained", actor="test")
    suppress(store, "blocked@example.com", "operator")
    before = snapshot(store)

    known = [
        sign_up(client, f"{who}@example.com", name="Intruder", topic="toddler")
        for who in ("active", "complained", "blocked")
    ]
    unknown = sign_up(client, "new@example.com")

    assert set(known) == {unknown}
    assert outbox.stats.requests == 1  # only the new address
    active = find_subscriber(store, "active@example.com")
    assert active is not None and (active.name, active.tags) == ("Kept Name", ("teen",))
    assert find_subscriber(store, "blocked@example.com") is None
    assert snapshot(store)["suppressions"] == before["suppressions"]


def test_someone_who_unsubscribed_comes_back_only_through_the_link(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store, tags=["teen"])
    set_status(store, ana.id, "unsubscribed", actor="test")

    sign_up(client, name="Intruder", topic="toddler")
    assert find_subscriber(store, ana.id).status == "unsubscribed"  # type: ignore[union-attr]
    client.post(path_of(link_in(outbox_messages(settings)[0], "confirm")))

    back = find_subscriber(store, ana.id)
    assert back is not None and (back.status, back.name, back.tags) == ("active", "Ana Lima", ("teen",))
    last = subscriber_log(store, ana.id)[-1]
    assert (last.kind, last.actor) == ("resubscribed", "confirm-link")


def test_a_filled_honeypot_gets_the_same_answer_and_nothing_happens(
    client: TestClient, store: Store, outbox: OutboxTransport
) -> None:
    before = snapshot(store)

    trapped = sign_up(client, website="http://spam.example")
    assert snapshot(store) == before

    assert trapped == sign_up(client, "real@example.com").replace("real@example.com", "ADDRESS")
    assert find_subscriber(store, "ana@example.com") is None
    assert outbox.stats.requests == 1  # real@ only
    assert snapshot(store)["subscribers"] != before["subscribers"]  # real@ was added, nobody else


def test_signups_are_limited_per_client_address_per_hour(
    settings: Settings, store: Store, clock: Clock, outbox: OutboxTransport, open_client: OpenClient
) -> None:
    app = create_app(
        web_settings(settings, signups_per_ip_per_hour=3), store, clock=clock, transport=lambda: outbox
    )
    bot = open_client(app, client=("203.0.113.7", 5000))
    other = open_client(app, client=("198.51.100.2", 5000))

    statuses = [bot.post("/subscribe", data={"email": f"p{i}@example.com"}).status_code for i in range(5)]
    limited = bot.post("/subscribe", data={"email": "late@example.com"})
    assert other.post("/subscribe", data={"email": "other@example.com"}).status_code == 200
    settle(bot)
    clock.advance(HOUR)
    assert bot.post("/subscribe", data={"email": "later@example.com"}).status_code == 200
    settle(bot)

    assert statuses == [200, 200, 200, 429, 429]
    assert limited.headers["Retry-After"] == "3600"
    assert find_subscriber(store, "late@example.com") is None


def test_json_signups(client: TestClient, store: Store) -> None:
    accepted = client.post("/subscribe", json={"email": "ana@example.com", "name": "Ana", "topics": ["teen"]})
    invalid = client.post("/subscribe", json={"email": "not an address"})
    not_object = client.post("/subscribe", json=["ana@example.com"])
    broken = client.post("/subscribe", content=b"{", headers={"Content-Type": "application/json"})
    settle(client)

    assert (accepted.status_code, accepted.json()["status"]) == (202, "pending")
    assert find_subscriber(store, "ana@example.com").tags == ("teen",)  # type: ignore[union-attr]
    assert invalid.status_code == not_object.status_code == broken.status_code == 400
    assert "error" in invalid.json()


def test_an_invalid_address_shows_the_form_again_escaped(client: TestClient, store: Store) -> None:
    before = snapshot(store)

    response = client.post("/subscribe", data={"email": "<script>x</script>", "name": "<b>Ana</b>"})

    assert response.status_code == 400
    assert "That does not look like an email address" in response.text
    assert "<script>x" not in response.text and "&lt;script&gt;x&lt;/script&gt;" in response.text
    assert 'value="&lt;b&gt;Ana&lt;/b&gt;"' in response.text
    assert snapshot(store) == before


def test_a_failed_send_gives_the_hourly_claim_back(
    settings: Settings, store: Store, tmp_path: Path, open_client: OpenClient
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox folder should be")
    working = outbox_transport(settings)
    transports = iter([OutboxTransport(blocked), working])
    client = open_client(create_app(settings, store, transport=lambda: next(transports)))

    first = sign_up(client)
    second = sign_up(client)

    assert first == second
    assert working.stats.requests == 1
    assert len(outbox_messages(settings)) == 1


def test_the_json_answer_is_the_same_for_known_and_unknown_addresses(
    client: TestClient, store: Store
) -> None:
    person(store)
    known = client.post("/subscribe", json={"email": "ana@example.com"})
    unknown = client.post("/subscribe", json={"email": "new@example.com"})
    settle(client)

    assert known.status_code == unknown.status_code == 202
    assert json.loads(known.content) == json.loads(unknown.content)
