"""Double opt-in: a signup makes an ``unconfirmed`` subscriber and mails a link that makes them ``active``.

Nothing here tells the caller whether an address was known: the signup form answers the same way for
a new, a pending, an active and a suppressed address, checking only the address's syntax
(``signup_address``) before it answers and leaving ``request_signup`` to a job after the answer. At
most one confirmation goes to a subscriber per hour (the ``confirmations`` table; the claim is one
transaction, so two racing posts send one); a confirmation that could not be sent gives it back.
Someone who unsubscribed or bounced may come back this way (their own click on the link); a
complaint is final. A first confirmation enrolls the person in the welcome series (``enrollment``). An unauthenticated form never changes a known subscriber's name or topics.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pipeline.audience.enrollment import enroll
from pipeline.audience.fields import Address, parse_email
from pipeline.audience.subscribers import (
    Subscriber,
    add_subscriber,
    find_subscriber,
    is_suppressed,
    set_status,
)
from pipeline.errors import AudienceError, StoreError
from pipeline.store.engine import Store
from pipeline.store.statuses import SubscriberStatus
from pipeline.store.tables import confirmations

CONFIRM = "confirm"
"""Token purpose of confirmation links (they expire after ``web.confirm_hours``)."""
SIGNUP_ACTOR = "signup-form"
CONFIRM_ACTOR = "confirm-link"
RESEND_AFTER = dt.timedelta(hours=1)
MAY_CONFIRM = (SubscriberStatus.UNCONFIRMED, SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED)
"""Whom a confirmation may go to: the pending, and people who left and ask to come back."""


def signup_address(email: str) -> Address:
    """The address a signup gives, checked for syntax only (it says nothing about who is on the list);
    ``AudienceError`` if it is not an address."""
    try:
        return parse_email(email)
    except ValueError as exc:
        raise AudienceError(str(exc)) from None


def request_signup(
    store: Store, address: Address, *, name: str | None, topics: list[str], now: dt.datetime
) -> int | None:
    """Record a signup; returns the subscriber to send a confirmation to now, or None (nothing to send)."""
    with store.read() as conn:
        if is_suppressed(conn, store.address_hash(address.key)):
            return None
    subscriber = find_subscriber(store, address.key)
    if subscriber is None:
        try:
            subscriber = add_subscriber(
                store,
                address.email,
                name=name,
                tags=topics,
                status=SubscriberStatus.UNCONFIRMED,
                actor=SIGNUP_ACTOR,
            )
        except AudienceError:  # a twin post added it a moment ago
            subscriber = find_subscriber(store, address.key)
    if subscriber is None or subscriber.status not in MAY_CONFIRM:
        return None
    return subscriber.id if claim_confirmation(store, subscriber.id, now) else None


def claim_confirmation(store: Store, subscriber_id: int, now: dt.datetime) -> bool:
    """Take the right to send this subscriber a confirmation now: False if one went within the hour."""
    c = confirmations.c
    try:
        with store.write() as conn:
            query = select(c.sent_at).where(c.subscriber_id == subscriber_id).with_for_update()
            last = conn.execute(query).scalar_one_or_none()
            if last is None:
                conn.execute(insert(confirmations).values(subscriber_id=subscriber_id, sent_at=now))
                return True
            if now - last < RESEND_AFTER:
                return False
            conn.execute(update(confirmations).where(c.subscriber_id == subscriber_id).values(sent_at=now))
            return True
    except StoreError as exc:
        if isinstance(exc.__cause__, IntegrityError):  # a concurrent post claimed it first
            return False
        raise


def release_confirmation(store: Store, subscriber_id: int) -> None:
    """Give the claim back after a failed send, so the person can ask again at once."""
    with store.write() as conn:
        conn.execute(delete(confirmations).where(confirmations.c.subscriber_id == subscriber_id))


def standing(subscriber: Subscriber | None) -> str:
    """What following a confirmation link would do: ``pending`` (confirming makes them active),
    ``already`` (active), ``refused`` (complained) or ``unknown`` (erased)."""
    if subscriber is None:
        return "unknown"
    if subscriber.status == SubscriberStatus.ACTIVE:
        return "already"
    return "pending" if subscriber.status in MAY_CONFIRM else "refused"


def _join_series(conn: Connection, subscriber_id: int, now: dt.datetime) -> None:
    enroll(conn, [subscriber_id], now=now, source=CONFIRM_ACTOR)


def confirm(store: Store, subscriber_id: int) -> str:
    """The person confirmed: ``confirmed``, or the ``standing`` that kept it from changing anything.

    A first confirmation (from ``unconfirmed``) also enrolls them in the welcome series, in the same
    transaction; someone coming back after leaving is not enrolled again, nor is their series restarted.
    """
    subscriber = find_subscriber(store, subscriber_id)
    state = standing(subscriber)
    if subscriber is None or state != "pending":
        return state
    first = subscriber.status == SubscriberStatus.UNCONFIRMED
    try:
        set_status(
            store,
            subscriber_id,
            SubscriberStatus.ACTIVE,
            actor=CONFIRM_ACTOR,
            resubscribe=not first,
            then=_join_series if first else None,
        )
    except AudienceError:
        return "refused"  # it changed meanwhile (a complaint came in)
    return "confirmed"
