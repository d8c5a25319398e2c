"""What one scheduler tick did: an outcome per issue (and welcome step), or who held the lease while it waited.

The CLI prints it (`newsletter run --once`) and turns ``ok`` into the exit status; tests read it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pipeline.dispatch.dispatcher import RunReport
from pipeline.schedule.lease import LeaseState
from pipeline.schedule.timetable import Slot

NEEDS_THE_OPERATOR = ("failed", "missed", "unfinished")


@dataclass(frozen=True, slots=True)
class IssueOutcome:
    """What a tick did about one issue.

    ``started`` (decided and its campaign created), ``missed`` (decided: too late), ``sent`` (a
    dispatch run, with its report), ``waiting`` (its rows are not due yet), ``failed`` (with why),
    ``unfinished`` (a campaign started by hand that stopped with people still queued), ``queued``
    (readers whose day for a welcome step came, added to its campaign; ``slug`` is the step's).
    """

    slug: str
    action: str
    detail: str
    campaign_id: int | None = None
    run: RunReport | None = None


@dataclass
class TickReport:
    at: dt.datetime
    holder: LeaseState | None = None
    """Set when another instance holds the lease and this tick did nothing."""
    outcomes: list[IssueOutcome] = field(default_factory=list)
    next_slot: Slot | None = None
    in_doubt: list[tuple[int, str, int]] = field(default_factory=list)
    """(campaign id, issue, recipients) for every campaign with recipients in doubt, whoever sent it."""

    @property
    def waiting_for_lease(self) -> bool:
        return self.holder is not None

    def of(self, action: str) -> list[IssueOutcome]:
        return [o for o in self.outcomes if o.action == action]

    @property
    def ok(self) -> bool:
        """False when something needs the operator: a failure, a missed issue, a stalled campaign,
        recipients in doubt in any campaign."""
        return not any(self.of(action) for action in NEEDS_THE_OPERATOR) and not self.in_doubt
