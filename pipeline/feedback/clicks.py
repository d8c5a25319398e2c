"""Clicks on our own redirects (``pipeline.web.clicks``) → the store, beside SendGrid's events.

A click is kept only if its token was signed for that campaign's links and for the address the person
has now: a forged token, one from another campaign, or one of a person since erased (whose id SQLite
may give someone else) counts nothing. Kept clicks go through ``store_events`` like the webhook's, as
``delivery_events`` of kind ``click`` with the link's URL, so the report counts one person once
however many times, and by whichever tracker, they clicked.

A click's event key is the campaign, person, link and second: a browser or scanner that fetches the
same link twice at once records one click, while a reader's later click is a second (a count the
report shows beside the unique one).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import select

from pipeline.errors import TokenError
from pipeline.feedback.events import ProviderEvent, store_events
from pipeline.render.links import click_purpose
from pipeline.store.engine import Store
from pipeline.store.tables import subscribers

ACTOR = "redirect"
KIND = "click"


class Click(NamedTuple):
    """One request to a tracked link, as the redirect saw it (the token unchecked)."""

    campaign_id: int
    token: str
    link: int
    """The link's place in the campaign's list."""
    url: str
    at: dt.datetime


def record_clicks(store: Store, clicks: Sequence[Click], *, now: dt.datetime) -> int:
    """Store the clicks whose tokens verify, in one transaction; how many were new."""
    claimed = {click: _claimed_id(store, click.token) for click in clicks}
    addresses = _addresses(store, {sid for sid in claimed.values() if sid is not None})
    events = [
        _event(click, sid)
        for click, sid in claimed.items()
        if sid in addresses and _signed_for(store, click, addresses[sid])
    ]
    return store_events(store, events, now=now, actor=ACTOR).stored if events else 0


def _claimed_id(store: Store, token: str) -> int | None:
    try:
        return store.signer.claimed_id(token)
    except TokenError:
        return None


def _addresses(store: Store, subscriber_ids: Iterable[int]) -> dict[int, str]:
    wanted = sorted(subscriber_ids)
    if not wanted:
        return {}
    s = subscribers.c
    with store.read() as conn:
        rows = conn.execute(select(s.id, s.email).where(s.id.in_(wanted))).all()
    return {sid: email for sid, email in rows}


def _signed_for(store: Store, click: Click, address: str) -> bool:
    try:
        store.signer.verify(click_purpose(click.campaign_id), click.token, address=address)
    except TokenError:
        return False
    return True


def _event(click: Click, subscriber_id: int) -> ProviderEvent:
    second = int(click.at.timestamp())
    key = f"redirect:{click.campaign_id}:{subscriber_id}:{click.link}:{second}"
    return ProviderEvent(
        kind=KIND,
        sg_event_id=key,
        campaign_id=click.campaign_id,
        subscriber_id=subscriber_id,
        delivery_id=None,
        email=None,
        url=click.url[:2000],
        reason=None,
        occurred_at=click.at,
        status=None,
    )
