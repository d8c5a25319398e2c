"""Defences on every response: secure headers (errors too), no script at all, no open redirect."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.render.links import Links
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect
from tests.fixtures.store import TEST_KEY
from tests.fixtures.web import OpenClient
from tests.web_support import csrf_of, path_of, person


@pytest.fixture
def store(project: Path) -> Iterator[Store]:
    """Headers do not depend on the engine: SQLite only here."""
    opened = connect(
        f"sqlite:///{project / 'var' / 'web.db'}",
        TEST_KEY,
        segments_file=project / "subscribers" / "segments.toml",
    )
    yield opened
    opened.close()


@pytest.fixture
def links(settings: Settings, store: Store) -> dict[str, str]:
    ana = person(store)
    made = Links(settings, store.signer)
    return {
        "u": path_of(made.unsubscribe(ana.id, ana.email)),
        "preferences": path_of(made.preferences(ana.id, ana.email)),
    }


REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/subscribe", {}, 200),
    ("GET", "/archive/", {}, 200),
    ("GET", "/archive/feed.xml", {}, 200),
    ("GET", "/site.css", {}, 200),
    ("GET", "/favicon.ico", {}, 204),
    ("GET", "{u}", {}, 200),
    ("GET", "{preferences}", {}, 200),
    ("GET", "/", {"follow_redirects": False}, 307),
    ("GET", "/u/forged.token", {}, 400),
    ("GET", "/confirm/forged.token", {}, 400),
    ("POST", "{preferences}", {"data": {"action": "save"}}, 403),
    ("POST", "/webhooks/sendgrid", {"content": b"[]"}, 403),
    ("GET", "/no/such/page", {}, 404),
    ("GET", "/archive/no-such-issue", {}, 404),
    ("DELETE", "/subscribe", {}, 405),
    ("POST", "/subscribe", {"content": b"x" * 20_000, "headers": {"Content-Type": "text/plain"}}, 413),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), REQUESTS)
def test_every_response_carries_the_security_headers(
    client: TestClient, links: dict[str, str], method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = client.request(method, path.format(**links), **kwargs)

    assert response.status_code == status
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["strict-transport-security"].startswith("max-age=")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    if path.startswith("{"):
        assert headers["x-robots-tag"] == "noindex, nofollow"
        assert headers["cache-control"] == "no-store"


def test_a_server_error_is_a_page_with_the_headers_too(
    app: Starlette, open_client: OpenClient, store: Store, links: dict[str, str]
) -> None:
    client = open_client(app, raise_server_exceptions=False)  # the 500 page, not the exception
    with store.write() as conn:
        conn.exec_driver_sql("DROP TABLE subscriber_tags")

    response = client.get(links["preferences"])

    assert response.status_code == 500
    assert "Something went wrong on our side" in response.text
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_pages_have_no_script_no_inline_handlers_and_no_inline_style(
    client: TestClient, links: dict[str, str]
) -> None:
    pages = [client.get(path).text for path in ("/subscribe", "/archive/", links["u"], links["preferences"])]
    pages.append(client.post("/subscribe", data={"email": "x@example.com"}).text)

    for page in pages:
        assert "<script" not in page.lower()
        assert not re.search(r"\son[a-z]+\s*=", page, re.I)
        assert "style=" not in page and "<style" not in page
        assert '<link rel="stylesheet" href="/site.css">' in page
        assert re.search(r'<html lang="en">', page)


@pytest.mark.parametrize(
    "path",
    [
        "//evil.example/",
        "//evil.example/%2F..",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/archive//evil.example",
        "/archive/?next=https://evil.example",
        "/subscribe/",
        "/u/x/",
    ],
)
def test_no_path_a_stranger_sends_becomes_a_redirect_elsewhere(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)

    location = response.headers.get("location")
    assert location is None or (location.startswith("/") and not location.startswith(("//", "/\\")))


def test_the_stylesheet_is_the_newsletter_s_palette_and_cacheable(client: TestClient) -> None:
    response = client.get("/site.css")

    assert response.headers["content-type"] == "text/css; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert "#8a3b12" in response.text and "prefers-color-scheme: dark" in response.text


def test_one_subscriber_s_page_shows_nothing_of_another(
    client: TestClient, settings: Settings, store: Store, links: dict[str, str]
) -> None:
    person(store, "ben@example.com", name="Benedict Other", tags=["teen"])

    page = client.get(links["preferences"]).text + client.get(links["u"]).text

    assert "Benedict" not in page and "b***@" not in page and 'value="teen" checked' not in page
    csrf = csrf_of(client.get(links["preferences"]).text)
    assert csrf.count(".") == 2  # nonce.payload.tag: signed, not a bare random value
