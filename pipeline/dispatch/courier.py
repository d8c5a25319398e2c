"""From claimed ledger rows to one transport call: sign each recipient's links, build envelopes, send.

The dispatcher claims and records (the store has one writer); a ``Courier`` does the per-recipient work
in between. It runs on the dispatcher's threads, or, with ``delivery.processes`` above 1, in worker
processes: signing links and building a request for a thousand recipients is pure Python, and one
process (one GIL) cannot use a second core for it. A job crosses the process boundary as the claimed
rows only; the issue, the settings and the signing key reach each worker once, when it starts.

Workers ignore SIGINT and SIGTERM: the dispatcher decides when to stop (it stops claiming, lets the
batches in flight finish and records them), so a Ctrl-C or a service stop never kills a request midway.
If the dispatcher itself dies (SIGKILL, OOM), each worker notices within a second, finishes the batch it
holds (its rows stay ``sending``, so they are reported in doubt) and exits: forkserver workers are not
the dispatcher's children, so nothing else would tell them.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

from pipeline import liveness
from pipeline.dispatch.ledger import ClaimedRow
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import RenderedIssue
from pipeline.settings import SECRET_ENV_NAMES, Settings, secret
from pipeline.transports import open_transport
from pipeline.transports.base import Batch, Envelope, Outcome, Transport

GC_THRESHOLD = 10_000
"""Allocations between two runs of the cyclic garbage collector while sending (the default is 700): a
send allocates short-lived rows and request bodies that reference counting frees; see ``dispatch``."""


class Job(NamedTuple):
    """One claim on its way to the transport: all a worker needs besides what it got at start."""

    campaign_id: int
    batch_id: str
    rows: list[ClaimedRow]
    send_at: int | None
    """Unix time the provider should deliver at (``Batch.send_at``); None: now."""


class Courier:
    """Sends claims of one campaign; ``variants`` maps a row's ``variant`` to its subject (a subject
    test's samples, and the rest once the winner is known)."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        links: Links,
        rendered: RenderedIssue,
        variants: Mapping[int, str] | None = None,
    ) -> None:
        self.transport = transport
        self.links = links
        self.rendered = rendered
        self.message = MessageTemplate(settings, rendered)
        self.variants: dict[int | None, tuple[RenderedIssue, MessageTemplate]] = {
            variant: (
                issue := dataclasses.replace(rendered, subject=subject),
                MessageTemplate(settings, issue),
            )
            for variant, subject in (variants or {}).items()
        }
        """Each variant's issue and message template, built once."""

    def deliver(self, job: Job) -> list[Outcome]:
        """Personalise the claimed rows and hand them to the transport: one batch, or one for each
        subject of a test's rows in the claim."""
        if not self.variants:
            return self.transport.send(self.batch(job, self.envelopes(job.rows)))
        groups: dict[int | None, list[ClaimedRow]] = {}
        for row in job.rows:
            groups.setdefault(row[5], []).append(row)
        outcomes = []
        for variant, rows in groups.items():
            outcomes += self.transport.send(self.batch(job, self.envelopes(rows), variant))
        return outcomes

    def envelopes(self, rows: list[ClaimedRow]) -> list[Envelope]:
        """Each claimed row with its personal fields (signed links): the per-recipient work."""
        fields = self.links.fields
        return [
            Envelope(
                delivery_id,
                Recipient(subscriber_id, email, name, timezone),
                fields(subscriber_id, email, name),
            )
            for delivery_id, subscriber_id, email, name, timezone, _variant in rows
        ]

    def batch(self, job: Job, envelopes: list[Envelope], variant: int | None = None) -> Batch:
        # Rows waiting for a test's winner have no subject here, and are never claimed before it.
        rendered, message = self.variants.get(variant, (self.rendered, self.message))
        with_id = message.for_campaign(job.campaign_id)  # with its Feedback-ID
        return Batch(job.campaign_id, rendered, with_id, envelopes, job.send_at)


_courier: Courier | None = None
"""The worker process's own courier, built by ``_start_worker``."""
_busy = threading.Lock()
"""Held while the worker delivers a batch: an orphaned worker exits only between batches."""
ORPHAN_CHECK_SECONDS = 0.5


def worker_pool(
    processes: int,
    settings: Settings,
    transport_name: str,
    links: Links,
    rendered: RenderedIssue,
    variants: Mapping[int, str],
) -> ProcessPoolExecutor:
    """``processes`` workers, each with its own transport, opened from the settings and the secrets in
    this process's environment *now*: the forkserver outlives a pool and keeps the environment it was
    started with, so the secrets go along explicitly (through a pipe, never a file or a log)."""
    # Not fork: the dispatcher has threads, and a fork copies whatever locks they hold at that moment.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    secrets = {name: secret(name) for name in SECRET_ENV_NAMES}
    return ProcessPoolExecutor(
        processes,
        mp_context=context,
        initializer=_start_worker,
        initargs=(settings, transport_name, links, rendered, dict(variants), secrets, os.getpid()),
    )


def wait_until_started(pool: ProcessPoolExecutor, processes: int) -> set[int]:
    """Return once the pool's workers are up (each started and opened its transport), with their pids:
    rows claimed before that would sit `sending` with nobody to send them, and be in doubt after a kill."""
    return {future.result() for future in [pool.submit(_started) for _ in range(processes)]}


def _started() -> int:
    """A task that holds its worker a moment, so the next one goes to (and starts) another worker."""
    time.sleep(0.05)
    return os.getpid()


def _start_worker(
    settings: Settings,
    transport_name: str,
    links: Links,
    rendered: RenderedIssue,
    variants: dict[int, str],
    secrets: dict[str, str | None],
    dispatcher_pid: int,
) -> None:
    global _courier
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    for name, value in secrets.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _courier = Courier(settings, open_transport(settings, transport_name), links, rendered, variants)
    threading.Thread(target=_exit_after, args=(dispatcher_pid,), name="orphan-watch", daemon=True).start()


def _exit_after(dispatcher_pid: int) -> None:
    """Exit once the dispatcher is gone, but never in the middle of a batch."""
    while liveness.running(dispatcher_pid):
        time.sleep(ORPHAN_CHECK_SECONDS)
    with _busy:
        os._exit(0)


def deliver_in_worker(job: Job) -> list[Outcome]:
    if _courier is None:
        raise RuntimeError("deliver_in_worker runs only in a worker started by worker_pool")
    with _busy:
        return _courier.deliver(job)
