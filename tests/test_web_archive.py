"""``/archive/``: issues that went out, as web pages made from what their campaign stored, with nobody's
personal data; their Atom feed, in full; and campaigns from before the store kept the web content."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from dataclasses import replace
from html import unescape
from pathlib import Path
from xml.etree import ElementTree as ET

import feedparser  # type: ignore[import-untyped]  # no type hints of its own
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert
from starlette.testclient import TestClient

from pipeline.content.issue import load_issue
from pipeline.dispatch import campaigns
from pipeline.render.renderer import render
from pipeline.settings import Settings
from pipeline.store import tables
from pipeline.store.engine import MIGRATIONS, Store, connect, head_revision
from pipeline.store.statuses import CampaignStatus
from pipeline.web import create_app
from pipeline.web.archive import FEED_ENTRIES, ISSUE_CSP
from pipeline.web.security import ARCHIVE_CSP
from tests.fixtures.store import TEST_KEY
from tests.fixtures.web import OpenClient
from tests.transport_helpers import ISSUE, new_campaign
from tests.web_support import heading, readers, send_everything

ATOM = "{http://www.w3.org/2005/Atom}"
SLUG = ISSUE.removesuffix(".yaml")
SUBJECT = "Guilt isn't a verdict: start by naming it"
SECOND = "2026-12-08-realistic-expectations.yaml"
THIRD = "2026-12-15-build-your-support-system.yaml"


def test_an_empty_archive(client: TestClient) -> None:
    page, feed = client.get("/archive/"), client.get("/archive/feed.xml")

    assert page.status_code == 200 and "No issue has gone out yet." in page.text
    assert feed.status_code == 200 and ET.fromstring(feed.content).findall(f"{ATOM}entry") == []


def test_an_issue_that_went_out_is_a_web_page_without_anyone_s_personal_data(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path
) -> None:
    emails = readers(store, tmp_path, 5)
    send_everything(store, settings, new_campaign(store, settings).id)

    index = client.get("/archive/")
    page = client.get(f"/archive/{SLUG}")

    assert f'<a href="/archive/{SLUG}">{SUBJECT}</a>' in index.text.replace("&#39;", "'")
    assert "December 1, 2026" in index.text
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == ISSUE_CSP
    text = unescape(page.text)
    assert heading(page.text) == SUBJECT
    assert '<time datetime="2026-12-01">December 1, 2026</time>' in text
    assert "<main" in text
    for section in (
        "Picture a Tuesday",
        "Name it to tame it",
        "Say it out loud",
        "The night-shift sticky note",
    ):
        assert section in text  # intro, strategy and its steps, story: the issue's content
    assert "Priya, emergency room nurse" in text and "Explore Pew Research" in text  # story, next steps
    assert "Research on parenting and family life" in text  # resources
    # Nothing meant for one reader of the email.
    assert "Hi there" not in text and "You get this email because" not in text
    assert "Unsubscribe" not in text and "preferences" not in text.lower()
    assert "[[nl:" not in text and "/u/" not in text
    assert not any(email in text for email in emails) and "Reader" not in text
    # Made for the web: the site's stylesheet, no inline style or script, a signup box, the way on.
    assert 'href="/site.css"' in text and "style=" not in text and "<script" not in text.lower()
    assert '<form method="post" action="/subscribe">' in text
    assert set(re.findall(r'<input id="[^"]+" name="(\w+)"', text)) == {
        "email",
        "website",
    }  # what /subscribe reads
    assert (
        '<meta name="referrer" content="same-origin">' in text
    )  # else the post says "Origin: null", refused
    assert '<a href="/archive/">All issues</a>' in text


def test_issues_not_yet_sent_are_not_public(client: TestClient, settings: Settings, store: Store) -> None:
    issue_file = load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE)
    campaigns.create_campaign(
        store, render(issue_file, settings), ("everyone",), "outbox", status=CampaignStatus.SCHEDULED
    )

    assert client.get(f"/archive/{SLUG}").status_code == 404
    assert SLUG not in client.get("/archive/").text
    assert SLUG not in client.get("/archive/feed.xml").text


def test_the_page_shows_the_issue_as_it_was_sent_without_the_issue_files(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path
) -> None:
    readers(store, tmp_path, 2, tags="toddler")
    send_everything(store, settings, new_campaign(store, settings).id)
    issues = settings.path(settings.newsletter.issues_dir)
    path = issues / ISSUE
    path.write_text(path.read_text().replace("Name it to tame it", "An edited title"))
    new_campaign(store, settings, ("toddlers",))  # the edited issue, sent again to another audience
    shutil.rmtree(issues)  # the web host has no issues/ folder

    text = unescape(client.get(f"/archive/{SLUG}").text)
    entry = feedparser.parse(client.get("/archive/feed.xml").content).entries[0]

    assert "Name it to tame it" in text and "An edited title" not in text
    assert "Name it to tame it" in entry.content[0].value  # the first campaign's content, as sent


def test_each_issue_page_leads_to_the_one_before_and_after_it(
    client: TestClient, settings: Settings, store: Store
) -> None:
    for issue in (ISSUE, SECOND, THIRD):
        new_campaign(store, settings, issue=issue)
    first, second, third = (f"/archive/{name.removesuffix('.yaml')}" for name in (ISSUE, SECOND, THIRD))

    def links(path: str) -> tuple[str | None, str | None]:
        page = client.get(path).text
        older = re.search(r'<a rel="prev" href="([^"]+)"', page)
        newer = re.search(r'<a rel="next" href="([^"]+)"', page)
        assert '<a href="/archive/">All issues</a>' in page
        return (older and older[1], newer and newer[1])

    assert links(first) == (None, second)
    assert links(second) == (first, third)
    assert links(third) == (second, None)


def test_the_feed_validates_and_carries_each_issue_in_full_once(
    client: TestClient, settings: Settings, store: Store, tmp_path: Path
) -> None:
    readers(store, tmp_path, 2, tags="toddler")
    send_everything(store, settings, new_campaign(store, settings).id)
    new_campaign(store, settings, ("toddlers",))  # the same issue to another audience: still one entry
    new_campaign(store, settings, issue=SECOND)

    response = client.get("/archive/feed.xml")
    feed = feedparser.parse(response.content)

    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert feed.bozo == 0, feed.get("bozo_exception")
    assert feed.version == "atom10"
    assert feed.feed.title == "The Juggle" and feed.feed.author == "The Juggle"
    assert feed.feed.link == "https://news.example.org/archive/"
    assert [e.title for e in feed.entries] == ["Store-bought cupcakes count. So do you.", SUBJECT]
    newer, older = feed.entries
    assert older.id == older.link == f"https://news.example.org/archive/{SLUG}"
    assert older.summary.startswith("More than half of working moms feel it.")
    assert older.published_parsed is not None and older.updated_parsed is not None
    assert older.published_parsed <= newer.published_parsed
    (content,) = older.content
    assert content.type == "text/html"
    for words in (
        "Picture a Tuesday",
        "Name it to tame it",
        "The night-shift sticky note",
        "Explore Pew Research",
    ):
        assert words in content.value
    assert (
        "Hi there" not in content.value and "Unsubscribe" not in content.value and "/u/" not in content.value
    )


def test_the_feed_carries_the_newest_issues(client: TestClient, settings: Settings, store: Store) -> None:
    rendered = render(load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE), settings)
    slugs = [f"2026-{month:02d}-{day:02d}-issue" for month in (1, 2) for day in range(1, 12)]
    for slug in slugs:
        campaigns.create_campaign(store, replace(rendered, slug=slug), ("everyone",), "outbox")

    feed = feedparser.parse(client.get("/archive/feed.xml").content)
    index = client.get("/archive/").text

    assert feed.bozo == 0 and len(slugs) > FEED_ENTRIES
    assert [e.link.rpartition("/")[2] for e in feed.entries] == sorted(slugs, reverse=True)[:FEED_ENTRIES]
    assert all(f'href="/archive/{slug}"' in index for slug in slugs)  # the page lists every one


def test_an_issue_with_a_hero_image_shows_it_under_its_own_policy(
    client: TestClient, settings: Settings, store: Store
) -> None:
    path = settings.path(settings.newsletter.issues_dir) / ISSUE
    hero = (
        'hero:\n  src: "https://images.example.org/tuesday.jpg"\n  alt: "A mug of <cold> coffee"\nstrategy:'
    )
    path.write_text(path.read_text().replace("strategy:", hero, 1))
    new_campaign(store, settings)

    response = client.get(f"/archive/{SLUG}")

    assert (
        '<img src="https://images.example.org/tuesday.jpg" alt="A mug of &lt;cold&gt; coffee">'
        in response.text
    )
    assert "img-src 'self' https: data:" in response.headers["content-security-policy"]
    assert (
        "script-src" not in ISSUE_CSP
        and "default-src 'none'" in ISSUE_CSP
        and "'unsafe-inline'" not in ISSUE_CSP
    )


def migrate_to(store: Store, revision: str) -> None:
    """Bring the store's schema to ``revision`` only, as an older pipeline left it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.write() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_a_campaign_from_before_the_web_content_shows_its_email_with_neutral_values(
    empty_store_url: str, settings: Settings, project: Path, open_client: OpenClient
) -> None:
    rendered = render(load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE), settings)
    with connect(empty_store_url, TEST_KEY, migrate=False) as old:
        migrate_to(old, "0006")
        with old.write() as conn:  # the row as create_campaign wrote it then: the email only
            now = dt.datetime.now(dt.UTC)
            conn.execute(
                insert(tables.campaigns).values(
                    issue_slug=SLUG,
                    segments="everyone",
                    subject=rendered.subject,
                    preheader=rendered.preheader,
                    html=rendered.html.with_tags(lambda name: f"[[nl:{name}]]"),
                    text=rendered.text.with_tags(lambda name: f"[[nl:{name}]]"),
                    content_hash="0" * 64,
                    transport="outbox",
                    status=CampaignStatus.FINISHED,
                    created_at=now,
                    started_at=now,
                )
            )
    with connect(empty_store_url, TEST_KEY, segments_file=project / "subscribers" / "segments.toml") as store:
        assert store.current_revision() == head_revision()
        client = open_client(create_app(settings, store))
        page = client.get(f"/archive/{SLUG}")
        feed = feedparser.parse(client.get("/archive/feed.xml").content)
        index = client.get("/archive/").text

    assert page.status_code == 200 and page.headers["content-security-policy"] == ARCHIVE_CSP
    assert "Hi there," in page.text and "https://news.example.org/subscribe" in page.text
    assert "[[nl:" not in page.text and "/u/" not in page.text and "/preferences/" not in page.text
    assert "fonts.googleapis.com" not in page.text  # MJML's web-font link: no reader's browser calls Google
    assert f'href="/archive/{SLUG}"' in index
    (entry,) = feed.entries
    assert feed.bozo == 0 and entry.title == SUBJECT and "content" not in entry  # its summary and link only
    assert entry.summary == rendered.preheader


@pytest.mark.parametrize("slug", ["nope", "2026-12-01-NAME", "..%2F..%2Fsettings.toml", "a%00b"])
def test_unknown_or_odd_slugs_are_404(client: TestClient, slug: str) -> None:
    response = client.get(f"/archive/{slug}")

    assert response.status_code == 404
    assert heading(response.text) in ("No such issue", "Page not found")
    assert "[newsletter]" not in response.text


def test_archive_without_a_slash_goes_to_the_index(client: TestClient) -> None:
    response = client.get("/archive", follow_redirects=False)

    assert (response.status_code, response.headers["location"]) == (308, "/archive/")
