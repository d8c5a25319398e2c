"""Whose link is it: the person an unsubscribe or preferences token opens for, judged against the store.

A link is signed for a subscriber id and that person's address (``pipeline.tokens``), so it opens only
while the id still stands for the address. A preview link (``PREVIEW_ID``) opens for nobody.

Links signed for the id alone, before addresses were bound, are still in people's inboxes. Such a link
opens for the person who has the id now, unless the id may have meant someone else when it was made:
an id that once belonged to an erased person (SQLite handed those out again until migration 0005), or
id 1, which every preview made before then was signed for.

A token that fails for an existing id and one for an id nobody has get the same answer (``INVALID``),
so a stranger trying ids learns nothing about who is on the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select

from pipeline.audience.subscribers import Subscriber, find_subscriber
from pipeline.errors import TokenError
from pipeline.store.engine import Store
from pipeline.store.tables import subscriber_events
from pipeline.tokens import PREVIEW_ID

LEGACY_PREVIEW_ID = 1
"""The id ``newsletter render`` signed its previews for before preview links existed."""


class Opens(StrEnum):
    PERSON = "person"
    """The subscriber the link was made for."""
    PREVIEW = "preview"
    """A preview or [TEST] copy's link: nobody."""
    GONE = "gone"
    """A link of ours whose person is no longer in the store (erased)."""
    OUTDATED = "outdated"
    """An id-only link of before whose id may have meant someone else: nobody, to be safe."""
    INVALID = "invalid"
    """Not a link we signed for anyone here: forged, cut short, changed, or for another address."""


@dataclass(frozen=True, slots=True)
class LinkOwner:
    opens: Opens
    subscriber: Subscriber | None = None
    """Set exactly when ``opens`` is ``PERSON``."""


def link_owner(store: Store, purpose: str, token: str) -> LinkOwner:
    """Whom ``token`` (signed for ``purpose``) opens for; never raises for a bad token."""
    signer = store.signer
    try:
        claimed = signer.claimed_id(token)
    except TokenError:
        return LinkOwner(Opens.INVALID)
    if claimed == PREVIEW_ID:
        return LinkOwner(Opens.PREVIEW if _verifies(store, purpose, token, "") else Opens.INVALID)
    subscriber = find_subscriber(store, claimed)
    if subscriber is not None and _verifies(store, purpose, token, subscriber.email):
        return LinkOwner(Opens.PERSON, subscriber)
    if _verifies(store, purpose, token, ""):  # signed for the id alone since: web pages' own links
        return LinkOwner(Opens.GONE) if subscriber is None else LinkOwner(Opens.PERSON, subscriber)
    try:
        signer.verify_legacy(purpose, token)
    except TokenError:
        return LinkOwner(Opens.INVALID)
    if subscriber is None:
        return LinkOwner(Opens.GONE)
    if claimed == LEGACY_PREVIEW_ID or _was_erased(store, claimed):
        return LinkOwner(Opens.OUTDATED)
    return LinkOwner(Opens.PERSON, subscriber)


def _verifies(store: Store, purpose: str, token: str, address: str) -> bool:
    try:
        store.signer.verify(purpose, token, address=address)
    except TokenError:
        return False
    return True


def _was_erased(store: Store, subscriber_id: int) -> bool:
    """Whether someone with this id was erased: the id may have been handed out again since."""
    events = subscriber_events.c
    query = select(events.id).where(events.subscriber_id == subscriber_id, events.kind == "erased").limit(1)
    with store.read() as conn:
        return conn.execute(query).first() is not None
