"""The welcome series: which step is due for whom, and each step's standing campaign.

A step (``issues/welcome/NN-slug.yaml``, ``after: 3d``) is due for a reader ``after`` their joining
(``audience.enrollment``), and goes out through the same ledger, checks and transports as an issue:
each tick adds the readers whose moment has come to the step's campaign (one ``INSERT … SELECT``;
the ledger's unique (campaign, subscriber) key makes it once per person), then the campaign runs.
Like an issue, a step is sent at most ``schedule.catch_up_hours`` late (at least ``MIN_WINDOW``): a
reader whose moment passed while the scheduler was down, or who joined before the step existed, is
not sent it days or months late by surprise; ``newsletter welcome`` counts them as missed.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Exists, Select, Subquery, and_, case, exists, func, select
from sqlalchemy.engine import Connection

from pipeline.audience.enrollment import in_series
from pipeline.content.folder import ChangedFiles
from pipeline.content.issue import WELCOME_DIR, load_issue
from pipeline.dispatch import campaigns, ledger
from pipeline.dispatch.plan import checked_issue
from pipeline.errors import ContentError
from pipeline.render.links import Links
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import CampaignStatus, DeliveryStatus
from pipeline.store.tables import deliveries, subscribers, welcome_enrollments

MIN_WINDOW = dt.timedelta(hours=1)
"""The least time a step stays sendable after a reader's moment, whatever ``catch_up_hours`` says."""
PEOPLE_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Step:
    """One file of the welcome series: when it goes out, or why it cannot be read."""

    path: Path
    slug: str
    after: dt.timedelta | None
    problem: str | None = None


class Series:
    """The series' files, each read again only when it changes (size and mtime): the scheduler asks
    every tick."""

    def __init__(self, settings: Settings) -> None:
        self.files = ChangedFiles(settings.path(settings.newsletter.issues_dir) / WELCOME_DIR, _step)

    def steps(self) -> list[Step]:
        """The steps in the order they go out (by ``after``; unreadable ones last)."""
        return sorted(self.files.read(), key=_in_order)


def _step(path: Path) -> Step:
    slug = f"{WELCOME_DIR}/{path.stem}"
    try:
        return Step(path, slug, load_issue(path).issue.after)
    except ContentError as exc:
        return Step(path, slug, None, str(exc).splitlines()[0] if str(exc) else "cannot be read")


def _in_order(step: Step) -> tuple[bool, dt.timedelta, str]:
    return (step.after is None, step.after or dt.timedelta(0), step.slug)


def window(settings: Settings) -> dt.timedelta:
    """How late a step may still go to a reader: ``schedule.catch_up_hours``, at least ``MIN_WINDOW``."""
    return max(dt.timedelta(hours=settings.schedule.catch_up_hours), MIN_WINDOW)


def _has_row(campaign_id: int) -> Exists:
    """The reader (``subscribers``, correlated) has a row in the campaign: they had, or are queued for, it."""
    d = deliveries.c
    return exists().where(d.campaign_id == campaign_id, d.subscriber_id == subscribers.c.id)


def _waiting(campaign_id: int | None) -> Select[tuple[int, str, str | None, str | None]]:
    """``SELECT id, email, name, timezone`` of the readers in the series who have no row in a step's
    campaign (``campaign_id``; all of them before it exists)."""
    s = subscribers.c
    query = in_series().with_only_columns(s.id, s.email, s.name, s.timezone)
    return query.where(~_has_row(campaign_id)) if campaign_id is not None else query


def _joined(*, after: dt.datetime | None = None, by: dt.datetime | None = None) -> ColumnElement[bool]:
    """The reader joined the series after ``after`` and by ``by``, written so both engines start from
    that range of the enrolled_at index: SQLite, given only the range, walks every active subscriber
    by the status index instead; ``id IN (the enrollments of that time)`` turns it round."""
    e = welcome_enrollments.c
    bounds = [e.enrolled_at > after] if after is not None else []
    bounds += [e.enrolled_at <= by] if by is not None else []
    # The range itself too: PostgreSQL then scans that range of the index instead of every enrollment.
    return and_(*bounds, subscribers.c.id.in_(select(e.subscriber_id).where(*bounds)))


def due(
    after: dt.timedelta, late: dt.timedelta, now: dt.datetime, campaign_id: int | None
) -> Select[tuple[int, str, str | None, str | None]]:
    """The readers waiting for a step (``_waiting``) whose moment, ``after`` their joining, has come
    by ``now``, at most ``late`` ago."""
    return _waiting(campaign_id).where(_joined(after=now - after - late, by=now - after))


def count_due(store: Store, step: Step, settings: Settings, now: dt.datetime, campaign_id: int | None) -> int:
    """How many readers the next tick would add to ``step``'s campaign."""
    if step.after is None:
        return 0
    query = due(step.after, window(settings), now, campaign_id).subquery()
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(query)).scalar_one())


def queue(
    store: Store, settings: Settings, links: Links, step: Step, now: dt.datetime
) -> campaigns.Cohort | None:
    """Add the readers due for ``step`` to its campaign (made when first due), after checking and
    rendering the file as a send does (``ContentError`` when it has errors: nobody is added). None
    when nobody is due, and the file is then not even rendered."""
    existing = campaigns.welcome_campaigns(store).get(step.slug)
    if existing is not None and existing.status == CampaignStatus.CANCELLED:
        return None  # the operator stopped this step
    if step.after is None or not count_due(store, step, settings, now, existing.id if existing else None):
        return None
    _, rendered = checked_issue(step.path, settings, links)
    after, late = step.after, window(settings)
    return campaigns.standing_campaign(
        store,
        rendered,
        settings.delivery.transport,
        lambda campaign_id: due(after, late, now, campaign_id).subquery(),
    )


# -- what `newsletter welcome` shows ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepState:
    step: Step | None
    """None: the campaign's file is gone (it adds nobody more)."""
    slug: str
    campaign: campaigns.Campaign | None
    counts: Counter[str]
    due_now: int
    """Readers the next tick adds."""
    upcoming: int
    """Readers in the series whose moment for this step is still ahead."""
    missed: int
    """Readers in the series whose moment passed more than the window ago without the step."""
    next_at: dt.datetime | None
    """The earliest moment this step is (or was, if due now) due for a reader still waiting for it."""


@dataclass(frozen=True, slots=True)
class Reader:
    subscriber_id: int
    email: str
    enrolled_at: dt.datetime
    left: bool
    """Unsubscribed, bounced or complained since joining (or not active now): out of the series."""
    at_step: str | None
    """The last step they have a row for (sent, or in doubt…), None before the first."""
    next_step: str | None
    next_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Overview:
    now: dt.datetime
    window: dt.timedelta
    steps: list[StepState]
    joined: int
    """Everyone who ever joined the series."""
    at_step: Counter[str | None]
    """How many readers still in the series are at each step (their latest row; None: before the first)."""
    readers: list[Reader]
    """The latest to join, newest first."""
    next_due: tuple[dt.datetime, str] | None
    """The next moment a step falls due for someone still in the series, and that step."""

    @property
    def in_doubt(self) -> int:
        return sum(state.counts[DeliveryStatus.IN_DOUBT] for state in self.steps)


def overview(store: Store, settings: Settings, now: dt.datetime, *, people: int = PEOPLE_SHOWN) -> Overview:
    """The series as it stands: each step with its ledger and who is due, who is at which step, and
    when the next step falls due."""
    files = Series(settings).steps()
    standing = campaigns.welcome_campaigns(store)
    late = window(settings)
    by_slug = {step.slug: step for step in files}
    slugs = [step.slug for step in files] + sorted(set(standing) - set(by_slug))
    with store.read() as conn:
        states = [_state(conn, by_slug.get(slug), slug, standing.get(slug), now, late) for slug in slugs]
        position = _position(standing, slugs)
        joined = int(conn.execute(select(func.count()).select_from(welcome_enrollments)).scalar_one())
        at_step = _at_step(conn, position, slugs)
        readers = _readers(conn, position, slugs, states, now, late, people)
    upcoming = [(moment, state.slug) for state in states if (moment := state.next_at) is not None]
    return Overview(now, late, states, joined, at_step, readers, min(upcoming, default=None))


def _count(conn: Connection, query: Select[Any]) -> int:
    return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


def _state(
    conn: Connection,
    step: Step | None,
    slug: str,
    campaign: campaigns.Campaign | None,
    now: dt.datetime,
    late: dt.timedelta,
) -> StepState:
    counts = ledger.status_counts(conn, campaign.id) if campaign else Counter[str]()
    if step is None or step.after is None:
        return StepState(step, slug, campaign, counts, 0, 0, 0, None)
    campaign_id = campaign.id if campaign else None
    waiting = _waiting(campaign_id)
    not_missed = waiting.where(_joined(after=now - step.after - late))
    first = conn.execute(
        not_missed.with_only_columns(func.min(welcome_enrollments.c.enrolled_at))
    ).scalar_one()
    return StepState(
        step,
        slug,
        campaign,
        counts,
        due_now=_count(conn, due(step.after, late, now, campaign_id)),
        upcoming=_count(conn, waiting.where(_joined(after=now - step.after))),
        missed=_count(conn, waiting.where(_joined(by=now - step.after - late))),
        next_at=first + step.after if first is not None else None,
    )


def _position(standing: dict[str, campaigns.Campaign], slugs: list[str]) -> Subquery | None:
    """(subscriber_id, pos): each reader's furthest step with a row, as its index in ``slugs``."""
    if not standing:
        return None
    d = deliveries.c
    index = {standing[slug].id: n for n, slug in enumerate(slugs) if slug in standing}
    return (
        select(d.subscriber_id, func.max(case(index, value=d.campaign_id)).label("pos"))
        .where(d.campaign_id.in_(list(index)))
        .group_by(d.subscriber_id)
        .subquery()
    )


def _at_step(conn: Connection, position: Subquery | None, slugs: list[str]) -> Counter[str | None]:
    members = in_series().with_only_columns(subscribers.c.id).subquery()
    if position is None:
        return Counter({None: _count(conn, select(members.c.id))})
    query = (
        select(position.c.pos, func.count())
        .select_from(members.outerjoin(position, position.c.subscriber_id == members.c.id))
        .group_by(position.c.pos)
    )
    return Counter({(None if pos is None else slugs[pos]): int(n) for pos, n in conn.execute(query)})


def _readers(
    conn: Connection,
    position: Subquery | None,
    slugs: list[str],
    states: list[StepState],
    now: dt.datetime,
    late: dt.timedelta,
    people: int,
) -> list[Reader]:
    """The ``people`` latest to join, each with their step and the next one due for them."""
    s, e = subscribers.c, welcome_enrollments.c
    query = select(e.subscriber_id, s.email, e.enrolled_at).select_from(
        welcome_enrollments.join(subscribers, s.id == e.subscriber_id)
    )
    if position is not None:
        query = query.add_columns(position.c.pos).outerjoin(
            position, position.c.subscriber_id == e.subscriber_id
        )
    rows = conn.execute(query.order_by(e.enrolled_at.desc(), e.subscriber_id.desc()).limit(people)).all()
    ids = [row.subscriber_id for row in rows]
    staying = set(conn.execute(in_series().with_only_columns(s.id).where(s.id.in_(ids))).scalars())
    timed = [
        (n, state.slug, state.step.after)
        for n, state in enumerate(states)
        if state.step and state.step.after is not None
    ]
    readers = []
    for row in rows:
        pos = row.pos if position is not None else None
        stays = row.subscriber_id in staying
        ahead = [
            (slug, row.enrolled_at + after)
            for n, slug, after in timed
            if (pos is None or n > pos) and row.enrolled_at + after + late > now
        ]
        next_step, next_at = ahead[0] if ahead and stays else (None, None)
        at_step = None if pos is None else slugs[pos]
        readers.append(
            Reader(row.subscriber_id, row.email, row.enrolled_at, not stays, at_step, next_step, next_at)
        )
    return readers
