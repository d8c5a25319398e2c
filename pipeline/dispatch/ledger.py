"""The per-recipient ledger, every write to ``deliveries``: freeze an audience (or append a cohort to a
welcome step's standing campaign), claim a batch, record what the transport said, find rows in
doubt, cancel and resolve.

A campaign's audience is frozen into one ``queued`` row per recipient when it starts. A batch is claimed in one short transaction: queued rows are taken in id order (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so several workers never take the same row), anyone who unsubscribed, bounced,
complained or was suppressed since the campaign started is marked ``skipped`` with the reason, and the
rest are marked ``sending`` with the run's id *before* the transport is called. Outcomes are written
after. Rows a dead run left ``sending`` become ``in_doubt``: reported, and resolved by the operator.
Functions that take a ``Connection`` run inside the caller's transaction (a campaign's change and
its rows' change commit together); those that take the ``Store`` open their own.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    Boolean,
    Select,
    String,
    Subquery,
    Update,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from pipeline import liveness
from pipeline.errors import StoreError
from pipeline.store.engine import Store, in_chunks, utcnow
from pipeline.store.statuses import CampaignStatus, DeliveryStatus, SubscriberStatus
from pipeline.store.tables import campaigns, deliveries, dispatch_runs, subscribers, suppressions
from pipeline.transports.base import Outcome

STALE_AFTER = dt.timedelta(minutes=5)
"""A run that has not beaten its heart for this long is taken for dead (on another machine)."""


ClaimedRow = tuple[int, int, str, str | None, str | None, int | None]
"""(delivery id, subscriber id, email, name, time zone, subject variant) of a claimed row: a plain
tuple, as the database hands it over and as it crosses to a worker process (pickling a plain tuple is
ten times cheaper)."""


@dataclass(frozen=True, slots=True)
class Claim:
    rows: list[ClaimedRow]
    skipped: int
    send_at: dt.datetime | None = None
    """When claimed ``ahead``: the delivery time every row of the claim shares (None: now)."""
    campaign_status: str | None = CampaignStatus.RUNNING
    """The campaign's status as the claim saw it: rows are claimed only while it is ``running`` (None:
    the campaign is gone)."""


UNFINISHED = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)
"""Rows still on their way: a campaign with none left is finished."""
REACHED = (DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.IN_DOUBT)
"""Rows whose recipient has, or may have, the issue: nobody gets it again from another campaign."""
ALREADY_SENT = "already sent this issue in campaign #"
"""The reason on a row skipped because another campaign of the same issue reached that person."""
MARKED_SENT = "marked sent by the operator (outcome unknown)"
"""The note on a row the operator resolved as sent: it tells such rows from those a transport accepted."""
SETTLED = "in doubt, then "
"""The start of the note on a row in doubt whose fate was found out without the operator."""
NEEDS_A_LOOK = (DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.IN_DOUBT)
"""Rows whose reason a report lists."""


def freeze(conn: Connection, campaign_id: int, audience: Subquery, earlier: list[int]) -> None:
    """One row per member of ``audience`` (id, email, name, timezone), by ``INSERT … SELECT``: ``queued``,
    or ``skipped`` for whoever already had (or may have had) the issue in one of the ``earlier``
    campaigns of it."""
    columns = ["campaign_id", "subscriber_id", "email", "name", "timezone", "status", "error"]
    first = [literal(campaign_id), audience.c.id, audience.c.email, audience.c.name, audience.c.timezone]
    if not earlier:
        queued = select(*first, literal(DeliveryStatus.QUEUED.value), null())
        conn.execute(insert(deliveries).from_select(columns, queued))
        return
    had = _had_the_issue(earlier).subquery()
    status = case(
        (had.c.campaign_id.is_not(None), DeliveryStatus.SKIPPED.value), else_=DeliveryStatus.QUEUED.value
    )
    error = case(
        (had.c.campaign_id.is_not(None), ALREADY_SENT + cast(had.c.campaign_id, String)), else_=null()
    )
    frozen = select(*first, status, error).select_from(
        audience.outerjoin(had, had.c.subscriber_id == audience.c.id)
    )
    conn.execute(insert(deliveries).from_select(columns, frozen))


def append(conn: Connection, campaign_id: int, cohort: Subquery) -> int:
    """Add one ``queued`` row per member of ``cohort`` (id, email, name, timezone) to a campaign that
    stands open (a welcome step's, as its readers' days come), by ``INSERT … SELECT``; returns how
    many. The (campaign, subscriber) unique key refuses a second row for anyone, so ``cohort`` must
    leave out whoever has one: nobody is queued twice."""
    columns = ["campaign_id", "subscriber_id", "email", "name", "timezone", "status"]
    rows = select(
        literal(campaign_id), cohort.c.id, cohort.c.email, cohort.c.name, cohort.c.timezone,
        literal(DeliveryStatus.QUEUED.value),
    )  # fmt: skip
    added = conn.execute(insert(deliveries).from_select(columns, rows).returning(deliveries.c.id))
    return len(added.all())  # an INSERT … SELECT's rowcount is -1 through psycopg


def _had_the_issue(earlier: list[int]) -> Select[tuple[int, int]]:
    """(subscriber, the first of ``earlier`` campaigns that sent them the issue or may have)."""
    d = deliveries.c
    return (
        select(d.subscriber_id, func.min(d.campaign_id).label("campaign_id"))
        .where(d.campaign_id.in_(earlier), d.status.in_(REACHED))
        .group_by(d.subscriber_id)
    )


def count_reached(conn: Connection, audience: Subquery, earlier: list[int]) -> int:
    """How many members of ``audience`` one of the ``earlier`` campaigns reached (what `--dry-run` shows)."""
    had = _had_the_issue(earlier).subquery()
    query = select(func.count()).select_from(audience.join(had, had.c.subscriber_id == audience.c.id))
    return int(conn.execute(query).scalar_one())


def set_send_times(conn: Connection, campaign_id: int, moment_in: Callable[[str | None], dt.datetime]) -> int:
    """Give each row its recipient's delivery time, ``moment_in(time zone)``: one UPDATE per distinct
    zone. Returns how many zones there were."""
    d = deliveries.c
    names = conn.execute(select(d.timezone).where(d.campaign_id == campaign_id).distinct()).scalars().all()
    for name in names:
        same_zone = d.timezone.is_(None) if name is None else d.timezone == name
        conn.execute(
            update(deliveries).where(d.campaign_id == campaign_id, same_zone).values(send_at=moment_in(name))
        )
    return len(names)


def cancel_queued(conn: Connection, campaign_id: int, reason: str) -> None:
    """The campaign was cancelled: every row still queued never goes, and says why."""
    d = deliveries.c
    conn.execute(
        update(deliveries)
        .where(d.campaign_id == campaign_id, d.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.CANCELLED, error=reason)
    )


def resolve_in_doubt(conn: Connection, campaign_id: int, *, resend: bool) -> int:
    """The operator's decision on in-doubt rows: queue them again, or record them as sent."""
    values = (
        {"status": DeliveryStatus.QUEUED, "run_id": None, "claimed_at": None, "error": None}
        if resend
        else {"status": DeliveryStatus.SENT, "error": MARKED_SENT}
    )
    d = deliveries.c
    result = conn.execute(
        update(deliveries)
        .where(d.campaign_id == campaign_id, d.status == DeliveryStatus.IN_DOUBT)
        .values(**values)
    )
    return result.rowcount or 0


def abandon(store: Store, campaign_id: int, batch_id: str) -> int:
    """A batch whose sender was stopped mid-way: its rows still `sending` are in doubt now."""
    d = deliveries.c
    with store.write() as conn:
        result = conn.execute(
            update(deliveries)
            .where(d.campaign_id == campaign_id, d.batch_id == batch_id, d.status == DeliveryStatus.SENDING)
            .values(
                status=DeliveryStatus.IN_DOUBT,
                error="cut short when the stop outlasted delivery.stop_seconds",
            )
        )
        return result.rowcount or 0


def in_doubt_rows(store: Store, campaign_id: int) -> list[tuple[int, str]]:
    """(delivery id, address) of every row in doubt: what a transport is asked to settle."""
    d = deliveries.c
    query = select(d.id, d.email).where(d.campaign_id == campaign_id, d.status == DeliveryStatus.IN_DOUBT)
    with store.read() as conn:
        return [(row_id, email) for row_id, email in conn.execute(query.order_by(d.id))]


def settle(store: Store, campaign_id: int, outcomes: list[Outcome], how: str) -> int:
    """Rows in doubt whose fate became known (``how``): ``sent`` stays sent, ``unsent`` goes back to
    the queue. Only rows still in doubt change. Returns how many did."""
    d = deliveries.c
    values_by_status: dict[str, dict[str, Any]] = {
        "sent": {"status": DeliveryStatus.SENT, "error": SETTLED + how},
        "unsent": {"status": DeliveryStatus.QUEUED, "run_id": None, "claimed_at": None, "error": None},
    }
    changed = 0
    with store.write() as conn:
        for status, values in values_by_status.items():
            for chunk in in_chunks(o.delivery_id for o in outcomes if o.status == status):
                mine = [d.campaign_id == campaign_id, d.id.in_(chunk), d.status == DeliveryStatus.IN_DOUBT]
                changed += conn.execute(update(deliveries).where(*mine).values(**values)).rowcount or 0
    return changed


def settled(conn: Connection, campaign_id: int) -> int:
    """Rows once in doubt that were found out without the operator (outbox file, provider event)."""
    d = deliveries.c
    query = select(func.count()).where(
        d.campaign_id == campaign_id, d.status == DeliveryStatus.SENT, d.error.startswith(SETTLED)
    )
    return int(conn.execute(query).scalar_one())


def start_run(store: Store, campaign_id: int) -> str:
    """Register this process as a sender of the campaign; the id marks the rows it claims."""
    run_id = secrets.token_hex(8)
    now = utcnow()
    with store.write() as conn:
        conn.execute(
            dispatch_runs.insert().values(
                id=run_id,
                campaign_id=campaign_id,
                host=liveness.this_host(),
                pid=os.getpid(),
                started_at=now,
                heartbeat_at=now,
            )
        )
    return run_id


def end_run(store: Store, run_id: str) -> None:
    with store.write() as conn:
        conn.execute(update(dispatch_runs).where(dispatch_runs.c.id == run_id).values(ended_at=utcnow()))


def _alive(host: str, pid: int, heartbeat_at: dt.datetime, now: dt.datetime) -> bool:
    return now - heartbeat_at <= STALE_AFTER and not liveness.gone(host, pid)


def mark_in_doubt(store: Store, campaign_id: int) -> int:
    """Turn rows left ``sending`` by runs that are gone into ``in_doubt``; returns how many."""
    now = utcnow()
    with store.write() as conn:
        runs = conn.execute(
            select(
                dispatch_runs.c.id, dispatch_runs.c.host, dispatch_runs.c.pid, dispatch_runs.c.heartbeat_at
            ).where(dispatch_runs.c.campaign_id == campaign_id, dispatch_runs.c.ended_at.is_(None))
        ).all()
        dead = [run.id for run in runs if not _alive(run.host, run.pid, run.heartbeat_at, now)]
        if dead:
            conn.execute(update(dispatch_runs).where(dispatch_runs.c.id.in_(dead)).values(ended_at=now))
        ended = select(dispatch_runs.c.id).where(dispatch_runs.c.ended_at.is_not(None))
        result = conn.execute(
            update(deliveries)
            .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == DeliveryStatus.SENDING)
            .where(or_(deliveries.c.run_id.is_(None), deliveries.c.run_id.in_(ended)))
            .values(
                status=DeliveryStatus.IN_DOUBT,
                error="the sending process stopped before recording the outcome",
            )
        )
        return result.rowcount or 0


_BY_ID_RANGE = (deliveries.c.campaign_id + 0) == bindparam("campaign")
"""The campaign of rows an UPDATE finds by their id range: written so that no index can serve it, SQLite
walks the table from the first id to the last instead of the index on (campaign, status, id), which the
same UPDATE then moves its entries in (8 % less time per row updated)."""
_CAMPAIGN_STATUS = select(campaigns.c.status).where(campaigns.c.id == bindparam("campaign"))


class _ClaimSql(NamedTuple):
    """A claim's statements, built once per dialect and kind (``shared``: None takes every due row; for a
    provider that schedules delivery, True takes rows sharing one ``send_at``, False rows without one),
    so a claim pays for none of SQLAlchemy's statement building and hits its compiled cache."""

    first_due: Select[tuple[dt.datetime | None]]
    pick: Select[Any]
    """The rows to claim, in id order: as rows on PostgreSQL (locked), as one JSON array on SQLite."""
    not_allowed: Select[tuple[int, str | None, bool]]
    mark: Update
    heartbeat: Update


@functools.cache
def _claim_sql(postgres: bool, shared: bool | None) -> _ClaimSql:
    d, s = deliveries.c, subscribers.c
    due = or_(d.send_at.is_(None), d.send_at <= bindparam("due_by"))
    # A subject test's rest (variant -1) waits for its winner, even for a provider that schedules ahead.
    chosen = or_(d.variant.is_(None), d.variant >= 0, bindparam("rest", type_=Boolean))
    queued = [d.campaign_id == bindparam("campaign"), d.status == DeliveryStatus.QUEUED, due, chosen]
    first_due = select(d.send_at).where(*queued).order_by(d.id).limit(1)
    if shared is not None:
        queued.append(d.send_at == bindparam("b_send_at") if shared else d.send_at.is_(None))
    pick = (
        select(d.id, d.subscriber_id, d.email, d.name, d.timezone, d.variant)
        .where(*queued)
        .order_by(d.id)
        .limit(bindparam("size"))
    )
    # SQLite has one writer, so the picked rows are exactly the queued ones in [first, last]: a range is
    # far cheaper than a 1000-value IN list. PostgreSQL keeps the list of rows it locked.
    picked = (
        d.id.in_(bindparam("ids", expanding=True))
        if postgres
        else d.id.between(bindparam("first"), bindparam("last"))
    )
    mine = [*queued, picked]
    suppressed = exists().where(suppressions.c.address_hash == s.address_hash)
    not_allowed = (
        select(d.id, s.status, suppressed.label("suppressed"))
        .select_from(deliveries.outerjoin(subscribers, s.id == d.subscriber_id))
        .where(*mine, or_(s.id.is_(None), s.status != SubscriberStatus.ACTIVE, suppressed))
    )
    mark = (
        update(deliveries)
        .where(*(mine if postgres else [_BY_ID_RANGE, *mine[1:]]))
        .values(
            status=DeliveryStatus.SENDING,
            run_id=bindparam("run"),
            batch_id=bindparam("batch"),
            claimed_at=bindparam("now"),
        )
    )
    heartbeat = (
        update(dispatch_runs)
        .where(dispatch_runs.c.id == bindparam("run"))
        .values(heartbeat_at=bindparam("now"))
    )
    if postgres:
        pick = pick.with_for_update(skip_locked=True)
    else:
        # Python's sqlite3 lets go of the GIL for every row it steps to, and must win it back from the
        # courier threads each time: a thousand rows cost the send loop a thousand waits. One row that
        # holds them all (a JSON array, which orjson reads in a fraction of a millisecond) costs one.
        pick = select(func.json_group_array(func.json_array(*pick.subquery().c)))
    return _ClaimSql(first_due, pick, not_allowed, mark, heartbeat)


def claim(
    store: Store,
    campaign_id: int,
    run_id: str,
    size: int,
    now: dt.datetime | None = None,
    *,
    batch_id: str | None = None,
    ahead: dt.timedelta | None = None,
    earlier: list[int] | None = None,
    rest: bool = True,
) -> Claim:
    """Take up to ``size`` queued rows that are due; skip the ones no longer allowed; mark the rest sending.

    With ``ahead`` (a provider that schedules delivery itself), rows due up to that much later are
    taken too, and a claim holds only rows sharing one ``send_at``, so one request carries one time.
    Rows of people whom another campaign of the same issue (``earlier``) reached meanwhile are skipped.
    Without ``rest``, rows waiting for a subject test's winner are left (it is not known yet).
    The rows are read (and on PostgreSQL locked) once, then marked; nothing else can change them between.
    A campaign that is not running (paused, cancelled, finished) gets nothing claimed: its status is
    read in the claim's own transaction, so a pause that committed before it is always seen.
    """
    now = now or utcnow()
    params: dict[str, Any] = {
        "campaign": campaign_id,
        "due_by": now + (ahead or dt.timedelta(0)),
        "rest": rest,
    }
    send_at = None
    shared: bool | None = None
    with store.write() as conn:
        postgres = conn.dialect.name == "postgresql"
        status = conn.execute(_CAMPAIGN_STATUS, params).scalar_one_or_none()
        if status != CampaignStatus.RUNNING:
            return Claim([], 0, campaign_status=status)
        if ahead is not None:
            first = conn.execute(_claim_sql(postgres, None).first_due, params).first()
            if first is None:
                return Claim([], 0)
            send_at = params["b_send_at"] = first.send_at
            shared = send_at is not None
        sql = _claim_sql(postgres, shared)
        result = conn.execute(sql.pick, params | {"size": size})
        picked: list[ClaimedRow] = [
            tuple(row) for row in (result if postgres else orjson.loads(result.scalar_one()))
        ]
        if not picked:
            return Claim([], 0)
        ids = [row[0] for row in picked]
        params |= {"ids": ids} if postgres else {"first": ids[0], "last": ids[-1]}
        not_allowed = conn.execute(sql.not_allowed, params).all()
        skipped = {row.id: _skip_reason(row.status, bool(row.suppressed)) or "" for row in not_allowed}
        if earlier:
            d = deliveries.c
            batch = d.id.in_(ids) if postgres else d.id.between(ids[0], ids[-1])
            had = _had_the_issue(earlier).subquery()
            reached = conn.execute(
                select(d.id, had.c.campaign_id)
                .join(had, had.c.subscriber_id == d.subscriber_id)
                .where(d.campaign_id == campaign_id, d.status == DeliveryStatus.QUEUED, batch)
            ).all()
            skipped |= {
                row_id: f"{ALREADY_SENT}{other}" for row_id, other in reached if row_id not in skipped
            }
        for reason, group in _grouped(skipped).items():
            for chunk in in_chunks(group):
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(chunk))
                    .values(status=DeliveryStatus.SKIPPED, error=reason)
                )
        params |= {"run": run_id, "batch": batch_id, "now": now}
        marked = conn.execute(sql.mark, params).rowcount
        claimed = [row for row in picked if row[0] not in skipped] if skipped else picked
        if marked != len(claimed):  # cannot happen (one writer, or locked rows): change nothing then
            raise StoreError(
                f"claim of campaign {campaign_id}: {marked} rows marked, {len(claimed)} expected"
            )
        conn.execute(sql.heartbeat, params)
    return Claim(claimed, len(skipped), send_at)


def waiting(
    store: Store, campaign_id: int, size: int, now: dt.datetime, *, ahead: dt.timedelta | None = None
) -> int:
    """How many queued rows (at most ``size``) a claim could take now: what the next batch must pace for."""
    d = deliveries.c
    due = or_(d.send_at.is_(None), d.send_at <= now + (ahead or dt.timedelta(0)))
    rows = (
        select(d.id)
        .where(d.campaign_id == campaign_id, d.status == DeliveryStatus.QUEUED, due)
        .limit(size)
        .subquery()
    )
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(rows)).scalar_one())


def _skip_reason(status: str | None, suppressed: bool) -> str | None:
    if status is None:
        return "subscriber erased since the campaign started"
    if suppressed:
        return "address suppressed"
    if status != SubscriberStatus.ACTIVE:
        return f"subscriber {status} since the campaign started"
    return None


def _grouped(reasons: dict[int, str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for row_id, reason in reasons.items():
        groups.setdefault(reason, []).append(row_id)
    return groups


def record(store: Store, outcomes: list[Outcome], batch: tuple[int, str] | None = None) -> Counter[str]:
    """Write the transport's outcomes; ``unsent`` rows go back to the queue. Returns counts by status.

    The common case, a whole ``batch`` (campaign id, batch id) accepted under one message id (one API
    request), is one UPDATE over the id range of the batch's rows still ``sending``; anything else goes
    row by row.
    """
    with store.write() as conn:
        if batch is not None and outcomes and set(map(_STATUS, outcomes)) == {"sent"}:
            message_ids = set(map(_MESSAGE_ID, outcomes))
            if len(message_ids) == 1:
                ids = list(map(_DELIVERY_ID, outcomes))
                campaign_id, batch_id = batch
                params = {"campaign": campaign_id, "batch": batch_id, "first": min(ids), "last": max(ids)}
                updated = conn.execute(_RECORD_SENT, params | {"message": message_ids.pop()}).rowcount
                if updated == len(outcomes):
                    return Counter({"sent": updated})
                # Not the batch we expected (rows changed under us): row by row, which is guarded.
        by_status: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_status.setdefault(outcome.status, []).append(outcome)
        d = deliveries.c
        guarded = update(deliveries).where(d.id == bindparam("row_id"), d.status == DeliveryStatus.SENDING)
        for status, group in by_status.items():
            _record_group(conn, guarded, status, group)
    return Counter({status: len(group) for status, group in by_status.items()})


_STATUS, _MESSAGE_ID, _DELIVERY_ID = itemgetter(1), itemgetter(2), itemgetter(0)
_RECORD_SENT = (
    update(deliveries)
    .where(
        _BY_ID_RANGE,
        deliveries.c.status == DeliveryStatus.SENDING,
        deliveries.c.id.between(bindparam("first"), bindparam("last")),
        deliveries.c.batch_id == bindparam("batch"),
    )
    .values(status=DeliveryStatus.SENT, message_id=bindparam("message"), error=None)
)
"""A whole batch sent under one message id: its rows lie between its first and last id."""


def _record_group(conn: Connection, guarded: Any, status: str, group: list[Outcome]) -> None:
    if status == "unsent":
        conn.execute(
            guarded.values(
                status=DeliveryStatus.QUEUED, run_id=None, claimed_at=None, error=bindparam("reason")
            ),
            [{"row_id": o.delivery_id, "reason": o.error} for o in group],
        )
        return
    shared_id = {o.message_id for o in group}
    if status == "sent" and len(shared_id) == 1:  # one API request: one message id for the whole batch
        conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id.in_([o.delivery_id for o in group]),
                deliveries.c.status == DeliveryStatus.SENDING,
            )
            .values(status=DeliveryStatus.SENT, message_id=shared_id.pop(), error=None)
        )
        return
    conn.execute(
        guarded.values(status=status, message_id=bindparam("message_id"), error=bindparam("reason")),
        [{"row_id": o.delivery_id, "message_id": o.message_id, "reason": o.error} for o in group],
    )


def status_counts(conn: Connection, campaign_id: int) -> Counter[str]:
    """Rows by status, as an operator should read them: rows a dead run left ``sending`` count as
    ``in_doubt`` already (the next run marks them so), not as if they were on their way."""
    d = deliveries.c
    rows = conn.execute(
        select(d.status, func.count()).where(d.campaign_id == campaign_id).group_by(d.status)
    ).all()
    counts = Counter({status: int(n) for status, n in rows})
    if counts[DeliveryStatus.SENDING]:
        orphaned = _held_by_dead_runs(conn, campaign_id)
        counts[DeliveryStatus.SENDING] -= orphaned
        counts[DeliveryStatus.IN_DOUBT] += orphaned
    return +counts


def _held_by_dead_runs(conn: Connection, campaign_id: int) -> int:
    d, r = deliveries.c, dispatch_runs.c
    held = conn.execute(
        select(d.run_id, r.host, r.pid, r.heartbeat_at, r.ended_at, func.count())
        .select_from(deliveries.outerjoin(dispatch_runs, r.id == d.run_id))
        .where(d.campaign_id == campaign_id, d.status == DeliveryStatus.SENDING)
        .group_by(d.run_id, r.host, r.pid, r.heartbeat_at, r.ended_at)
    ).all()
    now = utcnow()
    return sum(
        int(n)
        for run_id, host, pid, heartbeat_at, ended_at, n in held
        if run_id is None or host is None or ended_at is not None or not _alive(host, pid, heartbeat_at, now)
    )


def marked_sent(conn: Connection, campaign_id: int) -> int:
    """Rows the operator recorded as sent without knowing (``resolve --mark-sent``)."""
    d = deliveries.c
    query = select(func.count()).where(
        d.campaign_id == campaign_id, d.status == DeliveryStatus.SENT, d.error == MARKED_SENT
    )
    return int(conn.execute(query).scalar_one())


def unfinished(counts: Counter[str]) -> int:
    """How many rows of these counts are still on their way (queued or sending)."""
    return sum(counts[status] for status in UNFINISHED)


def errors(conn: Connection, campaign_id: int) -> list[tuple[str, str, int]]:
    """(status, reason, how many) for failed, skipped and in-doubt rows, most common first."""
    d = deliveries.c
    rows = conn.execute(
        select(d.status, d.error, func.count())
        .where(d.campaign_id == campaign_id, d.status.in_(NEEDS_A_LOOK))
        .group_by(d.status, d.error)
        .order_by(func.count().desc())
    ).all()
    return [(status, error or "", int(n)) for status, error, n in rows]


def only_waiting(store: Store, campaign_id: int, horizon: dt.datetime) -> bool:
    """True when every unsent row of the campaign waits for a time after ``horizon`` (nothing to
    send and nothing to tidy up: no dispatch run need start for it now)."""
    d = deliveries.c
    mine = d.campaign_id == campaign_id
    queued = exists().where(mine, d.status == DeliveryStatus.QUEUED)
    due = exists().where(
        mine, d.status == DeliveryStatus.QUEUED, or_(d.send_at.is_(None), d.send_at <= horizon)
    )
    sending = exists().where(mine, d.status == DeliveryStatus.SENDING)
    with store.read() as conn:
        return bool(conn.execute(select(queued & ~due & ~sending)).scalar())
