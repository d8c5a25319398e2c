"""What the scheduler has done and will do, gathered for `newsletter status` (read-only).

Everything here is read from the issue files and the store, so it answers the same whether a
scheduler is running or not: the next issue and its moment, the last one started, issues due or
missed, who holds the lease, and the campaigns that are in progress, waiting for later time zones
or holding recipients in doubt.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select

from pipeline.dispatch import campaigns
from pipeline.schedule.decisions import Decision, all_decisions
from pipeline.schedule.lease import LeaseState, read_lease
from pipeline.schedule.localtime import clock_time, local_moment, schedule_zone, zone
from pipeline.schedule.timetable import Slot, Timetable
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import CampaignStatus, DeliveryStatus
from pipeline.store.tables import deliveries

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
IN_PROGRESS = (CampaignStatus.SCHEDULED, CampaignStatus.RUNNING, CampaignStatus.PAUSED)


@dataclass(frozen=True, slots=True)
class CampaignState:
    campaign: campaigns.Campaign
    counts: Counter[str]
    waiting: list[tuple[dt.datetime, int]]
    """Queued rows not yet due, by the time they go out (per-recipient time zones)."""
    handed_ahead: int
    """Rows a provider accepted for delivery at a later ``send_at`` (SendGrid)."""


@dataclass(frozen=True, slots=True)
class Agenda:
    now: dt.datetime
    zone: str
    lease: LeaseState | None
    next_slot: Slot | None
    next_gap: dt.date | None
    """The next ``schedule.weekday`` with no issue file dated on it (write one!), within 8 weeks."""
    last_started: Decision | None
    due: list[Slot]
    """Due and undecided, within the catch-up window: the next tick sends them."""
    overdue: list[Slot]
    """Due and undecided, past the catch-up window: the next tick records them missed."""
    missed: list[Decision]
    campaigns: list[CampaignState]
    """Campaigns not finished, finished with recipients in doubt, or with deliveries still ahead."""


def agenda(store: Store, settings: Settings, now: dt.datetime) -> Agenda:
    slots = Timetable(settings).slots()
    decided = all_decisions(store)
    undecided = [s for s in slots if s.slug not in decided]
    catch_up = dt.timedelta(hours=settings.schedule.catch_up_hours)
    started = [d for d in decided.values() if d.decision == "started"]
    return Agenda(
        now=now,
        zone=schedule_zone(settings),
        lease=read_lease(store),
        next_slot=next((s for s in undecided if s.due_at > now), None),
        next_gap=_next_gap(settings, {s.day for s in slots}, now),
        last_started=max(started, key=lambda d: d.due_at, default=None),
        due=[s for s in undecided if s.due_at <= now and now - s.due_at <= catch_up],
        overdue=[s for s in undecided if now - s.due_at > catch_up],
        missed=[d for d in decided.values() if d.decision == "missed"],
        campaigns=_campaign_states(store, now),
    )


def _campaign_states(store: Store, now: dt.datetime) -> list[CampaignState]:
    d = deliveries.c
    with store.read() as conn:
        ahead: dict[int, int] = dict(
            conn.execute(
                select(d.campaign_id, func.count())
                .where(d.status == DeliveryStatus.SENT, d.send_at > now)
                .group_by(d.campaign_id)
            ).all()
        )
    states = []
    for campaign, counts in campaigns.list_campaigns(store):
        busy = (
            campaign.status in IN_PROGRESS
            or counts[DeliveryStatus.IN_DOUBT]
            or counts[DeliveryStatus.SENDING]
        )
        if not busy and not ahead.get(campaign.id):
            continue
        with store.read() as conn:
            waiting = conn.execute(
                select(d.send_at, func.count())
                .where(d.campaign_id == campaign.id, d.status == DeliveryStatus.QUEUED, d.send_at > now)
                .group_by(d.send_at)
                .order_by(d.send_at)
            ).all()
        handed = ahead.get(campaign.id, 0)
        states.append(CampaignState(campaign, counts, [(at, int(n)) for at, n in waiting], handed))
    return states


def _next_gap(settings: Settings, days: set[dt.date], now: dt.datetime) -> dt.date | None:
    tz = zone(schedule_zone(settings))
    at = clock_time(settings.schedule.time)
    today = now.astimezone(tz).date()
    offset = (WEEKDAYS.index(settings.schedule.weekday) - today.weekday()) % 7
    for week in range(8):
        day = today + dt.timedelta(days=offset + 7 * week)
        if day not in days and local_moment(day, at, tz) > now:
            return day
    return None
