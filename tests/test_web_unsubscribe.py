"""``/u/{token}``: the page asks, the RFC 8058 one-click POST unsubscribes; bad tokens change nothing."""

from __future__ import annotations

import base64

import pytest
from starlette.testclient import TestClient

from pipeline.audience.subscribers import erase, find_subscriber, get_subscriber, set_status, subscriber_log
from pipeline.render.links import PREFERENCES, UNSUBSCRIBE, Links
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.tokens import Signer
from tests.fixtures.store import snapshot
from tests.web_support import heading, path_of, person

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def unsubscribe_path(settings: Settings, store: Store, subscriber_id: int) -> str:
    """The path of the link a message to this subscriber carries (signed for their id and address)."""
    return path_of(
        Links(settings, store.signer).unsubscribe(subscriber_id, get_subscriber(store, subscriber_id).email)
    )


def test_the_page_asks_shows_the_address_masked_and_changes_nothing(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store)
    path = unsubscribe_path(settings, store, ana.id)
    before = snapshot(store)

    page = client.get(path)

    assert page.status_code == 200
    assert heading(page.text) == "Unsubscribe?"
    assert "a***@example.com" in page.text and "ana@example.com" not in page.text
    assert f'<form method="post" action="{path}">' in page.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    preferences = page.text.split('href="/preferences/')[1].split('"')[0]
    assert store.signer.verify(PREFERENCES, preferences, address=ana.email) == ana.id
    assert snapshot(store) == before


def test_one_click_unsubscribes_at_once_without_cookies_or_csrf(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store)

    response = client.post(unsubscribe_path(settings, store, ana.id), data=ONE_CLICK)

    assert response.status_code == 200
    assert heading(response.text) == "You are unsubscribed"
    assert not client.cookies
    subscriber = find_subscriber(store, ana.id)
    assert subscriber is not None and subscriber.status == "unsubscribed"
    last = subscriber_log(store, ana.id)[-1]
    assert (last.kind, last.actor, last.from_status) == ("unsubscribed", "unsubscribe-link", "active")


def test_one_click_as_multipart_form_data_works_too(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store)

    response = client.post(
        unsubscribe_path(settings, store, ana.id), files={"List-Unsubscribe": (None, "One-Click")}
    )

    assert response.status_code == 200
    assert find_subscriber(store, ana.id).status == "unsubscribed"  # type: ignore[union-attr]


def test_unsubscribing_twice_is_harmless_and_logged_once(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store)
    path = unsubscribe_path(settings, store, ana.id)

    first = client.post(path, data=ONE_CLICK)
    second = client.post(path, data=ONE_CLICK)
    page = client.get(path)

    assert first.status_code == second.status_code == page.status_code == 200
    assert heading(page.text) == "You are unsubscribed"
    assert [e.kind for e in subscriber_log(store, ana.id)] == ["added", "unsubscribed"]


def test_a_post_without_the_one_click_field_changes_nothing(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana = person(store)
    before = snapshot(store)

    response = client.post(unsubscribe_path(settings, store, ana.id), data={"something": "else"})

    assert response.status_code == 400
    assert snapshot(store) == before


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_tokens(store: Store, subscriber_id: int) -> dict[str, str]:
    good = store.signer.sign(UNSUBSCRIBE, subscriber_id)
    payload, tag = good.split(".")
    return {
        "forged": Signer(b"someone-else-s-key-0123456789abcdef").sign(UNSUBSCRIBE, subscriber_id),
        "truncated": good[:-4],
        "tampered": f"{_b64(str(subscriber_id + 1).encode())}.{tag}",
        "no tag": payload,
        "other purpose": store.signer.sign(PREFERENCES, subscriber_id),
        "garbage": "%E2%98%83.x",
    }


@pytest.mark.parametrize("kind", ["forged", "truncated", "tampered", "no tag", "other purpose", "garbage"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_bad_token_gets_a_plain_400_and_changes_nothing(
    client: TestClient, store: Store, kind: str, method: str
) -> None:
    ana = person(store)
    person(store, "ben@example.com")
    before = snapshot(store)

    response = client.request(method, f"/u/{bad_tokens(store, ana.id)[kind]}", data=ONE_CLICK)

    assert response.status_code == 400
    assert heading(response.text) == "This link does not work"
    assert "***" not in response.text
    assert snapshot(store) == before


def test_a_token_for_one_person_never_touches_another(
    client: TestClient, settings: Settings, store: Store
) -> None:
    ana, ben = person(store), person(store, "ben@example.com", name="Ben")

    page = client.get(unsubscribe_path(settings, store, ana.id))
    client.post(unsubscribe_path(settings, store, ana.id), data=ONE_CLICK)

    assert "b***@example.com" not in page.text
    assert find_subscriber(store, ben.id).status == "active"  # type: ignore[union-attr]


def test_a_complaint_stays_final(client: TestClient, settings: Settings, store: Store) -> None:
    ana = person(store)
    set_status(store, ana.id, "complained", actor="test")
    events = len(subscriber_log(store, ana.id))

    response = client.post(unsubscribe_path(settings, store, ana.id), data=ONE_CLICK)

    assert response.status_code == 200
    assert "never will again" in response.text
    assert find_subscriber(store, ana.id).status == "complained"  # type: ignore[union-attr]
    assert len(subscriber_log(store, ana.id)) == events


def test_the_link_of_an_erased_person_opens_nothing_and_changes_nothing(
    client: TestClient, settings: Settings, store: Store
) -> None:
    """Without the person's address the link cannot be checked: it gets the answer of any link we did
    not sign, so a stranger trying ids cannot tell erased ids from live ones."""
    ana = person(store)
    path = unsubscribe_path(settings, store, ana.id)
    erase(store, "ana@example.com")
    before = snapshot(store)

    page, post = client.get(path), client.post(path, data=ONE_CLICK)

    assert page.status_code == post.status_code == 400
    assert heading(post.text) == "This link does not work"
    assert "may no longer be on our list" in post.text
    assert snapshot(store) == before
