"""What the scheduler decided about each issue, once: ``started`` (with its campaign) or ``missed``.

The unique key on ``issue_slug`` makes the decision the commitment point: the instance whose INSERT
succeeds is the one that acts, and a restart never decides again. A ``started`` row is written *before*
its campaign is created, so a crash in between leaves a decision without a campaign, which the next
tick completes (creating a campaign is idempotent by its own unique key); never a second campaign.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.errors import StoreError
from pipeline.store.engine import Store
from pipeline.store.statuses import CampaignStatus
from pipeline.store.tables import campaigns, schedule_decisions

UNFINISHED = (CampaignStatus.SCHEDULED, CampaignStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class Decision:
    issue_slug: str
    due_at: dt.datetime
    decision: str
    campaign_id: int | None
    decided_at: dt.datetime
    detail: str | None


_COLUMNS = (
    schedule_decisions.c.issue_slug,
    schedule_decisions.c.due_at,
    schedule_decisions.c.decision,
    schedule_decisions.c.campaign_id,
    schedule_decisions.c.decided_at,
    schedule_decisions.c.detail,
)


def all_decisions(store: Store) -> dict[str, Decision]:
    with store.read() as conn:
        rows = conn.execute(select(*_COLUMNS).order_by(schedule_decisions.c.due_at)).all()
    return {row.issue_slug: Decision(*row) for row in rows}


def decide(
    store: Store, slug: str, due_at: dt.datetime, decision: str, now: dt.datetime, detail: str | None = None
) -> bool:
    """Record the decision; False if the issue was already decided (by us earlier, or by another)."""
    try:
        with store.write() as conn:
            conn.execute(
                insert(schedule_decisions).values(
                    issue_slug=slug, due_at=due_at, decision=decision, decided_at=now, detail=detail
                )
            )
    except StoreError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            return False
        raise
    return True


def link(store: Store, slug: str, campaign_id: int) -> None:
    with store.write() as conn:
        conn.execute(
            update(schedule_decisions)
            .where(schedule_decisions.c.issue_slug == slug)
            .values(campaign_id=campaign_id)
        )


def unfinished(store: Store) -> list[Decision]:
    """Issues the scheduler started whose campaign is missing or not finished (paused ones wait for the
    operator; cancelled ones are done), oldest first: what a tick resumes."""
    d = schedule_decisions.c
    with store.read() as conn:
        rows = conn.execute(
            select(*_COLUMNS)
            .select_from(schedule_decisions.outerjoin(campaigns, campaigns.c.id == d.campaign_id))
            .where(d.decision == "started", or_(d.campaign_id.is_(None), campaigns.c.status.in_(UNFINISHED)))
            .order_by(d.due_at, d.issue_slug)
        ).all()
    return [Decision(*row) for row in rows]
