"""What became of a campaign: the ledger's sends beside what SendGrid reported, per segment, and top links.

Segment rows judge membership by each segment's rule *now* (tags may have changed since the send),
over every status, so people who left since still count where they were. Unsubscribes are the
webhook's (tied to the campaign) plus the unsubscribe links used after this campaign reached a person
and before the next one did: the link carries no campaign, so the issue they got last is credited.

Rates are of messages *delivered* (SendGrid's ``delivered`` events) when the campaign has any, else
of messages *sent* (SMTP, the outbox, or SendGrid without its webhook): ``CampaignStats.base`` says
which. Clicks count people: a click is a ``delivery_events`` row of kind ``click`` with its ``url``,
whoever recorded it (SendGrid's click tracking or our own redirect), and a person who clicks twice,
or whose click both recorded, is one unique click. Opens are counted too, but machines open mail:
Apple Mail Privacy Protection fetches every image of every message it receives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import ColumnElement, and_, distinct, exists, func, select, true
from sqlalchemy.orm import aliased

from pipeline.audience.segments import Segment, resolve
from pipeline.dispatch import campaigns, subjects
from pipeline.errors import AudienceError
from pipeline.store.engine import Store
from pipeline.store.statuses import DeliveryStatus, SubscriberStatus
from pipeline.store.tables import deliveries, delivery_events, subscriber_events, subscribers

UNSUBSCRIBE_KINDS = ("unsubscribe", "group_unsubscribe")
ALL = "all"
CLICK = "click"
DELIVERED = "delivered"
FIRST_HOURS = 72
"""The hours after a campaign started whose first clicks ``CampaignStats.hourly`` counts."""


class Base(StrEnum):
    """What a rate is a share of: delivered messages, or (without delivery events) messages sent."""

    DELIVERED = "delivered"
    SENT = "sent"


def base_of(delivered: int) -> Base:
    """Delivered messages as the base when any delivery was reported, sent ones otherwise."""
    return Base.DELIVERED if delivered else Base.SENT


def rate(part: int, whole: int) -> float | None:
    """``part / whole``, or None when there is nothing to divide by (no rate, rather than 0 %)."""
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class Count:
    total: int
    unique: int
    """Distinct subscribers (events of unknown subscribers count in ``total`` only)."""


@dataclass(frozen=True, slots=True)
class SegmentStats:
    segment: str
    recipients: int
    sent: int
    delivered: int
    bounced: int
    complained: int
    unsubscribed: int
    opened: Count
    clicked: Count

    def reached(self, base: Base) -> int:
        """The messages rates are a share of: delivered or sent."""
        return self.delivered if base is Base.DELIVERED else self.sent

    def click_rate(self, base: Base) -> float | None:
        """Unique clickers per message reached."""
        return rate(self.clicked.unique, self.reached(base))


@dataclass(frozen=True, slots=True)
class LinkStats:
    url: str
    clicks: int
    unique: int
    """Distinct people who clicked the link."""


@dataclass(frozen=True, slots=True)
class CampaignStats:
    campaign: campaigns.Campaign
    rows: list[SegmentStats]
    """One row per segment of the campaign, then the whole campaign (segment ``all``)."""
    links: list[LinkStats]
    missing_segments: list[str]
    """Segments the campaign went to that segments.toml no longer defines (no row for them)."""
    base: Base
    hourly: tuple[int, ...]
    """People whose first click came in each hour after the campaign started (``FIRST_HOURS`` of
    them; all zero before it started)."""
    test: subjects.Verdict | None = None
    """The campaign's subject test as it stands; None without one."""

    @property
    def whole(self) -> SegmentStats:
        """The row of the whole campaign."""
        return self.rows[-1]

    def link_rate(self, link: LinkStats) -> float | None:
        """A link's unique clickers per message reached in the whole campaign."""
        return rate(link.unique, self.whole.reached(self.base))


def _any_status(segment: Segment) -> Segment:
    return Segment(segment.name, segment.rule.model_copy(update={"status": list(SubscriberStatus)}))


def _within(column: ColumnElement[int], segment: Segment | None) -> ColumnElement[bool]:
    if segment is None:
        return true()
    return column.in_(select(subscribers.c.id).where(_any_status(segment).where()))


def _link_unsubscribes(campaign_id: int, segment: Segment | None) -> ColumnElement[bool]:
    """Recipients who left through a link after this campaign reached them, before the next one did."""
    d, later, ev = deliveries.c, aliased(deliveries), subscriber_events.c
    next_one = (
        exists()
        .where(
            later.c.subscriber_id == d.subscriber_id,
            later.c.status == DeliveryStatus.SENT,
            later.c.claimed_at > d.claimed_at,
            later.c.claimed_at <= ev.at,
        )
        .correlate(deliveries, subscriber_events)  # nested two deep: say which row it is about
    )
    return exists().where(
        ev.subscriber_id == d.subscriber_id,
        ev.to_status == SubscriberStatus.UNSUBSCRIBED,
        ev.at >= d.claimed_at,
        ~next_one,
    ) & and_(d.campaign_id == campaign_id, d.status == DeliveryStatus.SENT, _within(d.subscriber_id, segment))


def _segment_stats(store: Store, campaign_id: int, name: str, segment: Segment | None) -> SegmentStats:
    d, e = deliveries.c, delivery_events.c
    mine = and_(e.campaign_id == campaign_id, _within(e.subscriber_id, segment))
    with store.read() as conn:
        recipients, sent = conn.execute(
            select(func.count(), func.count().filter(d.status == DeliveryStatus.SENT)).where(
                d.campaign_id == campaign_id, _within(d.subscriber_id, segment)
            )
        ).one()
        kinds = {
            kind: Count(int(total), int(unique))
            for kind, total, unique in conn.execute(
                select(e.kind, func.count(), func.count(distinct(e.subscriber_id)))
                .where(mine)
                .group_by(e.kind)
            )
        }
        left = set(
            conn.scalars(
                select(e.subscriber_id).where(
                    mine, e.kind.in_(UNSUBSCRIBE_KINDS), e.subscriber_id.is_not(None)
                )
            )
        )
        left.update(conn.scalars(select(d.subscriber_id).where(_link_unsubscribes(campaign_id, segment))))
    none = Count(0, 0)
    return SegmentStats(
        segment=name,
        recipients=int(recipients),
        sent=int(sent),
        delivered=kinds.get(DELIVERED, none).total,
        bounced=kinds.get("bounce", none).total,
        complained=kinds.get("spamreport", none).total,
        unsubscribed=len(left),
        opened=kinds.get("open", none),
        clicked=kinds.get(CLICK, none),
    )


def _top_links(store: Store, campaign_id: int, top: int) -> list[LinkStats]:
    e = delivery_events.c
    clicks = func.count()
    query = (
        select(e.url, clicks, func.count(distinct(e.subscriber_id)))
        .where(e.campaign_id == campaign_id, e.kind == CLICK, e.url.is_not(None))
        .group_by(e.url)
        .order_by(clicks.desc(), e.url)
        .limit(top)
    )
    with store.read() as conn:
        return [LinkStats(str(url), int(n), int(u)) for url, n, u in conn.execute(query)]


def first_clicks_by_hour(store: Store, campaign_id: int, started_at: dt.datetime | None) -> tuple[int, ...]:
    """How many people clicked for the first time in each of the ``FIRST_HOURS`` hours after
    ``started_at``: one row per clicker is read (a small share of the recipients) and bucketed here,
    the same way on every engine."""
    hours = [0] * FIRST_HOURS
    if started_at is None:
        return tuple(hours)
    e = delivery_events.c
    query = (
        select(func.min(e.occurred_at))
        .where(e.campaign_id == campaign_id, e.kind == CLICK, e.subscriber_id.is_not(None))
        .group_by(e.subscriber_id)
    )
    with store.read() as conn:
        for first in conn.scalars(query):
            hour = int((first - started_at).total_seconds() // 3600)
            if 0 <= hour < FIRST_HOURS:
                hours[hour] += 1
    return tuple(hours)


def _segments(store: Store, names: Sequence[str]) -> tuple[list[Segment], list[str]]:
    found, missing = [], []
    for name in names:
        try:
            found.extend(resolve(store, [name]))
        except AudienceError:
            missing.append(name)
    return found, missing


def campaign_stats(store: Store, campaign_id: int, *, top: int = 10) -> CampaignStats:
    """The report of ``newsletter report``: per-segment rows, the whole campaign, the ``top`` links,
    first clicks per hour."""
    campaign = campaigns.get_campaign(store, campaign_id)
    segments, missing = _segments(store, campaign.segments)
    rows = [_segment_stats(store, campaign_id, s.name, s) for s in segments]
    rows.append(_segment_stats(store, campaign_id, ALL, None))
    return CampaignStats(
        campaign,
        rows,
        _top_links(store, campaign_id, top),
        missing,
        base_of(rows[-1].delivered),
        first_clicks_by_hour(store, campaign_id, campaign.started_at),
        subjects.verdict(store, campaign_id),
    )
