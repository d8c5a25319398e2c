"""Dispatch throughput and memory, end to end: `python bench/dispatch.py [--recipients N] [--smtp-recipients M]`.

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
import io
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from pipeline.dispatch import campaigns
from pipeline.dispatch.dispatcher import Dispatcher, RunReport
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.dispatch.ratelimit import RateLimiter
from pipeline.render.links import Links
from pipeline.settings import Settings, load_settings
from pipeline.store.engine import Store, connect
from pipeline.store.tables import subscribers
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
            limiter=RateLimiter(1e12),
            on_progress=sampler,
            batch_size=settings.delivery.batch_size,
        )
        sampler.started = time.perf_counter()
        cpu = time.process_time()
        if profile == "cprofile":
            profiler = cProfile.Profile()
            run = profiler.runcall(dispatcher.run, campaign.id)
        else:
            run = dispatcher.run(campaign.id)
        t3 = time.perf_counter()
        timings.send_cpu = time.process_time() - cpu
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
    ("rate limiter", "RateLimiter.acquire"),
    ("waiting for a transport call", "wait (concurrent/futures"),
    ("campaign status check", "_why_stop"),
    ("progress callback", "_progress"),
)
SEND_STEPS = (
    ("signed links (Links.personal_fields)", "Links.personal_fields"),
    ("request body (dicts, escaping)", "request_body"),
    ("serialising the body (orjson)", "_Body.__init__"),
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
