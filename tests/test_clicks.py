"""Click tracking of our own: an issue's links rewritten once to signed redirects, each copy given its
reader's token by substitution, and the redirect answering 302 to the campaign's link only while it
records the click beside SendGrid's events."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import NamedTuple

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.dispatch.campaigns import load_links
from pipeline.feedback.events import record_events
from pipeline.feedback.reports import campaign_stats
from pipeline.render import clicks
from pipeline.render.links import click_purpose
from pipeline.render.renderer import RenderedIssue, placeholder
from pipeline.settings import Settings, TrackingSettings
from pipeline.store.engine import Store
from pipeline.transports.sendgrid import SendGridTransport
from pipeline.web import create_app
from pipeline.web.accesslog import HideTokens, token_prefixes
from pipeline.web.context import web_of
from tests.emulators.sendgrid import AcceptedMessage, SendGridEmulator
from tests.emulators.sendgrid_events import event
from tests.mail import outbox_messages
from tests.report_support import subscriber_id
from tests.test_transport_sendgrid import API_KEY, as_delivered
from tests.transport_helpers import dispatcher, new_campaign
from tests.web_support import Clock, html_of, readers, send_everything, text_of

JOIN_SECONDS = 10.0


def tracking(settings: Settings, **options: bool) -> Settings:
    return settings.model_copy(update={"tracking": TrackingSettings(**{"clicks": True, **options})})


def hrefs(page: str) -> list[str]:
    return [html.unescape(url) for url in re.findall(r'<a\b[^>]*\shref="([^"]+)"', page)]


def redirects(page: str, base_url: str) -> list[str]:
    return [url for url in hrefs(page) if url.startswith(f"{base_url}/c/")]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracked_settings(settings: Settings) -> Settings:
    return tracking(settings)


@pytest.fixture
def app(tracked_settings: Settings, store: Store, clock: Clock) -> Starlette:
    return create_app(tracked_settings, store, clock=clock)


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def recorded(app: Starlette) -> None:
    """Store the clicks the app has answered now, without waiting for its timer."""
    context = web_of(app)
    context.clicks.flush(context)
    assert context.jobs.join(JOIN_SECONDS)


# --- the rewrite -------------------------------------------------------------------------------------


def test_each_link_of_the_html_points_at_its_place_and_our_own_links_stay(
    rendered: RenderedIssue, settings: Settings
) -> None:
    base = settings.newsletter.base_url
    links = clicks.targets(rendered)
    original = hrefs(rendered.html.with_tags(placeholder))
    assert links and len(links) == len(set(links))
    assert set(links) <= set(original)

    tracked = clicks.track(rendered, 7, links, base)
    rewritten = hrefs(tracked.html.with_tags(placeholder))
    assert len(rewritten) == len(original)
    prefix = f"{base}/c/7.{placeholder(clicks.CLICK_FIELD)}/"
    for before, after in zip(original, rewritten, strict=True):
        if before in links and not before.startswith(base + "/"):
            assert after.startswith(prefix) and links[int(after.removeprefix(prefix))] == before
        else:
            assert after == before  # unsubscribe, preferences, the archive: our own pages, as they were
    assert any(url.startswith(prefix) for url in rewritten)
    assert clicks.tracked(tracked) and not clicks.tracked(rendered)
    # The text part keeps the plain URLs a reader can read, unless asked.
    assert tracked.text.with_tags(placeholder) == rendered.text.with_tags(placeholder)
    in_text = clicks.track(rendered, 7, links, base, text=True).text.with_tags(placeholder)
    assert prefix in in_text
    assert not [url for url in links if not url.startswith(base + "/") and url in in_text]


def test_an_edit_keeps_every_earlier_link_at_its_place(rendered: RenderedIssue) -> None:
    earlier = ["https://old.example.org/gone", *clicks.targets(rendered)[:1]]
    links = clicks.targets(rendered, earlier)
    assert links[: len(earlier)] == earlier
    assert len(links) == len(set(links)) and set(clicks.targets(rendered)) <= set(links)


# --- sending -----------------------------------------------------------------------------------------


def first_tracked_link(message: EmailMessage, base_url: str) -> str:
    (link, *_) = redirects(html_of(message), base_url)
    return link


def through_outbox(
    store: Store, settings: Settings, tmp_path: Path, count: int
) -> tuple[int, list[EmailMessage]]:
    """A campaign of the first sample sent to ``count`` readers through the outbox: its id and messages."""
    readers(store, tmp_path, count)
    campaign = new_campaign(store, settings)
    send_everything(store, settings, campaign.id)
    messages = outbox_messages(settings)
    assert len(messages) == count
    return campaign.id, messages


def test_every_copy_carries_its_readers_token_and_the_text_stays_plain(
    store: Store, tracked_settings: Settings, tmp_path: Path
) -> None:
    campaign_id, messages = through_outbox(store, tracked_settings, tmp_path, 3)
    base = tracked_settings.newsletter.base_url
    tokens = set()
    for message in messages:
        found = redirects(html_of(message), base)
        assert found
        token = {re.match(rf"{re.escape(base)}/c/{campaign_id}\.([^/]+)/\d+$", url)[1] for url in found}  # type: ignore[index]
        assert len(token) == 1  # one reader, one token in every link
        tokens |= token
        assert "/c/" not in text_of(message)
    assert len(tokens) == 3


def test_untracked_settings_send_the_links_as_they_are(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    campaign_id, (message, _) = through_outbox(store, settings, tmp_path, 2)
    assert not redirects(html_of(message), settings.newsletter.base_url)
    assert load_links(store, campaign_id)  # kept all the same: tracking may be turned on later


def through_sendgrid(
    store: Store, settings: Settings, tmp_path: Path, count: int
) -> tuple[int, AcceptedMessage]:
    """A campaign of the first sample to ``count`` readers, sent through the SendGrid emulator: its
    id and the one request the emulator accepted."""
    readers(store, tmp_path, count)
    campaign = new_campaign(store, settings)
    with SendGridEmulator(api_key=API_KEY) as emulator:
        config = settings.sendgrid.model_copy(update={"host": emulator.url})
        sending = settings.model_copy(update={"sendgrid": config})
        dispatcher(store, sending, SendGridTransport(sending, API_KEY)).run(campaign.id)
        (message,) = emulator.messages
    assert message.raw is not None
    return campaign.id, message


def test_sendgrid_gets_the_token_as_a_substitution_and_its_own_click_tracking_off(
    store: Store, tracked_settings: Settings, tmp_path: Path
) -> None:
    campaign_id, message = through_sendgrid(store, tracked_settings, tmp_path, 4)
    assert message.raw is not None
    assert message.raw["tracking_settings"]["click_tracking"] == {"enable": False, "enable_text": False}
    assert message.raw["tracking_settings"]["open_tracking"] == {"enable": False}
    base = tracked_settings.newsletter.base_url
    for index, personalization in enumerate(message.personalizations):
        _text, page = as_delivered(message, index)
        (sid,) = {int(personalization["custom_args"]["subscriber_id"])}
        token = redirects(page, base)[0].split("/")[-2].partition(".")[2]
        email = personalization["to"][0]["email"]
        assert store.signer.verify(click_purpose(campaign_id), token, address=email) == sid


def test_sendgrid_without_tracking_sends_no_click_token(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    _, message = through_sendgrid(store, settings, tmp_path, 2)
    assert message.raw is not None
    assert "click_tracking" not in message.raw["tracking_settings"]
    assert all(not any("click_token" in key for key in p["substitutions"]) for p in message.personalizations)


# --- the redirect ------------------------------------------------------------------------------------


class SentLink(NamedTuple):
    campaign_id: int
    path: str
    """The reader's first tracked link, as a path of the web service."""
    target: str
    """Where it leads."""
    email: str
    """Whose link it is."""


@pytest.fixture
def sent_link(store: Store, tracked_settings: Settings, tmp_path: Path) -> SentLink:
    """A tracked campaign sent to two readers, and the first tracked link of one of them."""
    campaign_id, (message, _) = through_outbox(store, tracked_settings, tmp_path, 2)
    base = tracked_settings.newsletter.base_url
    link = first_tracked_link(message, base)
    links = load_links(store, campaign_id)
    assert links is not None
    return SentLink(
        campaign_id,
        link.removeprefix(base),
        links[int(link.rsplit("/", 1)[1])],
        message["To"].addresses[0].addr_spec,
    )


def clicked(store: Store, campaign_id: int) -> tuple[int, int]:
    count = campaign_stats(store, campaign_id).whole.clicked
    return count.total, count.unique


def test_a_click_is_sent_on_to_the_link_and_counted_once_per_reader(
    store: Store, app: Starlette, client: TestClient, clock: Clock, sent_link: SentLink
) -> None:
    campaign_id, path, target, _ = sent_link
    answer = client.get(path, follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == target
    assert answer.headers["cache-control"] == "no-store"
    client.get(path, follow_redirects=False)  # a double fetch in the same second: one click
    recorded(app)
    assert clicked(store, campaign_id) == (1, 1)
    clock.advance(60)
    client.get(path, follow_redirects=False)
    recorded(app)
    assert clicked(store, campaign_id) == (2, 1)
    (link,) = campaign_stats(store, campaign_id).links
    assert (link.url, link.clicks, link.unique) == (target, 2, 1)


def test_clicks_are_stored_by_the_timer_within_seconds_without_anyone_asking(
    store: Store, client: TestClient, sent_link: SentLink
) -> None:
    client.get(sent_link.path, follow_redirects=False)
    deadline = time.monotonic() + JOIN_SECONDS
    while clicked(store, sent_link.campaign_id) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clicked(store, sent_link.campaign_id) == (1, 1)


def test_head_requests_of_link_checkers_are_not_clicks(
    store: Store, app: Starlette, client: TestClient, sent_link: SentLink
) -> None:
    campaign_id, path, target, _ = sent_link
    answer = client.head(path, follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == target
    recorded(app)
    assert clicked(store, campaign_id) == (0, 0)


def test_a_forged_or_borrowed_token_still_leads_on_but_counts_nothing(
    store: Store, app: Starlette, client: TestClient, tracked_settings: Settings, sent_link: SentLink
) -> None:
    campaign_id, path, target, _ = sent_link
    prefix, token, index = path.rsplit("/", 2)
    sid, tag = token.partition(".")[2].split(".")
    other = new_campaign(
        store, tracked_settings, ("everyone",), issue="2026-12-08-realistic-expectations.yaml"
    )
    forged = [
        f"{prefix}/{campaign_id}.{sid}.{'A' * len(tag)}/{index}",  # a tag we never made
        f"{prefix}/{campaign_id}.{sid}/{index}",  # no tag at all
        f"{prefix}/{campaign_id}.garbage/{index}",
    ]
    for bad in forged:
        answer = client.get(bad, follow_redirects=False)
        assert answer.status_code == 302 and answer.headers["location"] == target
    # The reader's token on another campaign's link: signed for campaign 1 only.
    answer = client.get(f"{prefix}/{other.id}.{sid}.{tag}/0", follow_redirects=False)
    assert answer.status_code == 302
    recorded(app)
    assert clicked(store, campaign_id) == (0, 0)
    assert clicked(store, other.id) == (0, 0)


@pytest.mark.parametrize(
    "path",
    [
        "/c/{cid}.x/999",  # no such link
        "/c/99999.x/0",  # no such campaign
        "/c/99999999999999999999999.x/0",  # not an id the store could hold
        "/c/{cid}.x/-1",
        "/c/{cid}.x/https:%2F%2Fevil.example",
        "/c/abc.x/0",
    ],
)
def test_no_request_chooses_where_the_redirect_goes(
    client: TestClient, sent_link: SentLink, path: str
) -> None:
    campaign_id = sent_link.campaign_id
    answer = client.get(path.format(cid=campaign_id), follow_redirects=False)
    assert answer.status_code == 404 and "location" not in answer.headers


def test_the_redirect_ignores_what_the_query_asks_for(client: TestClient, sent_link: SentLink) -> None:
    path, target = sent_link.path, sent_link.target
    answer = client.get(path + "?url=https://evil.example/&next=//evil.example", follow_redirects=False)
    assert answer.headers["location"] == target


def test_the_access_log_shows_no_click_token(app: Starlette, sent_link: SentLink) -> None:
    path = sent_link.path
    assert "/c/" in token_prefixes(app)
    assert HideTokens(token_prefixes(app)).hidden(path) == "/c/…"


def test_the_reports_count_sendgrid_and_our_clicks_of_one_reader_once(
    store: Store, app: Starlette, client: TestClient, sent_link: SentLink
) -> None:
    campaign_id, path, target, email = sent_link
    client.get(path, follow_redirects=False)
    recorded(app)
    sid = subscriber_id(store, email)
    record_events(store, [event("click", email, campaign_id=campaign_id, subscriber_id=sid, url=target)])
    assert clicked(store, campaign_id) == (2, 1)
