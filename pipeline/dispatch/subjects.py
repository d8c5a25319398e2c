"""Subject tests: an issue's subjects each sent to an equal random sample, the winner to everyone else.

An issue with ``subject_variants`` tests them against its ``subject``. When its campaign is created,
``assign`` gives each subject an equal random sample of the ledger's queued rows
(``subject_tests.sample_percent`` of them each; ``deliveries.variant`` is the subject's place) and
marks every other row as waiting for the winner (variant ``REST``, due no earlier than
``wait_hours`` after the start). A test whose samples would be smaller than
``subject_tests.min_per_variant`` is refused before anything is written, with the numbers.

The samples go out like any campaign. Once none of their rows is still on its way and the wait is
over, the next dispatch run ``decide``s: the subject with the most readers clicking, per message
sent, wins if it beats the runner-up by a two-proportion z-test at 95 %; otherwise no subject won,
and the rest get the first, the editor's own. Opens play no part: since Apple Mail Privacy Protection
fetches every message's images on arrival, an "open" is as often a machine as a reader. The rows
waiting are claimed only once the winner is chosen, so nobody gets two subjects, and the one ledger
keeps every guarantee of a campaign without a test (exactly once, in doubt after a crash, resumable).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, case, distinct, exists, func, or_, select, update
from sqlalchemy.engine import Connection

from pipeline.dispatch import ledger
from pipeline.errors import DispatchError
from pipeline.render.renderer import RenderedIssue
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import DeliveryStatus
from pipeline.store.tables import campaigns, deliveries, delivery_events

log = logging.getLogger(__name__)
REST = -1
"""``deliveries.variant`` of a row outside the samples: it gets the winner."""
Z_95 = 1.959964
"""The two-sided 95 % point of the normal distribution."""
CLICK = "click"
OPENS_NOTE = (
    "opens are not counted: Apple Mail Privacy Protection opens every message it receives, "
    "so an open tells a reader from a machine no better than chance"
)


@dataclass(frozen=True, slots=True)
class SubjectTest:
    """What a new campaign's test is: its subjects, each sample's share, and when the rest may go."""

    subjects: tuple[str, ...]
    share: float
    """Of the queued rows, the fraction each subject's sample gets."""
    minimum: int
    wait: dt.timedelta
    """How long after the campaign starts the rows outside the samples are due."""


def planned_test(rendered: RenderedIssue, settings: Settings, transport: str) -> SubjectTest | None:
    """The test of ``rendered``'s subjects for a campaign through ``transport``; None without one.
    ``DispatchError`` if nothing would count its clicks."""
    if not rendered.subject_variants:
        return None
    if not settings.tracking.clicks and transport != "sendgrid":
        raise DispatchError(
            f"{rendered.slug}: a subject test picks its winner by clicks, and through {transport} none "
            "are counted; set [tracking] clicks = true (or send through SendGrid with its Event Webhook)"
        )
    rules = settings.subject_tests
    return SubjectTest(
        rendered.subjects,
        rules.sample_percent / 100,
        rules.min_per_variant,
        dt.timedelta(hours=rules.wait_hours),
    )


def refusal(test: SubjectTest, audience: int) -> str | None:
    """Why ``test`` cannot run on ``audience`` people (its samples would be too small), or None."""
    size = sample_size(test, audience)
    if size >= test.minimum:
        return None
    count = len(test.subjects)
    needed = math.ceil(test.minimum / test.share)
    return (
        f"a subject test of {count} subjects needs at least {test.minimum:,} people per subject: "
        f"{test.share:.0%} of {audience:,} is {size:,}. It takes an audience of {needed:,} or more "
        "(or a larger subject_tests.sample_percent); remove subject_variants to send one subject"
    )


def sample_size(test: SubjectTest, audience: int) -> int:
    return int(audience * test.share)


def assign(conn: Connection, campaign_id: int, test: SubjectTest, starts_at: dt.datetime) -> None:
    """Give each subject its random sample of the campaign's queued rows and the rest ``REST``, due no
    earlier than ``test.wait`` after ``starts_at``; ``DispatchError`` (the transaction then writes
    nothing) if the samples would be too small."""
    d = deliveries.c
    queued = and_(d.campaign_id == campaign_id, d.status == DeliveryStatus.QUEUED)
    audience = conn.execute(select(func.count()).where(queued)).scalar_one()
    why_not = refusal(test, audience)
    if why_not is not None:
        raise DispatchError(why_not)
    size = sample_size(test, audience)
    for place in range(len(test.subjects)):
        sample = (
            select(d.id)
            .where(queued, d.variant.is_(None))
            .order_by(func.random())
            .limit(size)
            .scalar_subquery()
        )
        conn.execute(update(deliveries).where(d.id.in_(sample)).values(variant=place))
    rest_from = starts_at + test.wait
    later = case((or_(d.send_at.is_(None), d.send_at < rest_from), rest_from), else_=d.send_at)
    conn.execute(update(deliveries).where(queued, d.variant.is_(None)).values(variant=REST, send_at=later))
    conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(subjects=list(test.subjects)))


@dataclass(frozen=True, slots=True)
class Variant:
    """One subject's sample and what its readers did."""

    place: int
    subject: str
    sample: int
    """Rows of the sample (whatever became of them)."""
    sent: int
    """Of them, the messages sent (or possibly sent: in doubt)."""
    clickers: int
    """Distinct readers of the sample who clicked a link, by SendGrid's events or our redirect."""

    @property
    def rate(self) -> float:
        return self.clickers / self.sent if self.sent else 0.0

    def interval(self) -> tuple[float, float]:
        """The Wilson score interval of the click rate at 95 %: honest even for a handful of clicks."""
        return wilson(self.clickers, self.sent)


@dataclass(frozen=True, slots=True)
class Verdict:
    variants: tuple[Variant, ...]
    winner: int
    """The place of the subject the rest get."""
    significant: bool
    """Whether the winner beat the runner-up beyond chance; if not, the winner is the first subject."""
    z: float
    rest: int
    """Rows outside the samples: the winner's."""

    def summary(self) -> str:
        """One paragraph for the operator: who won and why, or that nobody did."""
        if self.significant:
            best = self.variants[self.winner]
            head = (
                f"'{best.subject}' won: {best.clickers:,} of {best.sent:,} readers clicked "
                f"({best.rate:.1%}), ahead beyond chance (z = {self.z:.2f})"
            )
        else:
            head = (
                f"no subject won (z = {self.z:.2f}, under {Z_95:.2f}): the difference is within chance, "
                f"so the first subject, '{self.variants[0].subject}', goes"
            )
        return f"{head} to the other {self.rest:,}; {OPENS_NOTE}"


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def judge(variants: Sequence[Variant], rest: int = 0) -> Verdict:
    """The best rate wins if a two-proportion z-test puts it beyond the runner-up at 95 %."""
    ranked = sorted(variants, key=lambda v: (-v.rate, v.place))
    best, second = ranked[0], ranked[1]
    z = _z(best, second)
    significant = z >= Z_95
    return Verdict(tuple(variants), best.place if significant else 0, significant, z, rest)


def _z(a: Variant, b: Variant) -> float:
    if not a.sent or not b.sent:
        return 0.0
    pooled = (a.clickers + b.clickers) / (a.sent + b.sent)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / a.sent + 1 / b.sent))
    return (a.rate - b.rate) / spread if spread else 0.0


def results(conn: Connection, campaign_id: int, subjects: Sequence[str]) -> tuple[list[Variant], int]:
    """Each subject's sample, messages sent and readers clicking; and the rows outside the samples."""
    d, e = deliveries.c, delivery_events.c
    reached = func.sum(case((d.status.in_(ledger.REACHED), 1), else_=0))
    rows: dict[int, tuple[int, int]] = dict(
        (place, (int(total), int(sent or 0)))
        for place, total, sent in conn.execute(
            select(d.variant, func.count(), reached)
            .where(d.campaign_id == campaign_id, d.variant.is_not(None))
            .group_by(d.variant)
        ).all()
    )
    clickers: dict[int, int] = dict(
        conn.execute(
            select(d.variant, func.count(distinct(e.subscriber_id)))
            .select_from(deliveries.join(delivery_events, d.subscriber_id == e.subscriber_id))
            .where(
                d.campaign_id == campaign_id, e.campaign_id == campaign_id, e.kind == CLICK, d.variant >= 0
            )
            .group_by(d.variant)
        ).all()
    )
    variants = [
        Variant(place, subject, *rows.get(place, (0, 0)), int(clickers.get(place, 0)))
        for place, subject in enumerate(subjects)
    ]
    rest = conn.execute(
        select(func.count()).where(d.campaign_id == campaign_id, d.variant == REST)
    ).scalar_one()
    return variants, int(rest)


def verdict(store: Store, campaign_id: int) -> Verdict | None:
    """The test of a campaign as it stands (for the report); None for a campaign without one."""
    with store.read() as conn:
        subjects, winner = conn.execute(
            select(campaigns.c.subjects, campaigns.c.winner).where(campaigns.c.id == campaign_id)
        ).one()
        if not subjects:
            return None
        variants, rest = results(conn, campaign_id, subjects)
    judged = judge(variants, rest)
    if winner is not None and winner != judged.winner:  # clicks that came after the choice
        return Verdict(judged.variants, winner, judged.significant, judged.z, rest)
    return judged


def decide(store: Store, campaign_id: int, now: dt.datetime) -> Verdict | None:
    """Choose the winner of the campaign's test if it is time: no sample row on its way any more and
    the rest due. None if there is no test, it was decided before, or it is not time yet."""
    d, c = deliveries.c, campaigns.c
    with store.write() as conn:
        subjects, winner = conn.execute(select(c.subjects, c.winner).where(c.id == campaign_id)).one()
        if not subjects or winner is not None:
            return None
        mine = d.campaign_id == campaign_id
        waiting = [mine, d.variant == REST, d.status == DeliveryStatus.QUEUED]
        sampling = exists().where(mine, d.variant >= 0, d.status.in_(ledger.UNFINISHED))
        rest_due = exists().where(*waiting, or_(d.send_at.is_(None), d.send_at <= now))
        if conn.execute(select(sampling | (exists().where(*waiting) & ~rest_due))).scalar():
            return None
        variants, rest = results(conn, campaign_id, subjects)
        judged = judge(variants, rest)
        conn.execute(update(campaigns).where(c.id == campaign_id).values(winner=judged.winner))
    log.info("subject test of campaign %s: %s", campaign_id, judged.summary())
    return judged


def rest_due(store: Store, campaign_id: int) -> dt.datetime | None:
    """When the first row waiting for the winner is due (None: none waits, or due at once)."""
    d = deliveries.c
    with store.read() as conn:
        return conn.execute(
            select(func.min(d.send_at)).where(
                d.campaign_id == campaign_id, d.variant == REST, d.status == DeliveryStatus.QUEUED
            )
        ).scalar()
