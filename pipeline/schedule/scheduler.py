"""The weekly scheduler behind `newsletter run`: each issue goes out on its day, once, whatever restarts.

A tick (every ``schedule.tick_seconds``, driven by a ``schedule.Scheduler``; or one with ``--once``):

1. takes or renews the ``scheduler`` lease; while another live instance holds it, does nothing else;
2. decides every issue whose due moment has come and that has no decision yet: ``missed`` if it is
   more than ``catch_up_hours`` late (and nobody sent it by hand), else ``started``: the issue is
   checked, the decision row written (the commitment: unique per issue), then its campaign created
   (unique per issue and segments) exactly as `newsletter send` would;
3. sends every campaign the scheduler started that is not finished, oldest first, with the
   ``Dispatcher``: an interrupted one resumes, and per-recipient time-zone buckets go out as they
   come due (rows left ``sending`` by a dead run become in doubt, never resent silently);
4. adds to each welcome step's campaign the readers whose day for it has come (``dispatch.welcome``;
   a step whose file has errors adds nobody and is reported, the others go on), then sends every
   welcome campaign that is running, the same way;
5. does its ``chores``, such as reading the bounce mailbox (given by the caller: feedback is a stage
   beside this one), each failure reported like an issue's.

Time comes from an injected clock, so tests run a year of Tuesdays without sleeping.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from functools import partial

import schedule

from pipeline.audience import selection
from pipeline.clock import Clock, SystemClock
from pipeline.dispatch import campaigns, subjects, welcome
from pipeline.dispatch.dispatcher import RunEnd, RunReport, run_campaign
from pipeline.dispatch.plan import checked_issue, subject_test
from pipeline.errors import DispatchError, PipelineError
from pipeline.render.links import Links
from pipeline.render.renderer import RenderedIssue
from pipeline.schedule import decisions
from pipeline.schedule.lease import Lease
from pipeline.schedule.localtime import fill_send_times, schedule_zone, zone
from pipeline.schedule.tickreport import IssueOutcome, TickReport
from pipeline.schedule.timetable import Slot, Timetable
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import CampaignKind, CampaignStatus, DeliveryStatus
from pipeline.transports import Transport, open_transport

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
        transports: Callable[[str], Transport] | None = None,
        holder: str | None = None,
        chores: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        self.store = store
        self.chores = dict(chores or {})
        self.settings = settings
        self.config = settings.schedule
        self.clock: Clock = clock or SystemClock()
        self.stop = stop or threading.Event()
        self.transports = transports
        self.lease = Lease(store, self.config.lease_seconds, holder=holder)
        self.links = Links(settings, store.signer)
        self.timetable = Timetable(settings)
        self.series = welcome.Series(settings)
        self.catch_up = dt.timedelta(hours=self.config.catch_up_hours)
        self.zone = zone(schedule_zone(settings))
        self._renewed: dt.datetime | None = None
        self._waiting_for: str | None = None
        self._reported: dict[str, str] = {}

    # -- the loop ----------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Tick now (resume and catch up), then every tick_seconds until ``stop``; then release the lease."""
        jobs = schedule.Scheduler()
        # schedule takes fractional seconds (a timedelta underneath), though its hint says int.
        jobs.every(self.config.tick_seconds).seconds.do(self.tick)  # type: ignore[arg-type]
        log.info(
            "scheduler %s: issues in %s go out at %s %s; looking every %g s",
            self.lease.holder,
            self.timetable.files.folder,
            self.config.time,
            schedule_zone(self.settings) if not self.config.per_recipient_timezone else "(each reader's)",
            self.config.tick_seconds,
        )
        try:
            self.tick()
            while not self.stop.is_set():
                jobs.run_pending()
                idle = jobs.idle_seconds
                self.clock.wait(self.config.tick_seconds if idle is None else idle, self.stop)
        finally:
            self.close()
        log.info("scheduler %s: stopped", self.lease.holder)

    def run_once(self) -> TickReport:
        """One tick, then release the lease (cron or a systemd timer)."""
        try:
            return self.tick()
        finally:
            self.close()

    def close(self) -> None:
        """Release the lease if we hold it, so the next instance need not wait for it to expire."""
        try:
            self.lease.release(self.clock.now())
        except PipelineError as exc:
            log.warning("could not release the scheduler lease: %s", exc)

    # -- one tick ----------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        now = self.clock.now()
        report = TickReport(now)
        if self._hold(now, report):
            self._guarded(report, "scheduler", partial(self._work, now, report))
            for name, chore in self.chores.items():
                if not self.stop.is_set():
                    self._guarded(report, name, chore)
        return report

    def _work(self, now: dt.datetime, report: TickReport) -> None:
        """Decide what has come due, then send what the scheduler started; one issue's error is
        reported and the others go on."""
        slots = self.timetable.slots()
        decided = decisions.all_decisions(self.store)
        for slot in slots:
            if slot.due_at > now or self.stop.is_set():
                break
            if slot.slug not in decided:
                self._guarded(report, slot.slug, partial(self._decide, slot, now, report))
        by_slug = {slot.slug: slot for slot in slots}
        for decision in decisions.unfinished(self.store):
            if self.stop.is_set():
                break
            self._guarded(report, decision.issue_slug, partial(self._send, decision, by_slug, report))
        report.next_slot = next((s for s in slots if s.due_at > now and s.slug not in decided), None)
        self._welcome_series(now, report)
        self._look_after_the_rest(report)

    def _welcome_series(self, now: dt.datetime, report: TickReport) -> None:
        """Queue each welcome step's due readers, then send every welcome campaign that runs."""
        for step in self.series.steps():
            if self.stop.is_set():
                return
            self._guarded(report, step.slug, partial(self._queue_step, step, now, report))
        for slug, campaign in campaigns.welcome_campaigns(self.store).items():
            if self.stop.is_set():
                return
            if campaign.status == CampaignStatus.RUNNING:
                self._guarded(report, slug, partial(self._run, slug, campaign, report, "sent"))

    def _queue_step(self, step: welcome.Step, now: dt.datetime, report: TickReport) -> None:
        if step.problem is not None:
            raise DispatchError(f"cannot be sent: {step.problem}; nobody gets this step until it is fixed")
        cohort = welcome.queue(self.store, self.settings, self.links, step, now)
        if cohort is None or not cohort.added:
            return
        changed = "; the edited file from now on" if cohort.content_changed else ""
        detail = f"{cohort.added:,} reader(s) due, campaign #{cohort.campaign.id}{changed}"
        log.info("%s: %s", step.slug, detail)
        report.outcomes.append(IssueOutcome(step.slug, "queued", detail, cohort.campaign.id))

    def _look_after_the_rest(self, report: TickReport) -> None:
        """Every campaign with recipients in doubt, and every running issue campaign the scheduler did
        not start that still has people queued (a `send` that stopped): reported each tick until dealt
        with. (Welcome campaigns are the scheduler's own: each tick sends them.)"""
        linked = {d.campaign_id for d in decisions.all_decisions(self.store).values()}
        for campaign, counts in campaigns.list_campaigns(self.store):
            if counts[DeliveryStatus.IN_DOUBT]:
                report.in_doubt.append((campaign.id, campaign.issue_slug, counts[DeliveryStatus.IN_DOUBT]))
            queued = counts[DeliveryStatus.QUEUED]
            by_hand = campaign.id not in linked and campaign.kind == CampaignKind.ISSUE
            if by_hand and campaign.status == CampaignStatus.RUNNING and queued:
                detail = (
                    f"campaign #{campaign.id} was started outside the scheduler and stopped with "
                    f"{queued:,} queued; `newsletter campaigns resume {campaign.id}` sends them"
                )
                report.outcomes.append(IssueOutcome(campaign.issue_slug, "unfinished", detail, campaign.id))

    def _hold(self, now: dt.datetime, report: TickReport) -> bool:
        try:
            held = self.lease.acquire(now)
            state = None if held else self.lease.current()
        except PipelineError as exc:
            self._fail(report, "lease", str(exc))
            return False
        self._reported.pop("lease", None)
        if held:
            if self._waiting_for is not None:
                log.info("scheduler %s: took over the lease from %s", self.lease.holder, self._waiting_for)
            self._waiting_for, self._renewed = None, now
            return True
        report.holder = state
        holder = state.holder if state else "another instance"
        if holder != self._waiting_for:
            until = f" until {self._local(state.expires_at)}" if state else ""
            log.warning("another scheduler holds the lease (%s%s); waiting", holder, until)
        self._waiting_for = holder
        return False

    def _guarded(self, report: TickReport, slug: str, step: Callable[[], None]) -> None:
        try:
            step()
        except PipelineError as exc:
            self._fail(report, slug, str(exc))
        else:
            self._reported.pop(slug, None)  # fixed: the next failure is news again

    def _fail(self, report: TickReport, slug: str, message: str) -> None:
        report.outcomes.append(IssueOutcome(slug, "failed", message))
        if self._reported.get(slug) != message:  # once per new problem, not once a minute
            log.error("%s: %s", slug, message)
        self._reported[slug] = message

    def _decide(self, slot: Slot, now: dt.datetime, report: TickReport) -> None:
        late = now - slot.due_at
        existing = campaigns.find_campaign(self.store, slot.slug, slot.segments)
        if existing is None and late > self.catch_up:
            detail = (
                f"due {self._local(slot.due_at)}, found {_hours(late)} late "
                f"(catch_up_hours = {self.config.catch_up_hours:g}); send it by hand if still wanted"
            )
            if decisions.decide(self.store, slot.slug, slot.due_at, "missed", now, detail):
                log.warning("%s → %s: missed: %s", slot.slug, ", ".join(slot.segments), detail)
                report.outcomes.append(IssueOutcome(slot.slug, "missed", detail))
            return
        if slot.problem:
            raise DispatchError(f"due {self._local(slot.due_at)} but cannot be sent: {slot.problem}")
        # Checked before deciding: an issue with errors stays undecided, so a fix within the
        # catch-up window still goes out.
        rendered = None if existing else checked_issue(slot.path, self.settings, self.links)[1]
        if rendered is not None and rendered.subject_variants:  # a test too small is refused undecided
            audience = selection.count(self.store, list(slot.segments))
            subject_test(self.settings, rendered, self.settings.delivery.transport, audience)
        self._open(self.settings.delivery.transport).close()  # nothing is decided for a dead transport
        if decisions.decide(self.store, slot.slug, slot.due_at, "started", now):
            campaign = self._campaign(slot, rendered)
            report.outcomes.append(
                IssueOutcome(slot.slug, "started", f"campaign #{campaign.id}", campaign.id)
            )

    def _campaign(self, slot: Slot, rendered: RenderedIssue | None) -> campaigns.Campaign:
        """The issue's campaign, created now (its audience frozen) unless it exists; linked to the decision."""
        existing = campaigns.find_campaign(self.store, slot.slug, slot.segments)
        if existing is None:
            rendered = rendered or checked_issue(slot.path, self.settings, self.links)[1]
            prepare = None
            if self.config.per_recipient_timezone:
                prepare = partial(fill_send_times, day=slot.day, settings=self.settings)
            transport = self.settings.delivery.transport
            existing, _ = campaigns.create_campaign(
                self.store,
                rendered,
                slot.segments,
                transport,
                send_after=slot.due_at,
                prepare=prepare,
                # Its samples are sized, and a test too small refused, against the frozen ledger.
                test=subjects.planned_test(rendered, self.settings, transport),
            )
            how = "started"
        else:
            how = f"found campaign made outside the scheduler ({existing.status})"
        decisions.link(self.store, slot.slug, existing.id)
        total = campaigns.report(self.store, existing.id).total
        log.info(
            "%s → %s: %s campaign #%d for %d recipients (due %s)",
            slot.slug,
            ", ".join(slot.segments),
            how,
            existing.id,
            total,
            self._local(slot.due_at),
        )
        return existing

    def _send(self, decision: decisions.Decision, slots: dict[str, Slot], report: TickReport) -> None:
        slug = decision.issue_slug
        if decision.campaign_id is None:  # a crash between the decision and the campaign
            slot = slots.get(slug)
            if slot is None:
                raise DispatchError("decided to send it, but its issue file is gone; restore it")
            campaign = self._campaign(slot, None)
        else:
            campaign = campaigns.get_campaign(self.store, decision.campaign_id)
        fresh = any(o.slug == slug and o.action == "started" for o in report.outcomes)
        self._run(slug, campaign, report, "sent" if fresh else "resumed")

    def _run(self, slug: str, campaign: campaigns.Campaign, report: TickReport, verb: str) -> None:
        """Send what is due of ``campaign`` (renewing the lease after each batch) and report it."""
        halt = _Halt(self.stop)
        run = run_campaign(
            self.store,
            self.settings,
            campaign.id,
            transports=self.transports,
            stop=halt,
            on_progress=lambda _counts: self._keep_lease(halt),
            now=self.clock.now,
        )
        if run.end is RunEnd.WAITING:
            detail = "rows not yet due"
            if campaign.subjects and campaign.winner is None:
                due = subjects.rest_due(self.store, campaign.id)
                detail = (
                    f"subject test: the winner goes to the rest from {self._local(due)}" if due else detail
                )
            report.outcomes.append(IssueOutcome(slug, "waiting", detail, campaign.id))
            return
        self._log_run(slug, campaign, run, verb)
        report.outcomes.append(IssueOutcome(slug, "sent", run.campaign.status, campaign.id, run))
        if run.end is RunEnd.TRANSPORT_UNAVAILABLE:
            raise DispatchError(f"campaign #{campaign.id}: {run.why}")

    def _open(self, name: str) -> Transport:
        return self.transports(name) if self.transports else open_transport(self.settings, name)

    def _keep_lease(self, halt: threading.Event) -> None:
        """After each batch: renew the lease now and then; if another instance took it, stop sending."""
        now = self.clock.now()
        if self._renewed is not None and now - self._renewed < self.lease.duration / 3:
            return
        if self.lease.acquire(now):
            self._renewed = now
            return
        log.warning("scheduler %s: lost the lease; stopping after the batches in flight", self.lease.holder)
        halt.set()

    def _log_run(self, slug: str, campaign: campaigns.Campaign, run: RunReport, verb: str) -> None:
        done = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(run.counts.items()) if n)
        how = f"stopped ({run.why})" if run.stopped else run.campaign.status
        log.info("%s → campaign #%d %s: %s; %s", slug, campaign.id, verb, done or "nothing due", how)
        if run.found_in_doubt:
            log.warning(
                "%s → campaign #%d: %d recipient(s) in doubt (a run died mid-batch); decide with "
                "`newsletter campaigns resolve %d --resend` or `--mark-sent`",
                slug,
                campaign.id,
                run.found_in_doubt,
                campaign.id,
            )

    def _local(self, moment: dt.datetime) -> str:
        return moment.astimezone(self.zone).strftime("%a %Y-%m-%d %H:%M %Z")


class _Halt(threading.Event):
    """Stops one dispatch run: set when the lease is lost, and set whenever the scheduler's ``stop``
    is (a signal), so the run stops claiming at once, not only after its next batch."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.outer = stop

    def is_set(self) -> bool:
        return super().is_set() or self.outer.is_set()


def _hours(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes < 2880 else f"{minutes / 1440:.1f} days"
