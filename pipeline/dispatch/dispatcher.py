"""The send loop: claim a batch from the ledger, pace it, hand it to the transport, record the outcome.

Claims and records happen on the calling thread (one writer). Between them a courier signs the
recipients' links and calls the transport: on a small pool of threads, ``transport.concurrency`` at a
time, or with ``delivery.processes`` above 1 in that many worker processes, one batch each (see
``courier``). ``stop`` (set by Ctrl-C or SIGTERM in the CLI) stops the claiming of new batches; batches
in flight finish and are recorded before ``run`` returns.

``run_campaign`` is the one way in, for `newsletter send`, `campaigns resume` and the scheduler alike:
it opens the campaign's transport, runs a ``Dispatcher`` and closes the transport again.

Rows with a later ``send_at`` (per-recipient time zones) wait until they are due by ``now``; a
transport that schedules delivery itself (SendGrid, ``send_ahead``) gets them early, grouped by time.
"""

from __future__ import annotations

import datetime as dt
import gc
import itertools
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

from pipeline.dispatch import campaigns, ledger, subjects
from pipeline.dispatch.courier import (
    GC_THRESHOLD,
    Courier,
    Job,
    deliver_in_worker,
    wait_until_started,
    worker_pool,
)
from pipeline.dispatch.ratelimit import Pace, SharedPace
from pipeline.errors import DispatchError
from pipeline.render import clicks
from pipeline.render.links import Links
from pipeline.render.renderer import RenderedIssue
from pipeline.settings import Settings
from pipeline.store import checkpoints
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import CampaignStatus, DeliveryStatus
from pipeline.transports import open_transport
from pipeline.transports.base import Outcome, Transport

log = logging.getLogger(__name__)


class RunEnd(StrEnum):
    """Why a dispatch run ended."""

    DONE = "done"
    """Nothing due is left queued (the campaign may still wait for later time zones)."""
    WAITING = "waiting"
    """Every row left waits for a later delivery time: no run was needed yet."""
    INTERRUPTED = "interrupted"
    """Told to stop (Ctrl-C, SIGTERM, the scheduler's lease lost)."""
    PAUSED = "paused"
    CANCELLED = "cancelled"
    TRANSPORT_UNAVAILABLE = "transport unavailable"
    """The transport could not take the batch; its rows went back to the queue (``detail`` says why)."""


@dataclass
class RunReport:
    campaign: campaigns.Campaign
    counts: Counter[str] = field(default_factory=Counter)
    """What this run did: sent, failed, skipped, in_doubt, unsent (returned to the queue)."""
    found_in_doubt: int = 0
    """Rows a previous, dead run had left ``sending``, now marked ``in_doubt``."""
    end: RunEnd = RunEnd.DONE
    detail: str | None = None
    """What the transport said, when it was unavailable."""
    settled: int = 0
    """Rows in doubt whose fate the transport could tell (an outbox file there or not) at the start."""
    in_flight_at_stop: int = 0
    """Batches already handed over when a stop (pause, cancel, signal…) was seen: they still went out."""
    elapsed: float = 0.0
    verdict: subjects.Verdict | None = None
    """The campaign's subject test, when this run chose its winner."""

    @property
    def stopped(self) -> bool:
        """True when the run ended before its queue was done (interrupted, paused, transport down…)."""
        return self.end not in (RunEnd.DONE, RunEnd.WAITING)

    @property
    def why(self) -> str:
        """The end in words, for people: ``transport unavailable: connection refused``."""
        return f"{self.end}: {self.detail}" if self.detail else str(self.end)


ProgressCallback = Callable[[Counter[str]], None]
Submit = Callable[[Job], "Future[list[Outcome]]"]
_Stop = tuple[RunEnd, str | None]
_PACE_SLICE = 0.05
"""While pacing with batches in flight, how often a stop signal is looked for (seconds)."""
_SIGNAL_POLL = 0.25
"""While every courier is busy, how often a stop signal is looked for (seconds)."""
_ENDS_BY_STATUS = {CampaignStatus.PAUSED: RunEnd.PAUSED, CampaignStatus.CANCELLED: RunEnd.CANCELLED}


def run_campaign(
    store: Store,
    settings: Settings,
    campaign_id: int,
    *,
    transport: str | None = None,
    transports: Callable[[str], Transport] | None = None,
    stop: threading.Event | None = None,
    on_progress: ProgressCallback | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> RunReport:
    """Send what is due of a running campaign through ``transport`` (default: the campaign's).

    ``transports`` opens a transport by name (default: from the settings and the environment).
    A campaign whose remaining rows all wait for a later time starts no run (``RunEnd.WAITING``).
    """
    campaign = campaigns.get_campaign(store, campaign_id)
    opened = (transports or (lambda name: open_transport(settings, name)))(transport or campaign.transport)
    try:
        horizon = now() + (opened.send_ahead or dt.timedelta(0))
        if campaign.status == CampaignStatus.RUNNING and ledger.only_waiting(store, campaign_id, horizon):
            return RunReport(campaign, end=RunEnd.WAITING)
        links = Links(settings, store.signer)
        dispatcher = Dispatcher(store, settings, opened, links, stop=stop, on_progress=on_progress, now=now)
        return dispatcher.run(campaign_id)
    finally:
        opened.close()


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        transport: Transport,
        links: Links,
        *,
        limiter: Pace | None = None,
        stop: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
        batch_size: int | None = None,
        processes: int | None = None,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.transport = transport
        self.links = links
        self.batch_size = min(batch_size or settings.delivery.batch_size, transport.max_batch)
        self.processes = processes or settings.delivery.processes
        self.stop = stop or threading.Event()
        self.limiter = limiter
        """None: the campaign's pace in the store (``SharedPace``), shared with every other sender."""
        self.on_progress = on_progress
        self.now = now

    def run(self, campaign_id: int) -> RunReport:
        """Send every due, queued row of a running campaign; returns what happened."""
        started = time.monotonic()
        campaign = campaigns.start(self.store, campaign_id)
        report = RunReport(campaign, found_in_doubt=ledger.mark_in_doubt(self.store, campaign_id))
        if campaign.status != CampaignStatus.RUNNING:
            raise DispatchError(f"campaign {campaign_id} is {campaign.status}, not running")
        in_doubt = ledger.in_doubt_rows(self.store, campaign_id)
        if in_doubt:
            known = self.transport.settle(campaign_id, campaign.issue_slug, in_doubt)
            report.settled = ledger.settle(
                self.store, campaign_id, known, f"settled by the {self.transport.name}"
            )
        report.verdict = subjects.decide(self.store, campaign_id, self.now())
        campaign = campaigns.get_campaign(self.store, campaign_id) if report.verdict else campaign
        rendered, links = self._content(campaign_id)
        variants = _variants(campaign)
        # A full batch may go at once; after that the average rate holds, across every process sending
        # this campaign. Waiting for the pace ends early on a stop signal (it sleeps in the stop's wait).
        pace = self.limiter or SharedPace(
            self.store,
            campaign_id,
            self.settings.delivery.rate_per_second,
            burst=self.batch_size,
            now=self.now,
            sleep=self.stop.wait,
        )
        earlier = campaigns.same_issue(self.store, campaign)
        run = _Run(campaign_id, ledger.start_run(self.store, campaign_id), report.counts, pace, earlier)
        run.rest = not campaign.subjects or campaign.winner is not None
        try:
            couriers = self._couriers(rendered, links, variants)
            with (
                _rare_collections(),
                checkpoints.in_background(self.store),
                couriers as (submit, limit, cut_short),
            ):
                run.cut_short_with = cut_short
                report.end, report.detail = self._loop(run, submit, limit)
                report.in_flight_at_stop = run.in_flight_at_stop
        finally:
            ledger.end_run(self.store, run.run_id)
        report.campaign = campaigns.finish_if_done(self.store, campaign_id)
        report.elapsed = time.monotonic() - started
        return report

    def _content(self, campaign_id: int) -> tuple[RenderedIssue, Links]:
        """The campaign's issue as it goes out, and the links each copy gets: with ``tracking.clicks``,
        its links rewritten to our redirect and a click token for each recipient."""
        rendered = campaigns.load_rendered(self.store, campaign_id)
        tracked = campaigns.load_links(self.store, campaign_id) if self.settings.tracking.clicks else None
        if not tracked:
            return rendered, self.links
        base_url = self.settings.newsletter.base_url
        text = self.settings.tracking.text_clicks
        rewritten = clicks.track(rendered, campaign_id, tracked, base_url, text=text)
        return rewritten, self.links.tracking(campaign_id)

    @contextmanager
    def _couriers(
        self, rendered: RenderedIssue, links: Links, variants: dict[int, str]
    ) -> Iterator[tuple[Submit, int, Callable[[], None]]]:
        """Where jobs go, how many may be out at once (the transport's concurrency on threads of this
        process, or one per worker process with ``processes`` > 1), and how to cut them short: the
        transport's interrupt on threads; for workers, whose transports this process cannot reach,
        killing them. Leaving waits for all of them."""
        if self.processes > 1:
            transport = self.transport.name
            with worker_pool(
                self.processes, self.settings, transport, links, rendered, variants
            ) as processes:
                # Workers take a second or more to start: claim nothing before they can send it.
                wait_until_started(processes, self.processes)
                yield (
                    (lambda job: processes.submit(deliver_in_worker, job)),
                    self.processes,
                    partial(_kill, processes),
                )
            return
        courier = Courier(self.settings, self.transport, links, rendered, variants)
        with ThreadPoolExecutor(self.transport.concurrency, thread_name_prefix="send") as threads:
            yield (
                (lambda job: threads.submit(courier.deliver, job)),
                self.transport.concurrency,
                self.transport.interrupt,
            )

    def _loop(self, run: _Run, submit: Submit, limit: int) -> _Stop:
        """Keep ``limit`` batches in flight; record each as soon as it returns. Returns why it ended.

        A stop signal is looked for before every claim, and pause, cancel and the health guard's pause
        by the claim itself (``ledger.claim`` takes nothing from a campaign that is not running), so at
        most the batches already in flight go out after one of them."""
        while True:
            while run.stopped is None and len(run.in_flight) < limit:
                job = None if self.stop.is_set() else self._claim(run)
                if job is None:
                    if self.stop.is_set():  # before the claim, or while it waited for the pace
                        run.stop_with((RunEnd.INTERRUPTED, None))
                    break
                run.in_flight[submit(job)] = job.batch_id
                # Rows wait in `sending` only while their batch is really out: record what is back.
                self._record([f for f in run.in_flight if f.done()], run)
            if not run.in_flight:
                return run.stopped or (RunEnd.DONE, None)
            done, _ = wait(run.in_flight, timeout=self._grace_left(run), return_when=FIRST_COMPLETED)
            self._record(list(done), run)

    def _grace_left(self, run: _Run) -> float | None:
        """While stopping, how long the batches in flight may still take; past ``delivery.stop_seconds``
        the transport cuts them short, so a stop never outlasts what systemd allows."""
        if self.stop.is_set():  # a signal while every courier is busy
            run.stop_with((RunEnd.INTERRUPTED, None))
        if run.stopped is None:
            return _SIGNAL_POLL
        if run.cut_short:
            return None
        if run.stopping_since is None:
            run.stopping_since = time.monotonic()
        left = run.stopping_since + self.settings.delivery.stop_seconds - time.monotonic()
        if left > 0:
            return left
        log.warning("the batches in flight took longer than delivery.stop_seconds; cutting them short")
        run.cut_short_with()
        run.cut_short = True
        return None

    def _record(self, done: list[Future[list[Outcome]]], run: _Run) -> None:
        """Write finished batches to the ledger; if the transport was unavailable, stop the run."""
        for future in done:
            try:
                outcomes = future.result()
            except BrokenProcessPool:  # its worker was killed to end a stop: nobody knows how far it got
                batch_id = run.in_flight.pop(future)
                run.counts[DeliveryStatus.IN_DOUBT] += ledger.abandon(self.store, run.campaign_id, batch_id)
                continue
            batch = (run.campaign_id, run.in_flight.pop(future))
            run.counts.update(ledger.record(self.store, outcomes, batch))
            unsent = next((o.error for o in outcomes if o.status == "unsent"), None)
            if unsent:
                run.stop_with((RunEnd.TRANSPORT_UNAVAILABLE, unsent))
            self._progress(run)

    def _pace(self, seconds: float, run: _Run) -> None:
        """Wait out the pace while recording the batches that come back meanwhile: a batch the
        transport has answered never waits in `sending` for the next claim's turn."""
        deadline = time.monotonic() + seconds
        while run.in_flight and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            done, _ = wait(run.in_flight, timeout=min(left, _PACE_SLICE), return_when=FIRST_COMPLETED)
            self._record(list(done), run)
        self.stop.wait(max(0.0, deadline - time.monotonic()))

    def _claim(self, run: _Run) -> Job | None:
        """The next batch to send, paced by the rate limit; None when no queued row is due or the
        campaign is no longer running (then ``run`` says why it stopped).

        The pace is kept *before* rows are claimed, so rows never sit `sending` while we wait.
        """
        if not run.pace.try_acquire(self.batch_size):
            # The pace will make us wait (the claim would see a pause only after it): not for a campaign
            # that stopped running, and only for the rows that are really there.
            status = campaigns.get_campaign(self.store, run.campaign_id).status
            if status != CampaignStatus.RUNNING:
                run.stop_with(_end_by(status))
                return None
            waiting = ledger.waiting(
                self.store, run.campaign_id, self.batch_size, self.now(), ahead=self.transport.send_ahead
            )
            if not waiting:
                return None
            run.pace.acquire(waiting, sleep=(lambda s: self._pace(s, run)) if run.in_flight else None)
            if self.stop.is_set() or run.stopped is not None:
                return None
        batch_id = f"{run.run_id}-{next(run.batches)}"
        while True:
            now = self.now()
            claim = ledger.claim(
                self.store,
                run.campaign_id,
                run.run_id,
                self.batch_size,
                now,
                batch_id=batch_id,
                ahead=self.transport.send_ahead,
                earlier=run.earlier,
                rest=run.rest,
            )
            if claim.campaign_status != CampaignStatus.RUNNING:
                run.stop_with(_end_by(claim.campaign_status))
                return None
            if claim.skipped:
                run.counts[DeliveryStatus.SKIPPED] += claim.skipped
                self._progress(run)
            if claim.rows:
                break
            if not claim.skipped:
                return None
        later = claim.send_at if claim.send_at is not None and claim.send_at > now else None
        return Job(
            run.campaign_id, batch_id, claim.rows, int(later.timestamp()) if later is not None else None
        )

    def _progress(self, run: _Run) -> None:
        if self.on_progress:
            self.on_progress(run.counts)


def _end_by(status: str | None) -> _Stop:
    """Why a run ends when its campaign is no longer running (None: the campaign is gone)."""
    return (_ENDS_BY_STATUS.get(CampaignStatus(status), RunEnd.DONE) if status else RunEnd.DONE, None)


def _variants(campaign: campaigns.Campaign) -> dict[int, str]:
    """The subject of each ``deliveries.variant`` of a campaign's test: each sample's, and the
    winner's for the rest once it is chosen; empty without a test."""
    variants = dict(enumerate(campaign.subjects))
    if campaign.subjects and campaign.winner is not None:
        variants[subjects.REST] = campaign.subjects[campaign.winner]
    return variants


def _kill(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers at once (they ignore SIGTERM): the rows of their batches are in doubt.
    The executor keeps no public list of its processes; ``_processes`` has been it since Python 3.2."""
    for pid in list(pool._processes):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def _rare_collections(threshold: int = GC_THRESHOLD) -> Iterator[None]:
    """Run the cyclic garbage collector every ``threshold`` allocations instead of every 700.

    A send builds a dozen short-lived containers per recipient (rows, request bodies) that reference
    counting frees; with the default threshold the collector ran every 60 or so recipients and took a
    fifth of the sender's CPU, finding nothing. Collections still happen, just less often.
    """
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@dataclass(slots=True)
class _Run:
    """One run's working state, kept on the dispatcher's own thread."""

    campaign_id: int
    run_id: str
    counts: Counter[str]
    pace: Pace
    earlier: list[int]
    """The other campaigns of the same issue: whoever they reach is skipped here."""
    rest: bool = True
    """Whether rows waiting for a subject test's winner may be claimed (it is chosen)."""
    batches: Iterator[int] = field(default_factory=itertools.count)
    in_flight: dict[Future[list[Outcome]], str] = field(default_factory=dict)
    """Batches handed to the couriers and not yet recorded, with their batch ids."""
    stopped: _Stop | None = None
    in_flight_at_stop: int = 0
    stopping_since: float | None = None
    cut_short: bool = False
    cut_short_with: Callable[[], None] = lambda: None

    def stop_with(self, reason: _Stop) -> None:
        """The first reason to stop wins; it notes how many batches were still out then."""
        if self.stopped is None:
            self.stopped = reason
            self.in_flight_at_stop = len(self.in_flight)
