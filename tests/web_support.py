"""What the web tests share: service settings, a clock they can move, readers of pages and mail, and
subscribers and sends set up in bulk. The app and its client are fixtures: ``tests/fixtures/web.py``."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from html import unescape
from pathlib import Path
from typing import Any

import uvicorn

from pipeline.audience.importer import import_csv
from pipeline.audience.subscribers import Subscriber, add_subscriber
from pipeline.dispatch import ledger
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.transports.base import Outcome
from tests.emulators.sendgrid_events import EventKey
from tests.mail import outbox_transport
from tests.transport_helpers import dispatcher

BASE_URL = "https://news.example.org"
SERVER_START_SECONDS = 30.0


@contextmanager
def serving(uvicorn_server: uvicorn.Server) -> Iterator[None]:
    """``uvicorn_server`` running in a background thread until the block ends."""
    thread = threading.Thread(target=uvicorn_server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not uvicorn_server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield
    finally:
        uvicorn_server.should_exit = True
        thread.join(SERVER_START_SECONDS)


def web_settings(settings: Settings, key: EventKey | None = None, **web: Any) -> Settings:
    """``settings`` with ``[web]`` values changed (and the webhook key of ``key``, if given)."""
    if key is not None:
        web["webhook_public_key"] = key.public_key
    return settings.model_copy(update={"web": settings.web.model_copy(update=web)})


class Clock:
    """Unix time that moves only when a test says so."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def path_of(url: str) -> str:
    """An absolute link of ours as a path the in-process client can request."""
    assert url.startswith(BASE_URL + "/"), url
    return url.removeprefix(BASE_URL)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return unescape(match.group(1))


def heading(page: str) -> str:
    match = re.search(r"<h1>(.*?)</h1>", page, re.S)
    assert match, "no <h1> on the page"
    return unescape(match.group(1)).strip()


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage, route: str, base_url: str = BASE_URL) -> str:
    """The first link to ``{base_url}/{route}/…`` in the plain-text part."""
    match = re.search(rf"{re.escape(base_url)}/{route}/[A-Za-z0-9_.~-]+", text_of(message))
    assert match, f"no /{route}/ link in the message"
    return match.group(0)


def person(store: Store, email: str = "ana@example.com", **kwargs: Any) -> Subscriber:
    return add_subscriber(store, email, **{"name": "Ana Lima", **kwargs})


def readers(store: Store, tmp_path: Path, count: int, tags: str = "", prefix: str = "reader") -> list[str]:
    """Import ``count`` active subscribers (one CSV import, so hundreds take milliseconds)."""
    emails = [f"{prefix}{i:04d}@example.com" for i in range(count)]
    csv = tmp_path / f"{prefix}-{count}.csv"
    csv.write_text("email,name,tags\n" + "".join(f"{e},Reader {i},{tags}\n" for i, e in enumerate(emails)))
    import_csv(store, csv)
    return emails


def mark_sent(store: Store, campaign_id: int, count: int) -> list[tuple[int, int]]:
    """Record ``count`` queued rows as sent, as a dispatch run would; (delivery id, subscriber id) of each."""
    run = ledger.start_run(store, campaign_id)
    claim = ledger.claim(store, campaign_id, run, count)
    ledger.record(store, [Outcome(row[0], "sent", f"<m{row[0]}@x>") for row in claim.rows])
    ledger.end_run(store, run)
    return [(delivery_id, subscriber_id) for delivery_id, subscriber_id, *_ in claim.rows]


def send_everything(store: Store, settings: Settings, campaign_id: int) -> None:
    """Send the whole campaign through the outbox transport (the campaign finishes)."""
    dispatcher(store, settings, outbox_transport(settings)).run(campaign_id)
