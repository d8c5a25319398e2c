"""The states a subscriber, a campaign and a ledger row can be in (and a campaign's kind): one ``StrEnum`` each.

Code compares with these members and the tables' ``CHECK`` constraints are written from them, so a
state added here is a state the database accepts (after a migration) and no other string is.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class SubscriberStatus(StrEnum):
    """Subscription states; only ``active`` people are ever sent a newsletter."""

    UNCONFIRMED = "unconfirmed"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


LEFT = frozenset({SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED})
"""States a person reached by leaving or failing; nothing automatic ever turns them back."""


class CampaignStatus(StrEnum):
    """``scheduled → running ⇄ paused → finished``, or ``cancelled`` before it finishes."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class CampaignKind(StrEnum):
    """What a campaign sends: a dated ``issue`` (the archive shows it), or a ``welcome`` step, which
    stands open and takes each reader on their own day."""

    ISSUE = "issue"
    WELCOME = "welcome"


class DeliveryStatus(StrEnum):
    """One recipient of one campaign: ``queued → sending → sent | failed | in_doubt``, or ``skipped``
    (no longer allowed when claimed) or ``cancelled`` (the campaign was)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    IN_DOUBT = "in_doubt"
    CANCELLED = "cancelled"


def one_of(column: str, states: Iterable[str]) -> str:
    """The SQL of a CHECK that ``column`` holds one of ``states``: ``status = 'a' OR status = 'b'``.

    Not ``status IN ('a', 'b')``, which says the same (NULL passes both): SQLite evaluates an ``IN``
    list in a CHECK by building a temporary table for it on every row it writes (4.5 µs a row inserted
    alone, 1.8 µs a row updated, at SQLite 3.40); compared one by one, it costs nothing measurable.
    Migration 0011 says more.
    """
    return " OR ".join(f"{column} = '{state}'" for state in states)
