"""Sender reputation guard: a running campaign whose bounce or complaint rate passes its limit pauses itself.

Mailbox providers throttle or block senders whose mail bounces or is reported as spam; a list gone
stale can burn a domain's reputation in one send. The rates are judged as SendGrid's events arrive
(``webhook_*`` settings), only once ``health_min_sent`` messages went out, so three early bounces
cannot stop a campaign. The reason is kept in ``campaigns.status_reason`` and shown by
``newsletter campaigns show``; the operator resumes with ``newsletter campaigns resume``.

Judging counts the campaign's sent messages, which for a big campaign costs more than storing a
post of events; ``Watch`` spares the webhook that count where it cannot change the verdict.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from pipeline.dispatch import campaigns
from pipeline.errors import DispatchError
from pipeline.settings import WebSettings
from pipeline.store.engine import Store
from pipeline.store.statuses import CampaignStatus, DeliveryStatus
from pipeline.store.tables import deliveries, delivery_events

BOUNCE_KINDS = ("bounce",)
COMPLAINT_KINDS = ("spamreport",)


@dataclass(frozen=True, slots=True)
class Health:
    campaign_id: int
    sent: int
    bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0


def percent(rate: float) -> str:
    """0.02 → "2 %", 0.001 → "0.1 %", 0.0315 → "3.15 %": no noise digits in a reason line."""
    return f"{rate * 100:.2f}".rstrip("0").rstrip(".") + " %"


def measure(store: Store, campaign_id: int) -> Health:
    """Messages sent (ledger) and hard bounces and spam reports reported for them (webhook)."""
    with store.read() as conn:
        return _harm(conn, campaign_id, _sent(conn, campaign_id))


def _sent(conn: Connection, campaign_id: int) -> int:
    """The campaign's messages sent: one index entry read per message."""
    d = deliveries.c
    query = select(func.count()).where(d.campaign_id == campaign_id, d.status == DeliveryStatus.SENT)
    return int(conn.execute(query).scalar_one())


def _harm(conn: Connection, campaign_id: int, sent: int) -> Health:
    """The campaign's hard bounces and spam reports beside ``sent``: a few index entries per harmful
    event (where counting ``sent`` reads one per message)."""
    e = delivery_events.c
    counted = conn.execute(
        select(e.kind, func.count())
        .where(e.campaign_id == campaign_id, e.kind.in_(BOUNCE_KINDS + COMPLAINT_KINDS))
        .group_by(e.kind)
    )
    kinds: dict[str, int] = {kind: int(n) for kind, n in counted}
    bounces = sum(kinds.get(kind, 0) for kind in BOUNCE_KINDS)
    complaints = sum(kinds.get(kind, 0) for kind in COMPLAINT_KINDS)
    return Health(campaign_id, sent, bounces, complaints)


def verdict(health: Health, limits: WebSettings) -> str | None:
    """Why the campaign must pause, or None while it is healthy (or too young to judge)."""
    if health.sent < limits.health_min_sent:
        return None
    if health.complaint_rate > limits.complaint_rate_limit:
        return (
            f"paused automatically: complaint rate {percent(health.complaint_rate)} "
            f"({health.complaints} of {health.sent:,} sent) passed complaint_rate_limit "
            f"{percent(limits.complaint_rate_limit)}"
        )
    if health.bounce_rate > limits.bounce_rate_limit:
        return (
            f"paused automatically: bounce rate {percent(health.bounce_rate)} "
            f"({health.bounces} of {health.sent:,} sent) passed bounce_rate_limit "
            f"{percent(limits.bounce_rate_limit)}"
        )
    return None


def _running(store: Store, campaign_id: int) -> bool:
    """Whether the campaign is running (only a running campaign has anything to pause)."""
    return campaigns.get_campaign(store, campaign_id).status == CampaignStatus.RUNNING


def _running_health(store: Store, campaign_id: int) -> Health | None:
    """The health of a running campaign; None for one that is not running (nothing to pause)."""
    return measure(store, campaign_id) if _running(store, campaign_id) else None


def _pause(store: Store, campaign_id: int, reason: str) -> str | None:
    try:
        campaigns.change_status(store, campaign_id, "pause", reason)
    except DispatchError:
        return None  # it stopped running meanwhile (finished, paused or cancelled by someone else)
    return reason


def enforce(store: Store, campaign_id: int, limits: WebSettings) -> str | None:
    """Pause the campaign if it is running and unhealthy; returns the reason when it paused it now."""
    health = _running_health(store, campaign_id)
    reason = None if health is None else verdict(health, limits)
    return None if reason is None else _pause(store, campaign_id, reason)


HARMFUL_KINDS = frozenset(BOUNCE_KINDS + COMPLAINT_KINDS)
"""The events that raise a campaign's rates; every other event leaves them as they were or lowers
them (more messages sent)."""


class Watch:
    """``enforce`` for the campaigns of each webhook post, without counting the ledger where the count
    cannot change the verdict.

    A campaign found healthy with enough sent to judge (``health_min_sent``) can only become unhealthy
    through new bounces or complaints: a post without any leaves it be, for ``fresh_seconds`` at most
    (bounces that came by the mailbox while it was paused and then resumed reach it that late), and an
    older verdict is never trusted. A post that brings one judges it again, on the sent count last
    seen: a campaign's sent rows only ever grow (nothing moves a row out of ``sent``, and campaigns are
    never deleted), so if the rates on that count pass no limit, the rates on today's larger count do
    not either. Only otherwise is the ledger counted again. A campaign of a million costs a count of a
    million (tens of ms) only each time its bounces or complaints have grown by the margin to their
    limit since the last count, not at nearly every post of its delivered events.
    """

    def __init__(
        self, limits: WebSettings, *, fresh_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits, self.fresh_seconds, self.clock = limits, fresh_seconds, clock
        self._healthy: dict[int, float] = {}
        """Campaigns judged healthy with enough sent, and when."""
        self._sent: dict[int, int] = {}
        """The sent count of each campaign when last counted: a floor under its count now."""
        self._lock = threading.Lock()

    def enforce(self, store: Store, reported: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """Judge the campaigns of the new events ``reported`` (campaign, kind); the ones paused now, and why."""
        harmed: dict[int, bool] = {}
        for campaign_id, kind in reported:
            harmed[campaign_id] = harmed.get(campaign_id, False) or kind in HARMFUL_KINDS
        paused = []
        for campaign_id in sorted(harmed):
            if not harmed[campaign_id] and self._fresh(campaign_id):
                continue
            health = self._health(store, campaign_id)
            reason = None if health is None else verdict(health, self.limits)
            with self._lock:
                if health is not None and reason is None and health.sent >= self.limits.health_min_sent:
                    self._healthy[campaign_id] = self.clock()
                else:
                    self._healthy.pop(campaign_id, None)
            if reason is not None and _pause(store, campaign_id, reason) is not None:
                paused.append((campaign_id, reason))
        return paused

    def _health(self, store: Store, campaign_id: int) -> Health | None:
        """The running campaign's health (None when it is not running): on its last sent count when that
        count already proves it healthy, else on the ledger counted now."""
        if not _running(store, campaign_id):
            return None
        with self._lock:
            floor = self._sent.get(campaign_id, 0)
        with store.read() as conn:
            health = _harm(conn, campaign_id, floor)
            if floor >= self.limits.health_min_sent and verdict(health, self.limits) is None:
                return health
            health = dataclasses.replace(health, sent=_sent(conn, campaign_id))
        with self._lock:
            self._sent[campaign_id] = max(health.sent, self._sent.get(campaign_id, 0))
        return health

    def _fresh(self, campaign_id: int) -> bool:
        with self._lock:
            judged = self._healthy.get(campaign_id)
        return judged is not None and self.clock() - judged < self.fresh_seconds
