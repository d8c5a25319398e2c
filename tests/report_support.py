"""A campaign with known clicks, for the report's tests: who clicked which link at what hour, who bounced
and complained, and a second campaign without delivery events, so every number the report shows can
be worked out by hand (``CLICKS`` and the constants below say what it must be)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from pipeline.audience.subscribers import find_subscriber
from pipeline.dispatch import campaigns
from pipeline.feedback.events import record_events
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.tables import delivery_events
from tests.emulators.sendgrid_events import event
from tests.transport_helpers import new_campaign
from tests.web_support import readers, send_everything

A, B = "https://example.org/a", "https://example.org/b"
CLICKS = (
    # (reader, link, minutes after the campaign started); t0 clicks A twice, and w0 is counted once
    # more by our own click redirect (``OWN_CLICK``), as when both trackers see the same click.
    ("t0", A, 10),
    ("t0", A, 5 * 60 + 5),
    ("t0", B, 30 * 60 + 20),
    ("t1", A, 90),
    ("t2", B, 105),
    ("w0", A, 26 * 60 + 15),
    ("w1", B, 80 * 60),  # after the first 72 hours: a unique click, but not on the hourly chart
)
OWN_CLICK = ("w0", A, 26 * 60 + 40)
HOURLY = {0: 1, 1: 2, 26: 1}
"""First clicks per hour: t0 in hour 0, t1 and t2 in hour 1, w0 in hour 26 (w1's is after hour 72)."""
DELIVERED, CLICKERS = 9, 5
"""Ten sent, t5 bounced; t0, t1, t2, w0 and w1 clicked."""
SECOND_SENT, SECOND_CLICKERS = 8, 1
"""The next issue went to the eight still active (not t5, bounced, nor w3, who complained); t0 clicked."""


@dataclass(frozen=True, slots=True)
class Known:
    first: int
    second: int
    started_at: dt.datetime
    ids: dict[str, int]


def subscriber_id(store: Store, email: str) -> int:
    found = find_subscriber(store, email)
    assert found is not None
    return found.id


def known_campaigns(store: Store, settings: Settings, tmp_path: Path) -> Known:
    """Six toddler parents (t0…t5) and four working moms (w0…w3) get the first issue; SendGrid reports
    it delivered except to t5 (a bounce), w3 complains, and they click as ``CLICKS`` says. The second
    issue goes out by the outbox with no event at all but t0's click on it."""
    emails = {
        **{f"t{i}": e for i, e in enumerate(readers(store, tmp_path, 6, tags="toddler", prefix="t"))},
        **{f"w{i}": e for i, e in enumerate(readers(store, tmp_path, 4, tags="working-mom", prefix="w"))},
    }
    ids = {name: subscriber_id(store, email) for name, email in emails.items()}
    first = new_campaign(store, settings, ("toddlers", "working-moms"))
    send_everything(store, settings, first.id)
    started_at = campaigns.get_campaign(store, first.id).started_at
    assert started_at is not None

    def on(
        kind: str, name: str, minutes: float = 1, campaign_id: int = first.id, **fields: Any
    ) -> dict[str, Any]:
        at = int((started_at + dt.timedelta(minutes=minutes)).timestamp())
        return event(
            kind, emails[name], campaign_id=campaign_id, subscriber_id=ids[name], timestamp=at, **fields
        )

    record_events(
        store,
        [on("delivered", name) for name in emails if name != "t5"]
        + [on("bounce", "t5", reason="550 5.1.1 no such user"), on("spamreport", "w3", 120)]
        + [on("open", "t0", 5), on("open", "t0", 6), on("open", "w2", 7)]
        + [on("click", name, minutes, url=url) for name, url, minutes in CLICKS],
    )
    name, url, minutes = OWN_CLICK
    with store.write() as conn:  # a click our own /c/ redirect recorded: a row of kind click, with its url
        conn.execute(
            insert(delivery_events).values(
                kind="click",
                campaign_id=first.id,
                subscriber_id=ids[name],
                url=url,
                occurred_at=started_at + dt.timedelta(minutes=minutes),
                received_at=started_at + dt.timedelta(minutes=minutes),
            )
        )
    second = new_campaign(store, settings, ("everyone",), "2026-12-08-realistic-expectations.yaml")
    send_everything(store, settings, second.id)
    record_events(store, [on("click", "t0", 60, campaign_id=second.id, url=A)])
    return Known(first.id, second.id, started_at, ids)
