"""The subscriber's whole journey in real headless Chromium, against ``newsletter serve``'s app under uvicorn.

Sign up on the form, confirm with the button the mailed link opens, receive an issue, change
preferences, and leave by the unsubscribe link's button; every step is checked in the store, and no
page may log an error (a CSP violation or a missing stylesheet shows up in the console).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from pipeline.audience.subscribers import find_subscriber, subscriber_log
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.render.links import Links
from pipeline.settings import Settings
from pipeline.store.engine import Store, open_store
from pipeline.web import create_app, server
from tests.mail import outbox_transport, parse_message
from tests.system import free_port
from tests.transport_helpers import ISSUE, dispatcher
from tests.web_support import link_in, serving, text_of

ADDRESS = "reader@example.com"
WAIT = 15.0
"""Seconds to wait for something that happens in the background (never asserted as a duration)."""


@dataclass
class Live:
    settings: Settings
    store: Store
    base_url: str

    @property
    def outbox(self) -> Path:
        return self.settings.path(self.settings.delivery.outbox_dir)


@pytest.fixture
def live(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """``newsletter serve``'s app under uvicorn on a free localhost port, in a background thread."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "e2e-" + "k" * 40)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    newsletter = settings.newsletter.model_copy(update={"base_url": base_url})
    configured = settings.model_copy(update={"newsletter": newsletter})
    with open_store(configured) as store:
        uvicorn_server = server(create_app(configured, store), "127.0.0.1", port, access_log=False)
        with serving(uvicorn_server):
            yield Live(configured, store, base_url)


def wait_for_mail(folder: Path) -> EmailMessage:
    """The one .eml in ``folder``, once the background task has written it."""
    deadline = time.monotonic() + WAIT
    while not (found := sorted(folder.glob("*.eml"))):
        assert time.monotonic() < deadline, f"no message appeared in {folder}"
        time.sleep(0.05)
    (path,) = found
    return parse_message(path.read_bytes())


def test_sign_up_confirm_receive_an_issue_and_unsubscribe_in_chromium(live: Live, page: Page) -> None:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    heading = page.get_by_role("heading", level=1)

    # Sign up on the form.
    page.goto(f"{live.base_url}/subscribe")
    page.get_by_label("Email address").fill(ADDRESS)
    page.get_by_label("First name").fill("Robin")
    page.get_by_label("Toddler").check()
    page.get_by_role("button", name="Subscribe").click()
    expect(heading).to_have_text("Check your inbox")
    # The answer comes before the store is touched (it must not tell whether the address is known):
    # the signup is recorded, then mailed, by a job after it, so the mail is what to wait for.
    confirmation = wait_for_mail(live.outbox / "test-confirm")
    pending = find_subscriber(live.store, ADDRESS)
    assert pending is not None and (pending.status, pending.tags) == ("unconfirmed", ("toddler",))

    # Confirm with the link from the mailed confirmation.
    assert confirmation["To"] == f"Robin <{ADDRESS}>"
    page.goto(link_in(confirmation, "confirm", live.base_url))
    expect(heading).to_have_text("Confirm your subscription")
    assert find_subscriber(live.store, ADDRESS).status == "unconfirmed"  # type: ignore[union-attr]
    page.get_by_role("button", name="Yes, subscribe me").click()
    expect(heading).to_have_text("You are subscribed")
    assert find_subscriber(live.store, ADDRESS).status == "active"  # type: ignore[union-attr]

    # Send an issue through the outbox, as `newsletter send` does.
    links = Links(live.settings, live.store.signer)
    plan = plan_send(live.store, live.settings, live.settings.path(Path("issues")) / ISSUE, links)
    campaign, _ = start_campaign(live.store, plan, "outbox")
    transport = outbox_transport(live.settings)
    report = dispatcher(live.store, live.settings, transport).run(campaign.id)
    assert report.counts["sent"] == 1
    issue = wait_for_mail(transport.folder(campaign.id, campaign.issue_slug))
    assert "Hi Robin," in text_of(issue)

    # Change preferences from the issue's footer link.
    page.goto(link_in(issue, "preferences", live.base_url))
    page.get_by_label("Toddler").uncheck()
    page.get_by_label("Teen").check()
    page.get_by_role("button", name="Save my preferences").click()
    expect(page.get_by_role("status")).to_have_text("Saved. Thank you!")
    assert find_subscriber(live.store, ADDRESS).tags == ("teen",)  # type: ignore[union-attr]

    # Leave by the unsubscribe link the List-Unsubscribe header carries, pressing the button.
    unsubscribe_url = str(issue["List-Unsubscribe"]).split(">")[0].lstrip("<")
    assert unsubscribe_url == link_in(issue, "u", live.base_url)
    page.goto(unsubscribe_url)
    expect(heading).to_have_text("Unsubscribe?")
    expect(page.get_by_text("r***@example.com")).to_be_visible()
    page.get_by_role("button", name="Unsubscribe").click()
    expect(heading).to_have_text("You are unsubscribed")

    left = find_subscriber(live.store, ADDRESS)
    assert left is not None and left.status == "unsubscribed"
    assert subscriber_log(live.store, left.id)[-1].actor == "unsubscribe-link"

    # The issue as archived renders, styled, without personal data.
    page.goto(f"{live.base_url}/archive/{campaign.issue_slug}")
    expect(heading).to_have_text(plan.rendered.subject)
    assert "Robin" not in page.content()
    assert problems == [], "\n".join(problems)


def test_a_page_is_readable_on_a_phone(live: Live, page: Page) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    problems: list[ConsoleMessage] = []
    page.on("console", lambda message: problems.append(message) if message.type == "error" else None)

    page.goto(f"{live.base_url}/subscribe")

    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360  # nothing forces sideways scrolling
    button = page.get_by_role("button", name="Subscribe").bounding_box()
    assert button is not None and button["height"] >= 40  # a comfortable touch target
    colour = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert colour == "rgb(244, 239, 233)"  # the newsletter's page colour: the stylesheet loaded
    assert problems == []
