"""Campaigns and batches built by hand, so the send path is tested piece by piece."""

from __future__ import annotations

from typing import Any

from pipeline.content.issue import load_issue
from pipeline.dispatch import campaigns
from pipeline.dispatch.dispatcher import Dispatcher
from pipeline.dispatch.ratelimit import Pace, RateLimiter
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import render
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.tokens import Signer
from pipeline.transports.base import Batch, Envelope, Transport

SIGNER = Signer(b"transport-tests-key-0123456789abcdef")
ISSUE = "2026-12-01-name-it-to-tame-it.yaml"


def new_campaign(
    store: Store, settings: Settings, segments: tuple[str, ...] = ("everyone",), issue: str = ISSUE
) -> campaigns.Campaign:
    """A running campaign of a sample issue (the first), its audience frozen into queued ledger rows."""
    issue_file = load_issue(settings.path(settings.newsletter.issues_dir) / issue)
    campaign, created = campaigns.create_campaign(store, render(issue_file, settings), segments, "outbox")
    assert created
    return campaign


def dispatcher(
    store: Store,
    settings: Settings,
    transport: Transport,
    *,
    limiter: Pace | None = None,
    **options: Any,
) -> Dispatcher:
    """A dispatcher with the store's own links and, unless a test paces it, no pacing to speak of (1e6/s)."""
    links = Links(settings, store.signer)
    return Dispatcher(store, settings, transport, links, limiter=limiter or RateLimiter(1e6), **options)


def make_batch(
    settings: Settings, emails: list[str], *, campaign_id: int | None = 7, first_id: int = 1
) -> Batch:
    """A batch of the first sample issue for ``emails``, built without a store (transport tests)."""
    issue_file = load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE)
    rendered = render(issue_file, settings)
    links = Links(settings, SIGNER)
    envelopes = []
    for offset, email in enumerate(emails):
        recipient = Recipient(100 + offset, email, f"Reader {offset}")
        envelopes.append(Envelope(first_id + offset, recipient, links.personal_fields(recipient)))
    return Batch(campaign_id, rendered, MessageTemplate(settings, rendered), envelopes)
