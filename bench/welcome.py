"""What the welcome series costs the scheduler: `python -m bench.welcome [--people 100000] [--pg]`.

A fresh store (SQLite in a temp folder; with ``--pg`` a throwaway PostgreSQL server) gets ``--people``
subscribers who joined the welcome series evenly over the last 30 days, and a copy of the sample
project with its two welcome steps (at once, and after three days) and no dated issue. The first
tick sends each step to the readers whose moment fell within the catch-up window (12 h) through the
outbox (PostgreSQL is analysed before and after it, as autovacuum would); then, with nobody new due, ticks with the series and ticks with its folder moved away take
turns (series, none, none, series, …) so both see the same machine. Printed: the first tick, the
median idle tick of each and their ratio, a tick after ten minutes (the readers who came due
meanwhile: rendered, queued and sent), and `newsletter welcome`'s overview. The exit status is 1 if
anyone got a step twice or a due reader none, never for the times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, insert, select

from pipeline.dispatch import campaigns
from pipeline.dispatch.welcome import overview, window
from pipeline.schedule.scheduler import Scheduler
from pipeline.settings import Settings, load_settings
from pipeline.store.engine import Store, connect, utcnow
from pipeline.store.tables import deliveries, subscribers, welcome_enrollments
from pipeline.transports.outbox import OutboxTransport
from tests.fixtures.store import running_postgres
from tests.scheduling import ManualClock
from tests.web_support import readers

ROOT = Path(__file__).resolve().parents[1]
KEY = b"bench-welcome-signing-key-0123456789abcdef"
SPREAD = dt.timedelta(days=30)
ROUNDS = 15


def project(folder: Path) -> Settings:
    """The sample project's settings, issues (welcome steps only), templates and segments in ``folder``."""
    for part in ("settings.toml", "issues", "templates", "subscribers"):
        source = ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / part)
    for dated in (folder / "issues").glob("*.yaml"):
        dated.unlink()
    settings = load_settings(folder / "settings.toml")
    return settings.model_copy(
        update={"delivery": settings.delivery.model_copy(update={"rate_per_second": 1e6, "batch_size": 500})}
    )


def enroll_evenly(store: Store, now: dt.datetime) -> int:
    """Everyone joins the series, one after another over ``SPREAD`` up to ``now``; how many."""
    with store.write() as conn:
        ids = conn.execute(select(subscribers.c.id).order_by(subscribers.c.id)).scalars().all()
        step = SPREAD / len(ids)
        rows = [
            {"subscriber_id": i, "enrolled_at": now - SPREAD + n * step, "source": "bench"}
            for n, i in enumerate(ids)
        ]
        conn.execute(insert(welcome_enrollments), rows)
    return len(ids)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


@contextmanager
def store_for(pg: bool, folder: Path) -> Iterator[Store]:
    if not pg:
        with connect(f"sqlite:///{folder / 'bench.db'}", KEY) as store:
            yield store
        return
    with running_postgres() as server:
        server.execute('CREATE DATABASE "bench_welcome"')
        with connect(server.url("bench_welcome"), KEY) as store:
            yield store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--pg", action="store_true", help="a throwaway PostgreSQL server instead of SQLite")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-welcome-"))
    os.chmod(folder, 0o700)
    try:
        settings = project(folder)
        outbox = OutboxTransport(folder / "outbox", fsync=False)
        with store_for(args.pg, folder) as store:
            readers(store, folder, args.people)
            now = utcnow()
            enroll_evenly(store, now)
            clock = ManualClock(now)
            scheduler = Scheduler(store, settings, clock=clock, transports=lambda _name: outbox)
            _analyse(store)
            first = timed(scheduler.tick)
            sent_first = _sent(store)
            _analyse(store)
            series, moved = folder / "issues" / "welcome", folder / "welcome-away"
            with_series, without = [], []
            for n in range(ROUNDS * 2):
                if (n % 4) in (0, 3):
                    with_series.append(timed(scheduler.tick))
                else:
                    series.rename(moved)
                    without.append(timed(scheduler.tick))
                    moved.rename(series)
            clock.set(now + dt.timedelta(minutes=10))
            cohort = timed(scheduler.tick)
            sent_later = _sent(store) - sent_first
            view_time = timed(lambda: overview(store, settings, clock.now()))
            problems = _check(store, settings, now, now + dt.timedelta(minutes=10))
        engine = "PostgreSQL" if args.pg else "SQLite"
        idle, bare = statistics.median(with_series), statistics.median(without)
        print(f"welcome series, {args.people:,} readers joined over 30 days, 2 steps, {engine}:")
        print(
            f"  first tick: {first * 1000:,.0f} ms, {sent_first:,} messages (each step to the last 12 h's joiners)"
        )
        print(
            f"  idle tick, nobody new due: {idle * 1000:.1f} ms with the series, {bare * 1000:.1f} ms without "
            f"({idle / bare:.1f}x; medians of {len(with_series)} and {len(without)})"
        )
        print(
            f"  tick ten minutes later: {cohort * 1000:.0f} ms, {sent_later} readers come due meanwhile, sent"
        )
        print(f"  `newsletter welcome` overview: {view_time * 1000:.0f} ms")
        print(f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _analyse(store: Store) -> None:
    """On PostgreSQL, what autovacuum does after loads this size: a planner without statistics
    guesses every table is tiny."""
    if store.dialect == "postgresql":
        with store.write() as conn:
            conn.exec_driver_sql("ANALYZE")


def _sent(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).where(deliveries.c.status == "sent")).scalar_one())


def _check(store: Store, settings: Settings, first: dt.datetime, last: dt.datetime) -> list[str]:
    """Each step once per reader, and a row for every reader whose moment came within the window of
    the first tick (at ``first``) or since, up to the last (at ``last``)."""
    problems = []
    late = window(settings)
    e = welcome_enrollments.c
    with store.read() as conn:
        for slug, campaign in campaigns.welcome_campaigns(store).items():
            after = dt.timedelta(days=3) if slug.endswith("small-step") else dt.timedelta(0)
            rows = conn.execute(
                select(func.count(), func.count(deliveries.c.subscriber_id.distinct())).where(
                    deliveries.c.campaign_id == campaign.id
                )
            ).one()
            due = conn.execute(
                select(func.count()).where(
                    e.enrolled_at <= last - after, e.enrolled_at > first - after - late
                )
            ).scalar_one()
            if rows[0] != rows[1]:
                problems.append(f"{slug}: {rows[0] - rows[1]} readers have two rows")
            if rows[0] != due:
                problems.append(f"{slug}: {rows[0]} rows for {due} readers due")
    return problems


if __name__ == "__main__":
    raise SystemExit(main())
