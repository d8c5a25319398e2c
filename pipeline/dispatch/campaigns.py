"""Campaigns: one issue sent to one audience, frozen into the ledger when it starts.

Status moves ``scheduled → running ⇄ paused → finished``, or to ``cancelled`` before it finishes.
A campaign keeps the issue as rendered when it started, so a resumed campaign sends every remaining
recipient the same content, even if the YAML file was edited since. This module owns the
``campaigns`` table; what happens to each recipient is the ledger's (``ledger``), called inside the
same transactions where a campaign's change moves its rows too (freeze, cancel, resolve).

A welcome step's campaign (``kind`` welcome) stands open instead: each tick adds the readers whose day
for the step has come (``standing_campaign``), and it runs again, finishing each time nobody is
left to send to. Its content follows the step file between those cohorts: an edit reaches the
readers added after it, never one already queued, and those who got the step keep what they got.
Such a campaign is no issue: the archive never lists it, and no issue's campaign counts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from pipeline.audience.selection import segment_select
from pipeline.content.issue import WELCOME_DIR
from pipeline.dispatch import ledger, subjects
from pipeline.errors import DispatchError, StoreError
from pipeline.render import clicks
from pipeline.render.renderer import RenderedIssue, SplitTemplate, placeholder
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import CampaignKind, CampaignStatus, DeliveryStatus
from pipeline.store.tables import campaigns

TRANSITIONS: dict[str, tuple[tuple[CampaignStatus, ...], CampaignStatus]] = {
    "pause": ((CampaignStatus.SCHEDULED, CampaignStatus.RUNNING), CampaignStatus.PAUSED),
    "resume": ((CampaignStatus.PAUSED,), CampaignStatus.RUNNING),
    "cancel": (
        (CampaignStatus.SCHEDULED, CampaignStatus.RUNNING, CampaignStatus.PAUSED),
        CampaignStatus.CANCELLED,
    ),
}
"""What the operator (or the health guard) may do to a campaign: from which states, to which."""
PUBLISHED = (CampaignStatus.RUNNING, CampaignStatus.PAUSED, CampaignStatus.FINISHED)
"""States of a campaign whose issue has gone out: the archive shows it."""


@dataclass(frozen=True, slots=True)
class Campaign:
    id: int
    issue_slug: str
    segments: tuple[str, ...]
    subject: str
    status: CampaignStatus
    status_reason: str | None
    transport: str
    content_hash: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    send_after: dt.datetime | None
    kind: CampaignKind = CampaignKind.ISSUE
    subjects: tuple[str, ...] = ()
    """The subjects it tests (``pipeline.dispatch.subjects``); empty without a test."""
    winner: int | None = None
    """The place in ``subjects`` of the one the rest get, once chosen."""

    @classmethod
    def from_row(cls, row: RowMapping) -> Campaign:
        return cls(
            id=row["id"],
            issue_slug=row["issue_slug"],
            segments=tuple(filter(None, row["segments"].split(","))),  # a welcome step names none
            subject=row["subject"],
            status=CampaignStatus(row["status"]),
            status_reason=row["status_reason"],
            transport=row["transport"],
            content_hash=row["content_hash"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            send_after=row["send_after"],
            kind=CampaignKind(row["kind"]),
            subjects=tuple(row["subjects"] or ()),
            winner=row["winner"],
        )


@dataclass(frozen=True, slots=True)
class CampaignReport:
    campaign: Campaign
    counts: Counter[str]
    errors: list[tuple[str, str, int]]
    """(status, reason, how many) for failed, skipped and in-doubt rows, most common first."""
    marked_sent: int = 0
    """Of the ``sent`` rows, those the operator recorded as sent without knowing (``--mark-sent``)."""
    settled: int = 0
    """Of the ``sent`` rows, those once in doubt whose fate was found out (outbox file, SendGrid event)."""

    @property
    def in_doubt(self) -> int:
        """Rows whose fate is unknown, those a dead run still holds included: the operator must decide."""
        return self.counts[DeliveryStatus.IN_DOUBT]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_SUMMARY = [c for c in campaigns.c if c.name not in {"html", "text", "web_html", "links"}]


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


def welcome_campaigns(store: Store) -> dict[str, Campaign]:
    """Every welcome step's campaign, by its slug (``welcome/NN-slug``)."""
    query = select(*_SUMMARY).where(campaigns.c.kind == CampaignKind.WELCOME).order_by(campaigns.c.id)
    with store.read() as conn:
        return {row["issue_slug"]: Campaign.from_row(row) for row in conn.execute(query).mappings()}


def _get(conn: Connection, campaign_id: int) -> Campaign:
    row = conn.execute(select(*_SUMMARY).where(campaigns.c.id == campaign_id)).mappings().first()
    if row is None:
        raise DispatchError(f"campaign {campaign_id}: no such campaign (see `newsletter campaigns`)")
    return Campaign.from_row(row)


def _same_issue(conn: Connection, slug: str, campaign_id: int) -> list[int]:
    query = select(campaigns.c.id).where(campaigns.c.issue_slug == slug, campaigns.c.id != campaign_id)
    return list(conn.execute(query).scalars())


def same_issue(store: Store, campaign: Campaign) -> list[int]:
    """The other campaigns of this campaign's issue: whoever one of them reached is skipped here."""
    with store.read() as conn:
        return _same_issue(conn, campaign.issue_slug, campaign.id)


def already_reached(store: Store, slug: str, segments: Sequence[str]) -> int:
    """How many of these segments' audience some campaign of this issue already reached (or may have)."""
    audience = segment_select(store, segments).subquery()
    with store.read() as conn:
        earlier = list(conn.execute(select(campaigns.c.id).where(campaigns.c.issue_slug == slug)).scalars())
        return ledger.count_reached(conn, audience, earlier) if earlier else 0


def get_campaign(store: Store, campaign_id: int) -> Campaign:
    with store.read() as conn:
        return _get(conn, campaign_id)


def list_campaigns(store: Store) -> list[tuple[Campaign, Counter[str]]]:
    with store.read() as conn:
        rows = conn.execute(select(*_SUMMARY).order_by(campaigns.c.id.desc())).mappings().all()
        return [(Campaign.from_row(row), ledger.status_counts(conn, row["id"])) for row in rows]


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


def load_links(store: Store, campaign_id: int) -> tuple[str, ...] | None:
    """The campaign's links in order (``pipeline.render.clicks``); None for a campaign made before
    they were kept, or no such campaign."""
    with store.read() as conn:
        links = conn.execute(select(campaigns.c.links).where(campaigns.c.id == campaign_id)).scalar()
    return None if links is None else tuple(links)


def create_campaign(
    store: Store,
    rendered: RenderedIssue,
    segments: Sequence[str],
    transport: str,
    *,
    status: CampaignStatus = CampaignStatus.RUNNING,
    send_after: dt.datetime | None = None,
    prepare: Callable[[Connection, int], object] | None = None,
    test: subjects.SubjectTest | None = None,
) -> tuple[Campaign, bool]:
    """The campaign for (issue, segments): created with its audience frozen, or the existing one.

    Returns ``(campaign, created)``. Creating it and freezing its audience (one ledger row per
    recipient, by ``INSERT … SELECT``) is one transaction: a crash leaves either both or neither.
    ``prepare(conn, campaign_id)`` runs in that transaction too (per-recipient send times), and so
    does the sampling of a subject ``test`` (which refuses, and so creates nothing, if too small).
    """
    if rendered.slug.startswith(f"{WELCOME_DIR}/"):
        raise DispatchError(
            f"{rendered.slug} is a welcome step: `newsletter run` sends it to each reader on their day"
        )
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
                    **_content(rendered),
                    transport=transport,
                    status=status,
                    send_after=send_after,
                    created_at=now,
                    started_at=now if status == CampaignStatus.RUNNING else None,
                )
                .returning(campaigns.c.id)
            ).scalar_one()
            ledger.freeze(conn, campaign_id, audience, _same_issue(conn, rendered.slug, campaign_id))
            if prepare is not None:
                prepare(conn, campaign_id)
            if test is not None:
                subjects.assign(conn, campaign_id, test, max(send_after or now, now))
            return _get(conn, campaign_id), True
    except StoreError as exc:
        if not isinstance(exc.__cause__, IntegrityError):
            raise
    existing = find_campaign(store, rendered.slug, segments)
    if existing is None:  # pragma: no cover - the unique row vanished between two statements
        raise DispatchError(f"campaign for {rendered.slug} could not be created or found")
    return existing, False


def _content(rendered: RenderedIssue, earlier_links: Sequence[str] = ()) -> dict[str, Any]:
    """The columns that keep the issue as rendered (what every copy is made of, its links after
    ``earlier_links``, and its hash)."""
    return {
        "links": clicks.targets(rendered, earlier_links),
        "subject": rendered.subject,
        "preheader": rendered.preheader,
        "html": rendered.html.with_tags(placeholder),
        "text": rendered.text.with_tags(placeholder),
        "web_html": rendered.web,
        "content_hash": content_hash(rendered),
    }


@dataclass(frozen=True, slots=True)
class Cohort:
    """What ``standing_campaign`` did: the campaign, how many readers it added, and whether it took
    the step file's new content first."""

    campaign: Campaign
    added: int
    content_changed: bool = False


def standing_campaign(
    store: Store, rendered: RenderedIssue, transport: str, cohort: Callable[[int], Subquery]
) -> Cohort:
    """Add to a welcome step's campaign (made now if it has none) the readers ``cohort(campaign id)``
    selects, in one transaction: they are queued, and a finished campaign runs again.

    When nothing is queued or in flight, the campaign first takes ``rendered`` if the step file was
    edited. A cancelled one takes nobody more: the operator stopped the step.
    """
    c = campaigns.c
    now = utcnow()
    try:
        with store.write() as conn:
            mine = (c.kind == CampaignKind.WELCOME, c.issue_slug == rendered.slug)
            row = conn.execute(select(*_SUMMARY).where(*mine).with_for_update()).mappings().first()
            if row is None:
                values = {"kind": CampaignKind.WELCOME, "status": CampaignStatus.RUNNING, "started_at": now}
                campaign_id = conn.execute(
                    insert(campaigns)
                    .values(issue_slug=rendered.slug, segments="", **_content(rendered), transport=transport)
                    .values(created_at=now, **values)
                    .returning(c.id)
                ).scalar_one()
                campaign = _get(conn, campaign_id)
            else:
                campaign = Campaign.from_row(row)
            if campaign.status == CampaignStatus.CANCELLED:
                return Cohort(campaign, 0)
            on_their_way = ledger.unfinished(ledger.status_counts(conn, campaign.id))
            changed = campaign.content_hash != content_hash(rendered) and not on_their_way
            if changed:
                earlier = conn.execute(select(c.links).where(c.id == campaign.id)).scalar() or ()
                content = _content(rendered, earlier)
                conn.execute(update(campaigns).where(c.id == campaign.id).values(**content))
            added = ledger.append(conn, campaign.id, cohort(campaign.id))
            if added and campaign.status == CampaignStatus.FINISHED:
                conn.execute(
                    update(campaigns)
                    .where(c.id == campaign.id)
                    .values(status=CampaignStatus.RUNNING, finished_at=None)
                )
            return Cohort(_get(conn, campaign.id), added, changed)
    except StoreError as exc:  # another instance made the campaign at the same moment: add to it
        if not isinstance(exc.__cause__, IntegrityError):
            raise
    return standing_campaign(store, rendered, transport, cohort)


def change_status(store: Store, campaign_id: int, action: str, reason: str | None = None) -> Campaign:
    """pause, resume or cancel; cancelling marks every still-queued row ``cancelled`` (the ledger says why)."""
    sources, target = TRANSITIONS[action]
    with store.write() as conn:
        campaign = _get(conn, campaign_id)
        if campaign.status not in sources:
            raise DispatchError(f"campaign {campaign_id} is {campaign.status}; cannot {action} it")
        values: dict[str, object] = {"status": target, "status_reason": reason}
        if target == CampaignStatus.RUNNING and campaign.started_at is None:
            values["started_at"] = utcnow()
        conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(**values))
        if target == CampaignStatus.CANCELLED:
            ledger.cancel_queued(conn, campaign_id, reason or "campaign cancelled")
        return _get(conn, campaign_id)


def start(store: Store, campaign_id: int) -> Campaign:
    """A scheduled campaign becomes running (its time has come); other states are left as they are."""
    with store.write() as conn:
        conn.execute(
            update(campaigns)
            .where(campaigns.c.id == campaign_id, campaigns.c.status == CampaignStatus.SCHEDULED)
            .values(status=CampaignStatus.RUNNING, started_at=utcnow())
        )
        return _get(conn, campaign_id)


def finish_if_done(store: Store, campaign_id: int) -> Campaign:
    """Mark a running campaign finished once no row is queued or sending."""
    with store.write() as conn:
        counts = ledger.status_counts(conn, campaign_id)
        campaign = _get(conn, campaign_id)
        if campaign.status == CampaignStatus.RUNNING and not ledger.unfinished(counts):
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(status=CampaignStatus.FINISHED, finished_at=utcnow())
            )
            campaign = _get(conn, campaign_id)
        return campaign


def report(store: Store, campaign_id: int) -> CampaignReport:
    with store.read() as conn:
        campaign = _get(conn, campaign_id)
        return CampaignReport(
            campaign,
            ledger.status_counts(conn, campaign_id),
            ledger.errors(conn, campaign_id),
            ledger.marked_sent(conn, campaign_id),
            ledger.settled(conn, campaign_id),
        )


def resolve_in_doubt(store: Store, campaign_id: int, *, resend: bool) -> int:
    """The operator's decision on in-doubt rows: queue them again, or record them as sent.

    Queued again, they make a finished campaign run once more, so the next send picks them up.
    """
    with store.write() as conn:
        campaign = _get(conn, campaign_id)
        changed = ledger.resolve_in_doubt(conn, campaign_id, resend=resend)
        if resend and changed and campaign.status == CampaignStatus.FINISHED:
            conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(status=CampaignStatus.RUNNING, finished_at=None)
            )
    return changed


@dataclass(frozen=True, slots=True)
class PublishedIssue:
    """An issue that has gone out, as the archive lists it (no one's personal data)."""

    slug: str
    subject: str
    preheader: str
    started_at: dt.datetime

    @property
    def day(self) -> dt.date:
        """The issue's date from its file name (YYYY-MM-DD-…), else the day it went out."""
        try:
            return dt.date.fromisoformat(self.slug[:10])
        except ValueError:
            return self.started_at.date()


def _first_published(*columns: ColumnElement[Any]) -> Select[Any]:
    """``columns`` of the campaigns whose issue has gone out, oldest first: an issue's archive entry
    is its first such campaign (a later one to another audience sent the same issue again). Welcome
    steps are no issues: they are never published."""
    c = campaigns.c
    published = (c.kind == CampaignKind.ISSUE, c.status.in_(PUBLISHED), c.started_at.is_not(None))
    return select(*columns).where(*published).order_by(c.id)


def published(store: Store) -> list[PublishedIssue]:
    """One entry per issue that has gone out (its first campaign), newest issue first."""
    c = campaigns.c
    query = _first_published(c.issue_slug, c.subject, c.preheader, c.started_at)
    entries: dict[str, PublishedIssue] = {}
    with store.read() as conn:
        for slug, subject, preheader, started_at in conn.execute(query):
            entries.setdefault(slug, PublishedIssue(slug, subject, preheader, started_at))
    return sorted(entries.values(), key=lambda e: (e.day, e.started_at), reverse=True)


def published_content(store: Store, slugs: Sequence[str]) -> dict[str, str]:
    """The web content each issue's first published campaign stored, by slug; an issue whose
    campaign predates it (revision 0007) or has not gone out is missing."""
    c = campaigns.c
    found: dict[str, str | None] = {}
    with store.read() as conn:
        for slug, web_html in conn.execute(
            _first_published(c.issue_slug, c.web_html).where(c.issue_slug.in_(slugs))
        ):
            found.setdefault(slug, web_html)
    return {slug: web_html for slug, web_html in found.items() if web_html is not None}


def published_html(store: Store, slug: str) -> str | None:
    """The stored email HTML of the issue's first published campaign, or None if it has not gone out."""
    with store.read() as conn:
        query = _first_published(campaigns.c.html).where(campaigns.c.issue_slug == slug).limit(1)
        return conn.execute(query).scalar_one_or_none()
