"""``/archive/``: issues that went out, as sent but with nobody's personal data, and their Atom feed."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from starlette.testclient import TestClient

from pipeline.content.issue import load_issue
from pipeline.dispatch import campaigns
from pipeline.render.renderer import render
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import CampaignStatus
from pipeline.web.security import ARCHIVE_CSP
from tests.transport_helpers import ISSUE, new_campaign
from tests.web_support import heading, readers, send_everything

ATOM = "{http://www.w3.org/2005/Atom}"
SLUG = ISSUE.removesuffix(".yaml")
SUBJECT = "Guilt isn't a verdict: start by naming it"


def test_an_empty_archive(client: TestClient) -> None:
    page, feed = client.get("/archive/"), client.get("/archive/feed.xml")

    assert page.status_code == 200 and "No issue has gone out yet." in page.text
    assert feed.status_code == 200 and ET.fromstring(feed.content).findall(f"{ATOM}entry") == []


def test_an_issue_that_went_out_is_public_without_anyone_s_personal_data(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path
) -> None:
    emails = readers(store, tmp_path, 5)
    send_everything(store, settings, new_campaign(store, settings).id)

    index = client.get("/archive/")
    page = client.get(f"/archive/{SLUG}")

    assert f'<a href="/archive/{SLUG}">{SUBJECT}</a>' in index.text.replace("&#39;", "'")
    assert "December 1, 2026" in index.text
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == ARCHIVE_CSP
    text = page.text
    assert "Hi there," in text
    assert "You get this email because you subscribed to The Juggle" in text
    assert "[[nl:" not in text and "/u/" not in text and "/preferences/" not in text
    assert "https://news.example.org/subscribe" in text
    assert not any(email in text for email in emails) and "Reader" not in text
    assert "<script" not in text.lower()
    assert "fonts.googleapis.com" not in text  # MJML's web-font link: no reader's browser calls Google


def test_issues_not_yet_sent_are_not_public(client: TestClient, settings: Settings, store: Store) -> None:
    issue_file = load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE)
    campaigns.create_campaign(
        store, render(issue_file, settings), ("everyone",), "outbox", status=CampaignStatus.SCHEDULED
    )

    assert client.get(f"/archive/{SLUG}").status_code == 404
    assert SLUG not in client.get("/archive/").text
    assert SLUG not in client.get("/archive/feed.xml").text


def test_the_feed_lists_each_issue_once(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path
) -> None:
    readers(store, tmp_path, 2, tags="toddler")
    send_everything(store, settings, new_campaign(store, settings).id)
    new_campaign(store, settings, ("toddlers",))  # the same issue to another audience: still one entry

    response = client.get("/archive/feed.xml")

    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    feed = ET.fromstring(response.content)
    assert feed.findtext(f"{ATOM}title") == "The Juggle"
    (entry,) = feed.findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}id") == f"https://news.example.org/archive/{SLUG}"
    assert entry.findtext(f"{ATOM}title") == SUBJECT
    assert entry.find(f"{ATOM}link").get("href") == f"https://news.example.org/archive/{SLUG}"  # type: ignore[union-attr]
    assert feed.find(f"{ATOM}author/{ATOM}name") is not None


@pytest.mark.parametrize("slug", ["nope", "2026-12-01-NAME", "..%2F..%2Fsettings.toml", "a%00b"])
def test_unknown_or_odd_slugs_are_404(client: TestClient, slug: str) -> None:
    response = client.get(f"/archive/{slug}")

    assert response.status_code == 404
    assert heading(response.text) in ("No such issue", "Page not found")
    assert "[newsletter]" not in response.text


def test_archive_without_a_slash_goes_to_the_index(client: TestClient) -> None:
    response = client.get("/archive", follow_redirects=False)

    assert (response.status_code, response.headers["location"]) == (308, "/archive/")
