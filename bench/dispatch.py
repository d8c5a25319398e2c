"""Dispatch throughput and memory, end to end: `python bench/dispatch.py [--recipients N] [--smtp-recipients M]`.

Against the ceiling (``--ceiling-recipients C``, 200,000; ``--rounds R``, 3): the SendGrid emulator runs
as one process; in turn, R times, a minimal client posts C recipients' worth of pre-built request bodies
(built by our transport for subscribers shaped like the generated ones, so of the same size and shape)
over keep-alive ``http.client`` connections, as many at once as our send has in flight, and our send
(plan, freeze, dispatcher, paced by the campaign's pace in the store as `newsletter send` is) sends C
generated subscribers on a fresh copy of one store. Each prints
recipients/s, CPU per recipient and the emulator's share of a core; the medians give the ratio. The
sender's CPU is this process's (``time.process_time``, every thread; the emulator is another process),
with the send loop's own thread apart (it claims and records), and a serial pass over another fresh
copy times each step alone (claim, sign, build, the library's request, record) with ``thread_time``.
Beside them, the ledger's floor: the very statements claim and record run for each batch, compiled
once and run on a third fresh copy through ``sqlite3`` with no Python of ours around them.

SendGrid: N subscribers are generated straight into a fresh temp SQLite store (bulk inserts, in a child
process so the sender starts clean), the SendGrid emulator runs as a separate process
(``python -m tests.emulators.sendgrid --record recipients``), and the sample issue is sent through the
library exactly as `newsletter send` does it: plan (check, render, count), freeze (campaign + one ledger
row per recipient), then the dispatcher (claim 1000, personalise, one API request, record). RSS of this
process is sampled from /proc/self/status in the progress callback. At the end the emulator's recipient
count must equal N and every ledger row must be ``sent``.

SMTP: M subscribers through the SMTP transport to an aiosmtpd sink in another process
(``--smtp-sink raw``: a bare receiver that is not itself the bottleneck; ``--smtp-connections K``).

``--processes P`` sets ``delivery.processes`` for both sends (default: settings.toml's, 1). With P > 1
the worker processes' CPU and PSS (shared pages split among them) are printed beside this process's.

``--profile`` runs the SendGrid part under py-spy (every thread; `pip install py-spy`) and prints where
the send's time goes per thread; without py-spy it falls back to cProfile (main thread only). It covers
this process only: use it with ``--processes 1``.
Not part of `make test`; the figures and targets are printed, and the exit status is 1 only if a
count is wrong (a missed speed target is reported, not failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import http.client
import io
import itertools
import json
import os
import pstats
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert
from sqlalchemy.dialects import sqlite as sqlite_dialect

from pipeline.dispatch import campaigns, ledger
from pipeline.dispatch.courier import Courier, Job
from pipeline.dispatch.dispatcher import Dispatcher, RunReport
from pipeline.dispatch.plan import checked_issue, plan_send, start_campaign
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.settings import Settings, load_settings
from pipeline.store.engine import Store, connect
from pipeline.store.tables import subscribers
from pipeline.tokens import Signer
from pipeline.transports.base import Batch, Envelope
from pipeline.transports.sendgrid import SendGridTransport
from pipeline.transports.smtp import SmtpTransport

ROOT = Path(__file__).resolve().parents[1]
ISSUE = ROOT / "issues" / "2026-12-01-name-it-to-tame-it.yaml"
KEY = b"bench-dispatch-signing-key-0123456789abcdef"
API_KEY = "SG.bench-dispatch"
INSERT_ROWS = 20_000
RSS_MARK = 100_000
EMULATOR = ("-m", "tests.emulators.sendgrid", "--port", "0", "--api-key", API_KEY, "--record", "recipients")


# -- helpers ---------------------------------------------------------------------------------------


def memory_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in kB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _unit = line.split()
                values[name[:-1]] = int(amount)
    return values["VmRSS"], values["VmHWM"]


def descendants(pid: int, exclude: set[int]) -> list[int]:
    """Every process under ``pid`` (worker processes sit under the forkserver), minus ``exclude``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii").rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in exclude:
                found.append(child)
                todo.append(child)
    return found


def pss_kb(pid: int) -> int:
    """Proportional set size: RSS with pages shared between processes (the forkserver's imports) split
    among them, so worker memory adds up honestly."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii").splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so the peak measured is the send's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mb(kb: int) -> str:
    return f"{kb / 1024:,.1f} MB"


def open_bench_store(settings: Settings) -> Store:
    return connect(settings.store_url, KEY, segments_file=settings.path(settings.newsletter.segments_file))


def bench_settings(db: Path, **sections: dict[str, Any]) -> Settings:
    """The repository's settings (issues, templates, segments from the repo) with a temp store."""
    base = load_settings(ROOT / "settings.toml")
    update: dict[str, Any] = {"store": base.store.model_copy(update={"url": f"sqlite:///{db}"})}
    for name, values in sections.items():
        update[name] = getattr(base, name).model_copy(update=values)
    return base.model_copy(update=update)


# -- child processes -------------------------------------------------------------------------------


def generate(db: Path, count: int) -> None:
    """``count`` active subscribers, inserted in bulk with SQLAlchemy Core (the importer's row shape)."""
    settings = bench_settings(db)
    with open_bench_store(settings) as store:
        now = dt.datetime.now(dt.UTC)
        source = "bench:dispatch"
        for start in range(1, count + 1, INSERT_ROWS):
            rows = []
            for i in range(start, min(start + INSERT_ROWS, count + 1)):
                email = f"reader{i:07d}@example.com"
                rows.append(
                    {
                        "email": email,
                        "email_key": email,
                        "address_hash": store.address_hash(email),
                        "name": f"Reader {i}" if i % 5 else None,
                        "status": "active",
                        "attributes": {},
                        "timezone": None,
                        "source": source,
                        "created_at": now,
                        "updated_at": now,
                        "confirmed_at": now,
                        "unsubscribed_at": None,
                    }
                )
            with store.write() as conn:
                conn.execute(insert(subscribers), rows)


@dataclass
class SinkCounts:
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    cpu_seconds: float = 0.0

    def accepted(self, recipients: int, size: int) -> None:
        self.messages += 1
        self.recipients += recipients
        self.bytes += size
        self.cpu_seconds = time.process_time()


class RawSmtpSink(asyncio.Protocol):
    """A bare SMTP receiver (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that finds the end of DATA with
    one ``bytes.find`` per read instead of parsing lines: shows what the *sender* can do when the sink
    is not the bottleneck. Never use it to check message content."""

    def __init__(self, counts: SinkCounts) -> None:
        self.counts = counts
        self.buffer = b""
        self.in_data = False
        self.rcpts = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                self.counts.accepted(self.rcpts, end + 2)
                self.buffer, self.in_data, self.rcpts = self.buffer[end + 5 :], False, 0
                replies.append(b"250 OK queued\r\n")
                continue
            line, found, rest = self.buffer.partition(b"\r\n")
            if not found:
                break
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                replies.append(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n")
            elif verb == b"RCPT":
                self.rcpts += 1
                replies.append(b"250 OK\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.buffer = b"\r\n" + self.buffer  # so an empty message still ends in CRLF.CRLF
                replies.append(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 bye\r\n")
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            else:  # HELO, MAIL, RSET, NOOP
                replies.append(b"250 OK\r\n")
        if replies:
            self.transport.write(b"".join(replies))


def smtp_sink(port: int, kind: str) -> None:
    """An SMTP server that counts what it accepts; prints the counts as JSON on SIGTERM.

    ``aiosmtpd`` (the library the tests use) or ``raw`` (``RawSmtpSink``, to find the sender's own limit).
    """
    counts = SinkCounts()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if kind == "raw":
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(lambda: RawSmtpSink(counts), "127.0.0.1", port))
        print("ready", flush=True)
        while not stop.is_set():
            loop.run_until_complete(asyncio.sleep(0.2))
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    else:
        from aiosmtpd.controller import Controller

        class Counting:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                counts.accepted(len(envelope.rcpt_tos), len(envelope.original_content or b""))
                return "250 OK"

        controller = Controller(Counting(), hostname="127.0.0.1", port=port)
        controller.start()
        print("ready", flush=True)
        while not stop.wait(0.2):
            pass
        controller.stop()
    print(json.dumps(vars(counts)), flush=True)


def child(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, *EMULATOR],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise SystemExit(f"the emulator did not start (said {url!r})")
    return process, url


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def emulator_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=60) as response:
        stats: dict[str, int] = json.load(response)
        return stats


def emulator_reset(url: str) -> None:
    """Forget what the emulator recorded: each measured run starts it from the same (empty) state."""
    request = urllib.request.Request(f"{url}/_emulator/reset", b"", method="POST")
    urllib.request.urlopen(request, timeout=60).close()


# -- the measured part -----------------------------------------------------------------------------


@dataclass
class Sampler:
    """Progress callback: notes RSS when the run passes RSS_MARK recipients, and the highest RSS seen."""

    mark: int = RSS_MARK
    at_mark: int | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    not_workers: set[int] = field(default_factory=set)
    """Child processes that are not ours to count (the emulator)."""
    workers_peak: int = 0
    """Highest sum of the worker processes' PSS seen (``delivery.processes`` > 1), kB."""
    workers_cpu: dict[int, float] = field(default_factory=dict)
    """CPU seconds each worker process had used when last looked at."""

    def __call__(self, counts: Counter[str]) -> None:
        done = counts["sent"] + counts["failed"] + counts["skipped"] + counts["in_doubt"]
        rss, _ = memory_kb()
        if self.at_mark is None and done >= self.mark:
            self.at_mark = rss
        if not self.samples or done - self.samples[-1][1] >= 100_000:
            self.samples.append((time.perf_counter() - self.started, done, rss))
            workers = descendants(os.getpid(), self.not_workers)
            self.workers_peak = max(self.workers_peak, sum(pss_kb(pid) for pid in workers))
            self.workers_cpu.update(dict.fromkeys(set(workers) - set(self.workers_cpu), 0.0))
        for pid in self.workers_cpu:
            with contextlib.suppress(OSError):  # exited: keep what it had used
                self.workers_cpu[pid] = cpu_seconds(pid)


@dataclass
class Timings:
    plan: float = 0.0
    freeze: float = 0.0
    send: float = 0.0
    report: float = 0.0
    send_cpu: float = 0.0
    """CPU seconds of this process (every thread) during the send."""
    loop_cpu: float = 0.0
    """CPU seconds of the send loop's own thread (claims, records) during the send."""

    @property
    def total(self) -> float:
        return self.plan + self.freeze + self.send + self.report


def send_campaign(
    settings: Settings, transport: Any, sampler: Sampler, profile: str | None
) -> tuple[Timings, RunReport, campaigns.CampaignReport]:
    timings = Timings()
    with open_bench_store(settings) as store:
        links = Links(settings, store.signer)
        t0 = time.perf_counter()
        plan = plan_send(store, settings, ISSUE, links)
        t1 = time.perf_counter()
        campaign, created = start_campaign(store, plan, transport.name)
        t2 = time.perf_counter()
        assert created, "a fresh store has no campaign yet"
        dispatcher = Dispatcher(
            store,
            settings,
            transport,
            links,
            limiter=None,  # the campaign's pace in the store, as `newsletter send` keeps it
            on_progress=sampler,
            batch_size=settings.delivery.batch_size,
        )
        sampler.started = time.perf_counter()
        cpu, loop_cpu = time.process_time(), time.thread_time()
        if profile == "cprofile":
            profiler = cProfile.Profile()
            run = profiler.runcall(dispatcher.run, campaign.id)
        else:
            run = dispatcher.run(campaign.id)
        t3 = time.perf_counter()
        timings.send_cpu = time.process_time() - cpu
        timings.loop_cpu = time.thread_time() - loop_cpu
        final = campaigns.report(store, campaign.id)
        t4 = time.perf_counter()
        transport.close()
    timings.plan, timings.freeze, timings.send, timings.report = t1 - t0, t2 - t1, t3 - t2, t4 - t3
    if profile == "cprofile":
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print("\ncProfile of the send (main thread only; transport threads not shown), by own time:")
        print(text.getvalue())
    return timings, run, final


def print_run(label: str, n: int, timings: Timings, run: RunReport, final: campaigns.CampaignReport) -> None:
    print(f"{label}: {n:,} recipients")
    print(f"  plan (check + render + count)  {timings.plan:8.2f} s")
    print(f"  freeze (campaign + ledger)     {timings.freeze:8.2f} s")
    print(
        f"  send (claim, send, record)     {timings.send:8.2f} s   {n / timings.send:10,.0f} msg/s"
        f"   (sender CPU {timings.send_cpu:.1f} s = {timings.send_cpu / timings.send:.0%} of a core)"
    )
    print(f"  final ledger report            {timings.report:8.2f} s")
    print(f"  end to end                     {timings.total:8.2f} s   {n / timings.total:10,.0f} msg/s")
    print(f"  this run: {dict(run.counts)}; campaign {final.campaign.status}: {dict(final.counts)}")


def bench_sendgrid(n: int, workdir: Path, profile: str | None, processes: int) -> bool:
    db = workdir / "sendgrid.db"
    t0 = time.perf_counter()
    generator = child("generate", "--db", str(db), "--count", str(n))
    if generator.wait() != 0:
        raise SystemExit("generating subscribers failed")
    print(f"generated {n:,} subscribers into {db} in {time.perf_counter() - t0:.1f} s (not counted below)")

    emulator, url = start_emulator()
    try:
        settings = bench_settings(
            db,
            delivery={"batch_size": 1000, "rate_per_second": 1e9, "processes": processes},
            sendgrid={"host": url, "timeout": 60.0},
        )
        os.environ["SENDGRID_API_KEY"] = API_KEY  # worker processes open their transport from the env
        transport = SendGridTransport(settings, API_KEY)
        sampler = Sampler(not_workers={emulator.pid})
        emulator_cpu = cpu_seconds(emulator.pid)
        reset_peak()
        rss_start, _ = memory_kb()
        timings, run, final = send_campaign(settings, transport, sampler, profile)
        rss_end, peak = memory_kb()
        stats = emulator_stats(url)
        emulator_cpu = cpu_seconds(emulator.pid) - emulator_cpu
    finally:
        stop(emulator)

    in_flight = f"{processes} worker processes" if processes > 1 else f"concurrency {transport.concurrency}"
    print_run(f"SendGrid (emulator in its own process; {in_flight})", n, timings, run, final)
    if processes == 1:  # with worker processes the counters live in the workers
        print(f"  requests {transport.stats.requests:,}, retries {transport.stats.retries}")
    at_mark = sampler.at_mark or rss_end
    print(
        f"  RSS: start {mb(rss_start)}, at {min(RSS_MARK, n):,} {mb(at_mark)}, at {n:,} {mb(rss_end)}, "
        f"peak {mb(peak)} (ratio end/{min(RSS_MARK, n):,}: {rss_end / at_mark:.2f})"
    )
    print("  RSS along the send (s, recipients, RSS): " + ", ".join(
        f"({t:.1f}, {d:,}, {mb(r)})" for t, d, r in sampler.samples
    ))  # fmt: skip
    if processes > 1:
        print(
            f"  worker processes: CPU {sum(sampler.workers_cpu.values()):.1f} s together; "
            f"PSS {mb(sampler.workers_peak)} together at the highest sample (forkserver included)"
        )
    print(f"  emulator: {stats}; its CPU during plan + freeze + send {emulator_cpu:.1f} s")
    ok = stats["recipients"] == n and final.counts == Counter({"sent": n})
    targets: list[tuple[str, bool]] = [
        ("peak RSS ≤ 150 MB", peak <= 150 * 1024),
        ("RSS flat: at N ≤ 1.2 x at 100k", rss_end <= 1.2 * at_mark),
        ("emulator saw exactly N recipients, ledger all sent", ok),
    ]
    if n >= 1_000_000:
        targets.insert(0, ("1M via SendGrid ≤ 30 s end to end", timings.total <= 30.0))
    else:
        projected = timings.total * 1_000_000 / n
        print(
            f"  [n/a] 1M via SendGrid ≤ 30 s end to end: N={n:,} here (linear projection {projected:.0f} s)"
        )
    for name, met in targets:
        print(f"  [{'met' if met else 'MISSED'}] {name}")
    return ok


# -- our send against the ceiling ------------------------------------------------------------------

CEILING_BODIES = 8
"""Distinct pre-built request bodies the ceiling client cycles through: the emulator parses, checks and
records each request anew, so a repeated body costs it what a fresh one does, and a few megabytes of
bodies stand for the whole send."""


def ceiling_bodies(settings: Settings, transport: SendGridTransport, count: int, size: int) -> list[bytes]:
    """``count`` request bodies of ``size`` recipients each, built by our own transport for subscribers
    shaped like the generated ones (same addresses, names and id widths): the same size and shape as
    the requests of our send, made before the clock starts."""
    links = Links(settings, Signer(KEY))
    _, rendered = checked_issue(ISSUE, settings, links)
    message = MessageTemplate(settings, rendered).for_campaign(1)
    bodies = []
    for first in range(1, count * size, size):
        envelopes = []
        for i in range(first, first + size):
            recipient = Recipient(i, f"reader{i:07d}@example.com", f"Reader {i}" if i % 5 else None)
            envelopes.append(Envelope(i, recipient, links.personal_fields(recipient)))
        bodies.append(transport.request_payload(Batch(1, rendered, message, envelopes), envelopes))
    return bodies


def ceiling_send(url: str, bodies: list[bytes], requests: int, concurrency: int) -> tuple[float, float]:
    """The ceiling: ``requests`` pre-built bodies posted over ``concurrency`` keep-alive connections
    (http.client, nothing else per request). Returns (seconds, CPU seconds of this process)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    turns = itertools.count()
    refused: list[int] = []

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        try:
            while (turn := next(turns)) < requests:
                connection.request("POST", "/v3/mail/send", bodies[turn % len(bodies)], headers)
                response = connection.getresponse()
                response.read()
                if response.status != 202:
                    refused.append(response.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if refused:
        raise SystemExit(f"the emulator refused {len(refused)} ceiling requests (status {refused[0]})")
    return seconds, cpu


@dataclass
class Leg:
    """One measured send of N recipients: ours or the ceiling's."""

    seconds: float
    cpu: float
    """CPU seconds of the sender (this process and any worker processes)."""
    emulator_cpu: float
    loop_cpu: float = 0.0
    """Of ``cpu``, the send loop's thread (claims and records); the rest is the couriers'."""

    def rate(self, n: int) -> float:
        return n / self.seconds

    def line(self, n: int) -> str:
        return (
            f"{self.rate(n):9,.0f}/s  {self.cpu / n * 1e6:5.1f} µs CPU/recipient"
            f" ({self.cpu / self.seconds:4.0%} of a core; emulator {self.emulator_cpu / self.seconds:4.0%})"
        )


BREAKDOWN = (
    "claim (SQL: pick, re-check suppression, mark sending)",
    "sign two links, make the envelopes",
    "build the request body",
    "the sendgrid library's request (CPU only)",
    "record (SQL: mark sent)",
)


def breakdown(settings: Settings) -> dict[str, float]:
    """CPU seconds of each step of a send, timed alone: every batch of a fresh campaign claimed, signed,
    built, posted and recorded one after another on this thread (``thread_time``, so the time spent
    waiting for the emulator is not in it). Sending builds the body again: that build is taken off."""
    steps = dict.fromkeys(BREAKDOWN, 0.0)
    claim, sign, build, post, record = BREAKDOWN
    transport = SendGridTransport(settings, API_KEY)
    with open_bench_store(settings) as store:
        links = Links(settings, store.signer)
        campaign, _ = start_campaign(store, plan_send(store, settings, ISSUE, links), transport.name)
        campaigns.start(store, campaign.id)
        run_id = ledger.start_run(store, campaign.id)
        courier = Courier(settings, transport, links, campaigns.load_rendered(store, campaign.id))
        size = min(settings.delivery.batch_size, transport.max_batch)
        for number in itertools.count():
            batch_id = f"{run_id}-{number}"
            started = time.thread_time()
            claimed = ledger.claim(
                store, campaign.id, run_id, size, batch_id=batch_id, ahead=transport.send_ahead
            )
            signing = time.thread_time()
            steps[claim] += signing - started
            if not claimed.rows:
                break
            job = Job(campaign.id, batch_id, claimed.rows, None)
            envelopes = courier.envelopes(job.rows)
            building = time.thread_time()
            steps[sign] += building - signing
            batch = courier.batch(job, envelopes)
            transport.request_payload(batch, envelopes)
            sending = time.thread_time()
            steps[build] += sending - building
            outcomes = transport.send(batch)
            recording = time.thread_time()
            steps[post] += recording - sending - (sending - building)
            ledger.record(store, outcomes, (campaign.id, batch_id))
            steps[record] += time.thread_time() - recording
        ledger.end_run(store, run_id)
    return steps


def _driver_sql(statement: Any) -> tuple[str, dict[str, Any]]:
    """``statement`` as SQLite runs it: its text with named parameters, and the values it carries."""
    compiled = statement.compile(dialect=sqlite_dialect.dialect(paramstyle="named"))
    return str(compiled), {name: value for name, value in compiled.params.items() if value is not None}


def ledger_floor(settings: Settings, size: int) -> float:
    """CPU seconds of the ledger's own SQL in a send, run with nothing of ours around it: every statement
    ``ledger.claim`` and ``ledger.record`` run for a batch of a fresh campaign (campaign status, first due
    row, pick, re-check consent and suppression, mark sending, heartbeat, commit; mark sent, commit),
    compiled once and run through ``sqlite3`` directly: what the per-recipient ledger costs SQLite itself."""
    claim_sql = ledger._claim_sql(False, False)
    statements = {
        "status": _driver_sql(ledger._CAMPAIGN_STATUS),
        "first_due": _driver_sql(ledger._claim_sql(False, None).first_due),
        **{
            name: _driver_sql(getattr(claim_sql, name))
            for name in ("pick", "not_allowed", "mark", "heartbeat")
        },
        "sent": _driver_sql(ledger._RECORD_SENT),
    }
    with open_bench_store(settings) as store:
        links = Links(settings, store.signer)
        campaign, _ = start_campaign(store, plan_send(store, settings, ISSUE, links), SendGridTransport.name)
        campaigns.start(store, campaign.id)
        run_id = ledger.start_run(store, campaign.id)
        # The store's own connection (its pragmas), driven through sqlite3 with no SQLAlchemy around it.
        with contextlib.closing(store.engine.raw_connection()) as connection:
            return _ledger_sql(connection.driver_connection, statements, campaign.id, run_id, size)


def _ledger_sql(
    db: sqlite3.Connection,
    statements: dict[str, tuple[str, dict[str, Any]]],
    campaign_id: int,
    run_id: str,
    size: int,
) -> float:
    """``ledger_floor``'s timed part: every batch of the campaign claimed and recorded by ``statements``."""

    def run(name: str, values: dict[str, Any]) -> sqlite3.Cursor:
        text, carried = statements[name]
        return db.execute(text, carried | values)

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(" ")
    spent = 0.0
    for number in itertools.count():
        batch = f"{run_id}-{number}"
        values = {"campaign": campaign_id, "due_by": now, "rest": True, "size": size, "run": run_id}
        started = time.thread_time()
        db.execute("BEGIN IMMEDIATE")
        run("status", values).fetchone()
        run("first_due", values).fetchone()
        rows = orjson.loads(run("pick", values).fetchone()[0])
        if not rows:
            db.execute("COMMIT")
            break
        values |= {"first": rows[0][0], "last": rows[-1][0], "batch": batch, "now": now}
        run("not_allowed", values).fetchall()
        marked = run("mark", values).rowcount
        run("heartbeat", values)
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        recorded = run("sent", values | {"message": f"message-{number}", "error": None}).rowcount
        db.execute("COMMIT")
        spent += time.thread_time() - started
        if not marked == recorded == len(rows):
            raise SystemExit(f"the ledger's floor: {len(rows)} rows picked, {marked} marked, {recorded} sent")
    return spent


def bench_ceiling(n: int, workdir: Path, rounds: int, processes: int) -> bool:
    """Our send of N recipients against the ceiling, interleaved ``rounds`` times against one emulator
    process: ceiling, ours, ceiling, ours… (each of ours on a fresh copy of one generated store); then
    the serial pass that breaks the sender's CPU down by step."""
    base = workdir / "ceiling.db"
    if child("generate", "--db", str(base), "--count", str(n)).wait() != 0:
        raise SystemExit("generating subscribers failed")
    emulator, url = start_emulator()
    ours: list[Leg] = []
    ceiling: list[Leg] = []
    ok = True
    try:
        copy = workdir / "ceiling-run.db"
        settings = bench_settings(
            copy,
            delivery={"batch_size": 1000, "rate_per_second": 1e9, "processes": processes},
            sendgrid={"host": url, "timeout": 60.0},
        )
        os.environ["SENDGRID_API_KEY"] = API_KEY
        size = min(settings.delivery.batch_size, SendGridTransport.max_batch)
        concurrency = processes if processes > 1 else settings.sendgrid.concurrency
        bodies = ceiling_bodies(settings, SendGridTransport(settings, API_KEY), CEILING_BODIES, size)
        requests = -(-n // size)
        for _ in range(rounds):
            emulator_reset(url)
            before = cpu_seconds(emulator.pid)
            seconds, cpu = ceiling_send(url, bodies, requests, concurrency)
            ceiling.append(Leg(seconds, cpu, cpu_seconds(emulator.pid) - before))
            ok &= emulator_stats(url)["recipients"] == requests * size

            shutil.copy(base, copy)
            emulator_reset(url)
            sampler = Sampler(not_workers={emulator.pid})
            before = cpu_seconds(emulator.pid)
            timings, _, final = send_campaign(settings, SendGridTransport(settings, API_KEY), sampler, None)
            workers = sum(sampler.workers_cpu.values())
            emulator_cpu = cpu_seconds(emulator.pid) - before
            ours.append(Leg(timings.send, timings.send_cpu + workers, emulator_cpu, timings.loop_cpu))
            ok &= emulator_stats(url)["recipients"] == n and final.counts == Counter({"sent": n})
        shutil.copy(base, copy)
        emulator_reset(url)
        steps = breakdown(settings)
        ok &= emulator_stats(url)["recipients"] == n
        shutil.copy(base, copy)
        sql_floor = ledger_floor(settings, size)
    finally:
        stop(emulator)

    in_flight = f"{processes} worker processes" if processes > 1 else f"{concurrency} requests in flight"
    print(
        f"SendGrid against the ceiling: {n:,} recipients a run, {size} a request, {in_flight}, "
        f"{rounds} rounds interleaved, one emulator process"
    )
    print(
        f"  ceiling: a keep-alive http.client posting pre-built bodies ({len(bodies[0]) / 1024:,.0f} KB each)"
    )
    print("  ours: claim, sign two links, build the body, the sendgrid library's request, record")
    for index, (top, mine) in enumerate(zip(ceiling, ours, strict=True), 1):
        print(f"  round {index}: ceiling {top.line(n)}")
        print(f"           ours    {mine.line(n)}   ratio {mine.rate(n) / top.rate(n):.2f}")
    top_rate = statistics.median(leg.rate(n) for leg in ceiling)
    our_rate = statistics.median(leg.rate(n) for leg in ours)
    our_cpu = statistics.median(leg.cpu / n * 1e6 for leg in ours)
    loop = statistics.median(leg.loop_cpu / n * 1e6 for leg in ours)
    print(
        f"  median: ceiling {top_rate:,.0f}/s, ours {our_rate:,.0f}/s, ratio {our_rate / top_rate:.2f}; "
        f"sender CPU {our_cpu:.1f} µs per recipient ({loop:.1f} of it the send loop's thread, which claims "
        f"and records; {our_cpu - loop:.1f} the couriers)"
    )
    print(
        "  sender CPU per recipient by step, each timed alone on one thread (a serial send of a fresh copy):"
    )
    for step, seconds in steps.items():
        print(f"    {step:54s} {seconds / n * 1e6:5.1f} µs")
    print(f"    {'together':54s} {sum(steps.values()) / n * 1e6:5.1f} µs")
    print(
        f"  the ledger's floor: claim's and record's SQL alone, through sqlite3 with nothing around it: "
        f"{sql_floor / n * 1e6:.1f} µs per recipient"
    )
    for name, met in (
        ("our send ≥ 0.8 x the ceiling", our_rate >= 0.8 * top_rate),
        ("sender CPU ≤ 10 µs per recipient", our_cpu <= 10.0),
        ("the emulator saw exactly N recipients each run, ledger all sent", ok),
    ):
        print(f"  [{'met' if met else 'MISSED'}] {name}")
    return ok


def bench_smtp(m: int, workdir: Path, connections: int | None, sink_kind: str, processes: int) -> bool:
    db = workdir / "smtp.db"
    generator = child("generate", "--db", str(db), "--count", str(m))
    if generator.wait() != 0:
        raise SystemExit("generating subscribers failed")
    port = free_port()
    sink = child("sink", "--port", str(port), "--sink", sink_kind)
    assert sink.stdout is not None
    if sink.stdout.readline().strip() != "ready":
        sink.kill()
        raise SystemExit("the SMTP sink did not start")
    try:
        settings = bench_settings(
            db,
            delivery={"batch_size": 1000, "rate_per_second": 1e9, "processes": processes},
            smtp={"host": "127.0.0.1", "port": port, "security": "none"}
            | ({"connections": connections} if connections else {}),
        )
        transport = SmtpTransport(settings, None)
        timings, run, final = send_campaign(settings, transport, Sampler(), None)
    finally:
        received = json.loads(stop(sink).strip().splitlines()[-1])
    in_flight = f"{processes} worker processes" if processes > 1 else f"{transport.concurrency} connections"
    print_run(
        f"SMTP ({sink_kind} sink in its own process; {in_flight})",
        m,
        timings,
        run,
        final,
    )
    print(
        f"  sink: {received['messages']:,} messages, {received['bytes'] / received['messages'] / 1024:.1f} KB"
        f" each; sink CPU {received['cpu_seconds']:.1f} s"
    )
    ok = received["recipients"] == m and final.counts == Counter({"sent": m})
    print(f"  [{'met' if m / timings.send >= 1000 else 'MISSED'}] SMTP ≥ 1,000 msg/s (send phase)")
    print(f"  [{'met' if ok else 'MISSED'}] sink saw exactly M recipients, ledger all sent")
    return ok


MAIN_STEPS = (
    ("ledger.claim (SQL, rows as tuples)", "claim (pipeline/dispatch/ledger.py"),
    ("ledger.record", "record (pipeline/dispatch/ledger.py"),
    ("the pace (SharedPace, in the store)", "(pipeline/dispatch/ratelimit.py"),
    ("waiting for a transport call", "wait (concurrent/futures"),
    ("progress callback", "_progress"),
)
SEND_STEPS = (
    ("signed links, envelopes (Courier.envelopes)", "Courier.envelopes"),
    ("request body (JSON written from the values)", "request_payload"),
    ("waiting for the response", "readinto"),
    ("connect", "create_connection"),
    ("sending the body", "_send_output"),
    ("MIME message per recipient", "MessageTemplate.build"),
    ("SMTP dialogue", "smtplib.py"),
    ("python_http_client + urllib (encode, opener)", "http_request"),
    ("idle (no batch to send)", None),
)


def summarise_profile(path: Path, rate: int) -> None:
    """Where the send's time goes, per thread, from py-spy's collapsed stacks (one sample = 1/rate s)."""
    main_steps: Counter[str] = Counter()
    send_steps: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = stack.split(";")
        if "Dispatcher.run" in stack:
            step = next((label for label, key in MAIN_STEPS if key in stack), "other (dispatch loop)")
            main_steps[step] += samples
        elif "_WorkItem.run" in stack or frames[-1].startswith("_worker"):
            idle = frames[-1].startswith("_worker")
            step = "idle (no batch to send)" if idle else None
            step = step or next((label for label, key in SEND_STEPS if key and key in stack), "other")
            send_steps[step] += samples
        else:
            continue
        if frames[-1].startswith("_worker"):
            continue
        leaves[frames[-1].split(" (")[0] + " (" + frames[-1].rpartition("(")[2].split(":")[0] + ")"] += (
            samples
        )
    for title, steps in (
        ("main thread (claims, records)", main_steps),
        ("send threads (links, requests)", send_steps),
    ):
        total = sum(steps.values()) or 1
        print(f"\n{title}: {total / rate:.1f} s sampled")
        for label, samples in steps.most_common():
            print(f"  {samples / rate:7.2f} s  {samples / total:6.1%}  {label}")
    total = sum(leaves.values()) or 1
    print("\nfunctions by own time (both, idle excluded):")
    for name, samples in leaves.most_common(20):
        print(f"  {samples / rate:7.2f} s  {samples / total:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000, help="SendGrid recipients (N)")
    parser.add_argument(
        "--ceiling-recipients",
        type=int,
        default=200_000,
        help="recipients of each run against the ceiling (C); 0: skip  [default: 200,000]",
    )
    parser.add_argument("--rounds", type=int, default=3, help="ceiling/ours pairs  [default: 3]")
    parser.add_argument("--smtp-recipients", type=int, default=20_000, help="SMTP recipients (M); 0: skip")
    parser.add_argument(
        "--smtp-sink",
        choices=("aiosmtpd", "raw"),
        default="aiosmtpd",
        help="the SMTP server: aiosmtpd, or a bare one that is not the bottleneck  [default: aiosmtpd]",
    )
    parser.add_argument("--sink", default="aiosmtpd", help=argparse.SUPPRESS)
    parser.add_argument(
        "--smtp-connections", type=int, help="parallel SMTP connections  [default: smtp.connections]"
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="delivery.processes for both sends  [default: settings.toml's]",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the SendGrid send (py-spy or cProfile)"
    )
    parser.add_argument("--role", choices=("generate", "sink"), help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "generate":
        generate(args.db, args.count)
        return
    if args.role == "sink":
        smtp_sink(args.port, args.sink)
        return
    profile = None
    if args.profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if Path(spy).exists() and os.environ.get("BENCH_UNDER_PYSPY") is None:
            out = Path(tempfile.gettempdir()) / "bench-dispatch-profile.txt"
            command = [spy, "record", "--format", "raw", "--rate", "250", "--threads", "-o", str(out)]
            argv = [sys.executable, __file__, "--recipients", str(args.recipients), "--smtp-recipients", "0"]
            argv += ["--processes", str(args.processes)] if args.processes else []
            print(f"profiling with py-spy into {out} (collapsed stacks)")
            env = os.environ | {"BENCH_UNDER_PYSPY": "1"}
            status = subprocess.call([*command, "--", *argv], env=env)
            if out.exists():
                summarise_profile(out, rate=250)
            raise SystemExit(status)
        profile = "cprofile"
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    ok = True
    processes = args.processes or load_settings(ROOT / "settings.toml").delivery.processes
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        bench_settings(Path(tmp) / "unused.db")  # a broken settings.toml fails now, not after generating
        if args.ceiling_recipients:
            ok &= bench_ceiling(args.ceiling_recipients, Path(tmp), args.rounds, processes)
        if args.recipients:
            ok &= bench_sendgrid(args.recipients, Path(tmp), profile, processes)
        if args.smtp_recipients:
            ok &= bench_smtp(
                args.smtp_recipients, Path(tmp), args.smtp_connections, args.smtp_sink, processes
            )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
