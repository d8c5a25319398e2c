"""One copy to one person, outside any campaign and its ledger: the [TEST] copy and the signup confirmation.

Both go through ``send_single``, the same message builder and transport call as a campaign's batches.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline.audience.optin import CONFIRM, MAY_CONFIRM
from pipeline.audience.subscribers import find_subscriber
from pipeline.dispatch.plan import checked_issue
from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import RenderedIssue, Renderer
from pipeline.render.single import TEST_PREFIX, confirmation
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.transports.base import Batch, Envelope, Outcome, Transport


def send_single(
    settings: Settings,
    transport: Transport,
    rendered: RenderedIssue,
    recipient: Recipient,
    fields: PersonalFields,
    *,
    subject_prefix: str = "",
) -> Outcome:
    """Hand one copy, personalised with ``fields``, to the transport; its outcome (the caller closes
    the transport)."""
    message = MessageTemplate(settings, rendered, subject_prefix=subject_prefix)
    envelope = Envelope(0, recipient, fields)
    (outcome,) = transport.send(Batch(None, rendered, message, [envelope]))
    return outcome


def send_test(
    store: Store, settings: Settings, path: Path, email: str, transport: Transport, links: Links
) -> Outcome:
    """One personalised copy to ``email``, subject prefixed [TEST]; no campaign, no ledger row.

    Its links are preview links: a forwarded test copy changes nothing for anybody, the subscriber
    with that address included.
    """
    _, rendered = checked_issue(path, settings, links)
    subscriber = find_subscriber(store, email)
    recipient = (
        Recipient(subscriber.id, subscriber.email, subscriber.name) if subscriber else Recipient(0, email)
    )
    try:
        fields = links.preview_fields(recipient)
        return send_single(settings, transport, rendered, recipient, fields, subject_prefix=TEST_PREFIX)
    finally:
        transport.close()


def send_confirmation(
    settings: Settings,
    store: Store,
    renderer: Renderer,
    transport: Transport,
    subscriber_id: int,
    now: dt.datetime,
) -> Outcome | None:
    """Mail the confirmation link (valid ``web.confirm_hours``); None if the person may not confirm now."""
    subscriber = find_subscriber(store, subscriber_id)
    if subscriber is None or subscriber.status not in MAY_CONFIRM:
        return None
    expires_at = int(now.timestamp()) + settings.web.confirm_hours * 3600
    token = store.signer.sign(CONFIRM, subscriber_id, expires_at=expires_at)
    rendered = confirmation(renderer, f"{settings.newsletter.base_url}/confirm/{token}")
    recipient = Recipient(subscriber.id, subscriber.email, subscriber.name)
    fields = Links(settings, store.signer).personal_fields(recipient)
    return send_single(settings, transport, rendered, recipient, fields)
