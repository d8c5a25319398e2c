"""What became of a campaign: the ledger's sends beside what SendGrid reported, per segment, and top links.

Segment rows judge membership by each segment's rule *now* (tags may have changed since the send),
over every status, so people who left since still count where they were. Unsubscribes are the
webhook's (tied to the campaign) plus the unsubscribe links used after this campaign reached a person
and before the next one did: the link carries no campaign, so the issue they got last is credited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, distinct, exists, func, select, true
from sqlalchemy.orm import aliased

from pipeline.audience.segments import Segment, resolve
from pipeline.dispatch import campaigns
from pipeline.errors import AudienceError
from pipeline.store.engine import Store
from pipeline.store.statuses import DeliveryStatus, SubscriberStatus
from pipeline.store.tables import deliveries, delivery_events, subscriber_events, subscribers

UNSUBSCRIBE_KINDS = ("unsubscribe", "group_unsubscribe")
ALL = "all"


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


@dataclass(frozen=True, slots=True)
class LinkStats:
    url: str
    clicks: int
    unique: int


@dataclass(frozen=True, slots=True)
class CampaignStats:
    campaign: campaigns.Campaign
    rows: list[SegmentStats]
    """One row per segment of the campaign, then the whole campaign (segment ``all``)."""
    links: list[LinkStats]
    missing_segments: list[str]
    """Segments the campaign went to that segments.toml no longer defines (no row for them)."""


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
        delivered=kinds.get("delivered", none).total,
        bounced=kinds.get("bounce", none).total,
        complained=kinds.get("spamreport", none).total,
        unsubscribed=len(left),
        opened=kinds.get("open", none),
        clicked=kinds.get("click", none),
    )


def _top_links(store: Store, campaign_id: int, top: int) -> list[LinkStats]:
    e = delivery_events.c
    clicks = func.count()
    query = (
        select(e.url, clicks, func.count(distinct(e.subscriber_id)))
        .where(e.campaign_id == campaign_id, e.kind == "click", e.url.is_not(None))
        .group_by(e.url)
        .order_by(clicks.desc(), e.url)
        .limit(top)
    )
    with store.read() as conn:
        return [LinkStats(str(url), int(n), int(u)) for url, n, u in conn.execute(query)]


def _segments(store: Store, names: Sequence[str]) -> tuple[list[Segment], list[str]]:
    found, missing = [], []
    for name in names:
        try:
            found.extend(resolve(store, [name]))
        except AudienceError:
            missing.append(name)
    return found, missing


def campaign_stats(store: Store, campaign_id: int, *, top: int = 10) -> CampaignStats:
    """The report of ``newsletter report``: per-segment rows, the whole campaign, the ``top`` links."""
    campaign = campaigns.get_campaign(store, campaign_id)
    segments, missing = _segments(store, campaign.segments)
    rows = [_segment_stats(store, campaign_id, s.name, s) for s in segments]
    rows.append(_segment_stats(store, campaign_id, ALL, None))
    return CampaignStats(campaign, rows, _top_links(store, campaign_id, top), missing)
