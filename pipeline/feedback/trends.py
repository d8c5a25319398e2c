"""Across issues: the click rate of every campaign, and the list's joins and departures week by week.

Each campaign's rate is unique clickers per message delivered, or sent when the campaign has no
delivery events (``reports.base_of``), so campaigns sent with and without the webhook sit side by side,
each on its own base. Weeks are UTC weeks starting on Monday, counted from ``subscriber_events``,
the consent log every status change writes:

    joins          became active from anything else (added or imported active, confirmed, resubscribed)
    unsubscribes   became unsubscribed from another status (an import of someone already gone is no
                   unsubscribe that week)
    bounces        became bounced from another status; complaints likewise
    active         active subscribers at the end of the week: every move into ``active`` minus every
                   move out of it (erasure included) since the log began

The log is grouped by day in the database (a few rows per day, however large the list) and days are
summed into weeks here.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Date, cast, func, select

from pipeline.feedback.reports import CLICK, DELIVERED, Base, base_of, rate
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import CampaignKind, DeliveryStatus, SubscriberStatus
from pipeline.store.tables import campaigns, deliveries, delivery_events, subscriber_events

WEEK = dt.timedelta(days=7)
_LEAVING = {
    SubscriberStatus.UNSUBSCRIBED: "unsubscribes",
    SubscriberStatus.BOUNCED: "bounces",
    SubscriberStatus.COMPLAINED: "complaints",
}
"""Statuses a person leaves the list for, and the count of each week they go to."""


@dataclass(frozen=True, slots=True)
class IssueRate:
    """One campaign's clicks beside what it reached."""

    campaign_id: int
    issue_slug: str
    subject: str
    started_at: dt.datetime | None
    sent: int
    delivered: int
    clickers: int

    @property
    def base(self) -> Base:
        return base_of(self.delivered)

    @property
    def reached(self) -> int:
        return self.delivered if self.base is Base.DELIVERED else self.sent

    @property
    def click_rate(self) -> float | None:
        return rate(self.clickers, self.reached)


@dataclass(frozen=True, slots=True)
class Week:
    start: dt.date
    """The Monday the week starts on (UTC)."""
    joins: int
    unsubscribes: int
    bounces: int
    complaints: int
    active: int
    """Active subscribers when the week ended."""


@dataclass(frozen=True, slots=True)
class Trends:
    issues: list[IssueRate]
    """Every campaign that sent anything, oldest first."""
    weeks: list[Week]
    """From the week of the first status change to the week of ``now``, none left out."""


def issue_rates(store: Store) -> list[IssueRate]:
    """Every issue's campaign with a message sent, oldest first, in three queries whatever their number
    (welcome steps are no issues: each stands open for months and would crowd the chart)."""
    c, d, e = campaigns.c, deliveries.c, delivery_events.c
    with store.read() as conn:
        sent = {
            campaign_id: int(n)
            for campaign_id, n in conn.execute(
                select(d.campaign_id, func.count())
                .where(d.status == DeliveryStatus.SENT)
                .group_by(d.campaign_id)
            )
        }
        reported = conn.execute(
            select(e.campaign_id, e.kind, func.count(), func.count(e.subscriber_id.distinct()))
            .where(e.kind.in_((DELIVERED, CLICK)))
            .group_by(e.campaign_id, e.kind)
        )
        delivered, clickers = Counter[int](), Counter[int]()
        for campaign_id, kind, total, unique in reported:
            if kind == DELIVERED:
                delivered[campaign_id] = int(total)
            else:
                clickers[campaign_id] = int(unique)
        rows = conn.execute(
            select(c.id, c.issue_slug, c.subject, c.started_at)
            .where(c.kind == CampaignKind.ISSUE)
            .order_by(c.id)
        ).all()
    return [
        IssueRate(
            row.id,
            row.issue_slug,
            row.subject,
            row.started_at,
            sent[row.id],
            delivered[row.id],
            clickers[row.id],
        )
        for row in rows
        if row.id in sent
    ]


def _utc_day(store: Store, column: ColumnElement[dt.datetime]) -> ColumnElement[object]:
    """The UTC calendar day of a stored time (SQLite keeps UTC text; PostgreSQL a timestamptz, whose
    day depends on the session's time zone unless converted)."""
    if store.dialect == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def _monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def audience_weeks(store: Store, *, now: dt.datetime | None = None) -> list[Week]:
    """Joins, unsubscribes, bounces, complaints and the active count for every week of the log."""
    ev = subscriber_events.c
    day = _utc_day(store, ev.at).label("day")
    query = (
        select(day, ev.from_status, ev.to_status, func.count())
        .where(ev.from_status.is_distinct_from(ev.to_status))
        .group_by(day, ev.from_status, ev.to_status)
    )
    moves: dict[dt.date, Counter[str]] = {}
    with store.read() as conn:
        for when, before, after, n in conn.execute(query):
            week = _monday(when if isinstance(when, dt.date) else dt.date.fromisoformat(str(when)))
            counts = moves.setdefault(week, Counter())
            if after == SubscriberStatus.ACTIVE:
                counts["joins"] += n
            if before is not None and after in _LEAVING:
                counts[_LEAVING[after]] += n
            counts["active"] += n * ((after == SubscriberStatus.ACTIVE) - (before == SubscriberStatus.ACTIVE))
    if not moves:
        return []
    weeks, active = [], 0
    week, last = min(moves), max(max(moves), _monday((now or utcnow()).date()))
    while week <= last:
        counts = moves.get(week, Counter())
        active += counts["active"]
        weeks.append(
            Week(
                week, counts["joins"], counts["unsubscribes"], counts["bounces"], counts["complaints"], active
            )
        )
        week += WEEK
    return weeks


def trends(store: Store, *, now: dt.datetime | None = None) -> Trends:
    """What the report shows across issues."""
    return Trends(issue_rates(store), audience_weeks(store, now=now))
