"""``/preferences/{token}``: name, topics, unsubscribe, resubscribe; every post needs a valid CSRF token."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.audience.subscribers import find_subscriber, get_subscriber, set_status, subscriber_log
from pipeline.render.links import Links
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.web import create_app
from tests.fixtures.store import snapshot
from tests.web_support import Clock, csrf_of, heading, path_of, person

TOPICS = ["working-mom", "new-parent", "toddler", "school-age", "teen"]
"""Every tag segments.toml selects on, in its order."""


@pytest.fixture
def app(settings: Settings, store: Store, clock: Clock) -> Starlette:
    """The pages on ``clock``, so a test can let a CSRF token grow old."""
    return create_app(settings, store, clock=clock)


def preferences_path(settings: Settings, store: Store, subscriber_id: int) -> str:
    """The path of the link a message to this subscriber carries (signed for their id and address)."""
    return path_of(
        Links(settings, store.signer).preferences(subscriber_id, get_subscriber(store, subscriber_id).email)
    )


def test_the_page_offers_the_topics_segments_use_and_shows_what_is_chosen(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store, tags=["toddler", "vip"])

    page = client.get(preferences_path(settings, store, ana.id))

    assert page.status_code == 200
    assert "a***@example.com" in page.text and "ana@example.com" not in page.text
    assert 'value="Ana Lima"' in page.text
    offered = [part.split('"')[0] for part in page.text.split('name="topic" value="')[1:]]
    assert offered == TOPICS
    assert 'value="toddler" checked' in page.text and 'value="teen" checked' not in page.text
    assert "vip" not in page.text
    assert "Unsubscribe from everything" in page.text and "Subscribe again" not in page.text


def test_saving_changes_name_and_topics_keeps_other_tags_and_comes_back_to_the_page(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store, tags=["toddler", "vip"])
    path = preferences_path(settings, store, ana.id)
    csrf = csrf_of(client.get(path).text)

    response = client.post(
        path,
        data={"csrf": csrf, "action": "save", "name": "  Ana\x07  Maria ", "topic": ["teen", "admin"]},
        follow_redirects=False,
    )

    assert response.status_code == 303
    assert response.headers["location"] == f"{path}?done=saved"
    after = find_subscriber(store, ana.id)
    assert after is not None and after.name == "Ana Maria" and after.tags == ("teen", "vip")
    last = subscriber_log(store, ana.id)[-1]
    assert (last.kind, last.actor, last.detail) == (
        "updated",
        "preferences-page",
        {"fields": ["name", "tags"]},
    )
    assert "Saved." in client.get(response.headers["location"]).text


def test_saving_nothing_new_logs_nothing(client: TestClient, settings: Settings, store: Store) -> None:
    ana = person(store, tags=["toddler"])
    path = preferences_path(settings, store, ana.id)
    events = len(subscriber_log(store, ana.id))

    response = client.post(
        path,
        data={
            "csrf": csrf_of(client.get(path).text),
            "action": "save",
            "name": "Ana Lima",
            "topic": "toddler",
        },
    )

    assert response.status_code == 200 and "Nothing needed changing." in response.text
    assert len(subscriber_log(store, ana.id)) == events


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "tampered", "another person's", "expired"])
def test_a_post_without_a_valid_csrf_token_is_403_and_changes_nothing(
    client: TestClient, settings: Settings, store: Store, clock: Clock, case: str
) -> None:
    ana, ben = person(store), person(store, "ben@example.com", name="Ben")
    path = preferences_path(settings, store, ana.id)
    good = csrf_of(client.get(path).text)
    token = {
        "missing": None,
        "empty": "",
        "garbage": "not-a-token",
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "another person's": csrf_of(client.get(preferences_path(settings, store, ben.id)).text),
        "expired": good,
    }[case]
    if case == "expired":
        clock.advance(5 * 3600)
    before = snapshot(store)
    form = {"action": "unsubscribe", **({"csrf": token} if token is not None else {})}

    response = client.post(path, data=form)

    assert response.status_code == 403
    assert snapshot(store) == before


def test_unsubscribe_from_everything(client: TestClient, settings: Settings, store: Store) -> None:
    ana = person(store)
    path = preferences_path(settings, store, ana.id)

    response = client.post(path, data={"csrf": csrf_of(client.get(path).text), "action": "unsubscribe"})

    assert response.status_code == 200 and "You are unsubscribed from everything" in response.text
    assert "Subscribe again" in response.text
    last = subscriber_log(store, ana.id)[-1]
    assert (last.kind, last.actor, last.to_status) == ("unsubscribed", "preferences-page", "unsubscribed")


@pytest.mark.parametrize("left", ["unsubscribed", "bounced"])
def test_someone_who_left_can_subscribe_again_by_their_own_choice(
    client: TestClient, settings: Settings, store: Store, left: str
) -> None:
    ana = person(store)
    set_status(store, ana.id, left, actor="test")
    path = preferences_path(settings, store, ana.id)

    response = client.post(path, data={"csrf": csrf_of(client.get(path).text), "action": "resubscribe"})

    assert response.status_code == 200 and "Welcome back" in response.text
    last = subscriber_log(store, ana.id)[-1]
    assert (last.kind, last.actor, last.from_status, last.to_status) == (
        "resubscribed",
        "preferences-page",
        left,
        "active",
    )


@pytest.mark.parametrize("status", ["complained", "active"])
def test_resubscribing_is_refused_after_a_complaint_or_when_subscribed(
    client: TestClient, settings: Settings, store: Store, status: str
) -> None:
    ana = person(store)
    if status != "active":
        set_status(store, ana.id, status, actor="test")
    path = preferences_path(settings, store, ana.id)
    page = client.get(path)
    before = snapshot(store)

    response = client.post(path, data={"csrf": csrf_of(page.text), "action": "resubscribe"})

    assert response.status_code == 409
    assert snapshot(store) == before
    if status == "complained":
        assert "Subscribe again" not in page.text and "never email you again" in page.text


def test_an_unknown_action_changes_nothing(client: TestClient, settings: Settings, store: Store) -> None:
    ana = person(store)
    path = preferences_path(settings, store, ana.id)
    csrf = csrf_of(client.get(path).text)
    before = snapshot(store)

    assert client.post(path, data={"csrf": csrf, "action": "erase"}).status_code == 409
    assert snapshot(store) == before


def test_a_bad_preferences_token_is_400(client: TestClient, settings: Settings, store: Store) -> None:
    ana = person(store)
    unsubscribe_token = path_of(Links(settings, store.signer).unsubscribe(ana.id, ana.email)).split("/")[-1]

    assert client.get(f"/preferences/{unsubscribe_token}").status_code == 400
    assert client.post(f"/preferences/{unsubscribe_token}", data={"action": "save"}).status_code == 400
    assert heading(client.get("/preferences/MQ.AAAA").text) == "This link does not work"
