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

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import func, select

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
    d, e = deliveries.c, delivery_events.c
    with store.read() as conn:
        sent = conn.execute(
            select(func.count()).where(d.campaign_id == campaign_id, d.status == DeliveryStatus.SENT)
        ).scalar_one()
        counted = conn.execute(
            select(e.kind, func.count())
            .where(e.campaign_id == campaign_id, e.kind.in_(BOUNCE_KINDS + COMPLAINT_KINDS))
            .group_by(e.kind)
        )
        kinds: dict[str, int] = {kind: int(n) for kind, n in counted}
    bounces = sum(kinds.get(kind, 0) for kind in BOUNCE_KINDS)
    complaints = sum(kinds.get(kind, 0) for kind in COMPLAINT_KINDS)
    return Health(campaign_id, int(sent), bounces, complaints)


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


def _running_health(store: Store, campaign_id: int) -> Health | None:
    """The health of a running campaign; None for one that is not running (nothing to pause)."""
    if campaigns.get_campaign(store, campaign_id).status != CampaignStatus.RUNNING:
        return None
    return measure(store, campaign_id)


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
    """``enforce`` for the campaigns of each webhook post, without counting the ledger of a campaign
    whose verdict the post cannot have changed.

    A campaign found healthy with enough sent to judge (``health_min_sent``) can only become unhealthy
    through new bounces or complaints: each post that brings it one judges it again. Other changes
    reach it at most ``fresh_seconds`` late (bounces that came by the mailbox while it was paused and
    then resumed): an older verdict is never trusted. A campaign too young to judge, unhealthy or not
    running is judged at every post, as before.
    """

    def __init__(
        self, limits: WebSettings, *, fresh_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits, self.fresh_seconds, self.clock = limits, fresh_seconds, clock
        self._healthy: dict[int, float] = {}
        """Campaigns judged healthy with enough sent, and when."""
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
            health = _running_health(store, campaign_id)
            reason = None if health is None else verdict(health, self.limits)
            with self._lock:
                if health is not None and reason is None and health.sent >= self.limits.health_min_sent:
                    self._healthy[campaign_id] = self.clock()
                else:
                    self._healthy.pop(campaign_id, None)
            if reason is not None and _pause(store, campaign_id, reason) is not None:
                paused.append((campaign_id, reason))
        return paused

    def _fresh(self, campaign_id: int) -> bool:
        with self._lock:
            judged = self._healthy.get(campaign_id)
        return judged is not None and self.clock() - judged < self.fresh_seconds
