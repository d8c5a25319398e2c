"""Campaigns: one issue sent to one audience, frozen into the ledger when it starts.

Status moves ``scheduled → running ⇄ paused → finished``, or to ``cancelled`` before it finishes.
A campaign keeps the issue as rendered when it started, so a resumed campaign sends every remaining
recipient the same content, even if the YAML file was edited since.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from pipeline.audience.selection import segment_select
from pipeline.dispatch.ledger import status_counts
from pipeline.errors import DispatchError, StoreError
from pipeline.render.renderer import RenderedIssue, SplitTemplate
from pipeline.store.engine import Store, utcnow
from pipeline.store.tables import campaigns, deliveries

ACTIVE = ("scheduled", "running")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pause": ("scheduled", "running"),
    "resume": ("paused",),
    "cancel": ("scheduled", "running", "paused"),
}


@dataclass(frozen=True, slots=True)
class Campaign:
    id: int
    issue_slug: str
    segments: tuple[str, ...]
    subject: str
    status: str
    status_reason: str | None
    transport: str
    content_hash: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    send_after: dt.datetime | None

    @classmethod
    def from_row(cls, row: RowMapping) -> Campaign:
        return cls(
            id=row["id"],
            issue_slug=row["issue_slug"],
            segments=tuple(row["segments"].split(",")),
            subject=row["subject"],
            status=row["status"],
            status_reason=row["status_reason"],
            transport=row["transport"],
            content_hash=row["content_hash"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            send_after=row["send_after"],
        )


@dataclass(frozen=True, slots=True)
class CampaignReport:
    campaign: Campaign
    counts: Counter[str]
    errors: list[tuple[str, str, int]]
    """(status, reason, how many) for failed, skipped and in-doubt rows, most common first."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_SUMMARY = [c for c in campaigns.c if c.name not in {"html", "text"}]


def segments_key(segments: Iterable[str]) -> str:
    return ",".join(sorted(set(segments)))


def content_hash(rendered: RenderedIssue) -> str:
    digest = hashlib.sha256()
    for part in (rendered.subject, rendered.preheader, *rendered.html.chunks, *rendered.text.chunks):
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()


def find_campaign(store: Store, slug: str, segments: Iterable[str]) -> Campaign | None:
    with store.read() as conn:
        row = (
            conn.execute(
                select(*_SUMMARY).where(
                    campaigns.c.issue_slug == slug, campaigns.c.segments == segments_key(segments)
                )
            )
            .mappings()
            .first()
        )
    return Campaign.from_row(row) if row else None


def _get(conn: Connection, campaign_id: int) -> Campaign:
    row = conn.execute(select(*_SUMMARY).where(campaigns.c.id == campaign_id)).mappings().first()
    if row is None:
        raise DispatchError(f"campaign {campaign_id}: no such campaign (see `newsletter campaigns`)")
    return Campaign.from_row(row)


def get_campaign(store: Store, campaign_id: int) -> Campaign:
    with store.read() as conn:
        return _get(conn, campaign_id)


def list_campaigns(store: Store) -> list[tuple[Campaign, Counter[str]]]:
    with store.read() as conn:
        rows = conn.execute(select(*_SUMMARY).order_by(campaigns.c.id.desc())).mappings().all()
        return [(Campaign.from_row(row), status_counts(conn, row["id"])) for row in rows]


def load_rendered(store: Store, campaign_id: int) -> RenderedIssue:
    """The issue exactly as rendered when the campaign started."""
    with store.read() as conn:
        row = conn.execute(
            select(
                campaigns.c.issue_slug,
                campaigns.c.subject,
                campaigns.c.preheader,
                campaigns.c.html,
                campaigns.c.text,
            ).where(campaigns.c.id == campaign_id)
        ).first()
    if row is None:
        raise DispatchError(f"campaign {campaign_id}: no such campaign")
    return RenderedIssue(
        row.issue_slug,
        row.subject,
        row.preheader,
        SplitTemplate.parse(row.html),
        SplitTemplate.parse(row.text),
    )


def create_campaign(
    store: Store,
    rendered: RenderedIssue,
    segments: Sequence[str],
    transport: str,
    *,
    status: str = "running",
    send_after: dt.datetime | None = None,
    prepare: Callable[[Connection, int], object] | None = None,
) -> tuple[Campaign, bool]:
    """The campaign for (issue, segments): created with its audience frozen, or the existing one.

    Returns ``(campaign, created)``. Creating it and freezing its audience (one ledger row per
    recipient, by ``INSERT … SELECT``) is one transaction: a crash leaves either both or neither.
    ``prepare(conn, campaign_id)`` runs in that transaction too (per-recipient send times).
    """
    key = segments_key(segments)
    audience = segment_select(store, segments).subquery()
    now = utcnow()
    try:
        with store.write() as conn:
            campaign_id = conn.execute(
                insert(campaigns)
                .values(
                    issue_slug=rendered.slug,
                    segments=key,
                    subject=rendered.subject,
                    preheader=rendered.preheader,
                    html=rendered.html.with_tags(_placeholder),
                    text=rendered.text.with_tags(_placeholder),
                    content_hash=content_hash(rendered),
                    transport=transport,
                    status=status,
                    send_after=send_after,
                    created_at=now,
                    started_at=now if status == "running" else None,
                )
                .returning(campaigns.c.id)
            ).scalar_one()
            frozen = select(
                literal(campaign_id),
                audience.c.id,
                audience.c.email,
                audience.c.name,
                audience.c.timezone,
                literal("queued"),
            )
            conn.execute(
                insert(deliveries).from_select(
                    ["campaign_id", "subscriber_id", "email", "name", "timezone", "status"], frozen
                )
            )
            if prepare is not None:
                prepare(conn, campaign_id)
            return _get(conn, campaign_id), True
    except StoreError as exc:
        if not isinstance(exc.__cause__, IntegrityError):
            raise
    existing = find_campaign(store, rendered.slug, segments)
    if existing is None:  # pragma: no cover - the unique row vanished between two statements
        raise DispatchError(f"campaign for {rendered.slug} could not be created or found")
    return existing, False


def _placeholder(name: str) -> str:
    return f"[[nl:{name}]]"


def change_status(store: Store, campaign_id: int, action: str, reason: str | None = None) -> Campaign:
    """pause, resume or cancel; cancelling marks every still-queued row ``cancelled`` (the ledger says why)."""
    target = {"pause": "paused", "resume": "running", "cancel": "cancelled"}[action]
    with store.write() as conn:
        campaign = _get(conn, campaign_id)
        if campaign.status not in TRANSITIONS[action]:
            raise DispatchError(f"campaign {campaign_id} is {campaign.status}; cannot {action} it")
        values: dict[str, object] = {"status": target, "status_reason": reason}
        if target == "running" and campaign.started_at is None:
            values["started_at"] = utcnow()
        conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(**values))
        if action == "cancel":
            conn.execute(
                update(deliveries)
                .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == "queued")
                .values(status="cancelled", error=reason or "campaign cancelled")
            )
        return _get(conn, campaign_id)


def start(store: Store, campaign_id: int) -> Campaign:
    """A scheduled campaign becomes running (its time has come); other states are left as they are."""
    with store.write() as conn:
        conn.execute(
            update(campaigns)
            .where(campaigns.c.id == campaign_id, campaigns.c.status == "scheduled")
            .values(status="running", started_at=utcnow())
        )
        return _get(conn, campaign_id)


def finish_if_done(store: Store, campaign_id: int) -> Campaign:
    """Mark a running campaign finished once no row is queued or sending."""
    with store.write() as conn:
        counts = status_counts(conn, campaign_id)
        campaign = _get(conn, campaign_id)
        if campaign.status == "running" and not counts["queued"] and not counts["sending"]:
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(status="finished", finished_at=utcnow())
            )
            campaign = _get(conn, campaign_id)
        return campaign


def report(store: Store, campaign_id: int) -> CampaignReport:
    d = deliveries.c
    with store.read() as conn:
        campaign = _get(conn, campaign_id)
        counts = status_counts(conn, campaign_id)
        errors = conn.execute(
            select(d.status, d.error, func.count())
            .where(d.campaign_id == campaign_id, d.status.in_(("failed", "skipped", "in_doubt")))
            .group_by(d.status, d.error)
            .order_by(func.count().desc())
        ).all()
    return CampaignReport(campaign, counts, [(s, e or "", int(n)) for s, e, n in errors])


def resolve_in_doubt(store: Store, campaign_id: int, *, resend: bool) -> int:
    """The operator's decision on in-doubt rows: queue them again, or record them as sent."""
    with store.write() as conn:
        campaign = _get(conn, campaign_id)
        values = (
            {"status": "queued", "run_id": None, "claimed_at": None, "error": None}
            if resend
            else {"status": "sent", "error": "marked sent by the operator (outcome unknown)"}
        )
        changed = (
            conn.execute(
                update(deliveries)
                .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == "in_doubt")
                .values(**values)
            ).rowcount
            or 0
        )
        if resend and changed and campaign.status == "finished":
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(status="running", finished_at=None)
            )
    return changed
