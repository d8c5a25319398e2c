"""CSV import against the database's own speed: `python -m bench.imports [--rows N] [--pg] [--rounds R]`.

One generated CSV (bench/audience.py's people: email, name, tags, time zone and two attribute columns)
is imported by two variants, each in a fresh database and a process of its own, in alternating order
for ``--rounds`` rounds (medians printed):

- ours: ``import_csv`` (every row checked, consent rules, keyed hashes, tags and the consent log);
- the limit: the file loaded as it is into one table with a unique index on email: ``csv.reader`` +
  ``sqlite3`` ``executemany`` on SQLite, ``COPY … FROM STDIN (FORMAT csv)`` on PostgreSQL (``--pg``,
  a throwaway server started the way tests/fixtures/store.py does);
- the schema floor: the rows ours writes (people, tags, consent log), made in memory beforehand and not
  timed, written into our schema by the same bulk statements (``pipeline.audience.bulk``, with the
  import's page cache) in one transaction: what the tables and their indexes cost by themselves, so
  ours minus floor is the Python work. Its memory figure is not a streaming one (every row is held).

Printed for each: CPU seconds of the importing process (plus the PostgreSQL server's own, summed over
its processes), wall seconds, and peak RSS (VmHWM, with the RSS before the import beside it: a flat
import peaks at the same figure for 100,000 and 1,000,000 rows); then ours / limit, and the load
average before and after the run (the machine is shared: a high load makes every figure slower).

``--code DIR`` imports ``pipeline`` for "ours" from another checkout (e.g. ``git archive`` of an older
commit) to compare before and after. Not part of `make test`; nothing is judged, only printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = b"bench-key-0123456789abcdef0123456789abcdef"
VARIANTS = ("ours", "limit", "floor")
MIGRATE = "migrate"
"""The untimed step before ours: the schema made by the code being measured."""
Figures = dict[str, float]


def write_csv(path: Path, rows: int) -> None:
    """``rows`` people as bench/audience.py makes them (500 domains, a few tags each)."""
    import random

    from bench.audience import person

    rng = random.Random(1)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "tags", "timezone", "city", "children"])
        for i in range(rows):
            email, name, tags, zone, children = person(rng, i)
            writer.writerow([email, name, "|".join(tags), zone, "Springfield", children])


# --- the child: one variant, one fresh database, figures as JSON on stdout -------------------------------


def _memory_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process: ru_maxrss would count the parent's memory at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


@contextmanager
def _measured(figures: Figures) -> Iterator[None]:
    figures["start_mb"] = _memory_mb("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    figures["cpu"] = time.process_time() - cpu
    figures["wall"] = time.perf_counter() - wall
    figures["peak_mb"] = _memory_mb("VmHWM")


def _ours(source: Path, url: str, code: str | None, *, migrate_only: bool = False) -> Figures:
    if code is not None:
        sys.path.insert(0, code)
    from pipeline.audience.importer import import_csv
    from pipeline.store.engine import connect

    if code is not None and not Path(import_csv.__code__.co_filename).is_relative_to(Path(code).resolve()):
        raise SystemExit(f"--code {code}: pipeline came from {import_csv.__code__.co_filename} instead")
    figures: Figures = {}
    with connect(url, KEY) as store:
        if migrate_only:
            return figures
        with _measured(figures):
            result = import_csv(store, source)
        figures["rows"] = result.added
    return figures


def _limit_sqlite(source: Path, url: str) -> Figures:
    """The file as it is into one table with a unique index, by the standard library alone."""
    figures: Figures = {}
    with _measured(figures), source.open(encoding="utf-8", newline="") as handle:
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the store's own settings (pipeline/store/engine.py)
        reader = csv.reader(handle)
        header = next(reader)
        db.execute(f"CREATE TABLE people ({', '.join(f'{name} TEXT' for name in header)})")
        db.execute("CREATE UNIQUE INDEX people_email ON people (email)")
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO people VALUES ({', '.join('?' * len(header))})", reader)
        db.execute("COMMIT")
        figures["rows"] = db.execute("SELECT count(*) FROM people").fetchone()[0]
        db.close()
    return figures


def _limit_postgres(source: Path, url: str) -> Figures:
    """The file as it is into one table with a unique index, by COPY."""
    import psycopg

    figures: Figures = {}
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with _measured(figures), source.open("rb") as handle, psycopg.connect(dsn) as db:
        header = handle.readline().decode("utf-8").strip().split(",")
        db.execute(f"CREATE TABLE people ({', '.join(f'{name} text' for name in header)})".encode())
        db.execute(b"CREATE UNIQUE INDEX people_email ON people (email)")
        with db.cursor().copy(b"COPY people FROM STDIN (FORMAT csv)") as copy:
            while chunk := handle.read(1 << 16):
                copy.write(chunk)
        row = db.execute(b"SELECT count(*) FROM people").fetchone()
        figures["rows"] = row[0] if row else 0
    return figures


def _floor(source: Path, url: str) -> Figures:
    """Our tables written by bare bulk statements, with rows made beforehand as the import makes them."""
    import json as json_module

    from pipeline.audience.bulk import Bulk
    from pipeline.audience.importer import _EVENTS, _PEOPLE, _TAGS
    from pipeline.store.engine import connect, utcnow
    from pipeline.store.tables import subscriber_events, subscriber_tags, subscribers

    figures: Figures = {}
    with connect(url, KEY) as store:
        with store.read() as conn:
            stamp = Bulk(conn).value_of(subscribers.c.created_at)(utcnow())
        people, tags, events = [], [], []
        with source.open(encoding="utf-8", newline="") as handle:
            for id_, (email, name, tag_cell, zone, city, children) in enumerate(csv.reader(handle)):
                if id_ == 0:
                    continue  # the header
                key, attributes = email.lower(), json_module.dumps({"city": city, "children": children})
                people.append((id_, email, key, store.address_hash(key), name, "active", attributes,
                               zone or None, "import:people.csv", stamp, stamp, stamp, None))  # fmt: skip
                tags.extend((id_, tag) for tag in tag_cell.split("|") if tag)
                events.append((id_, stamp, "imported", None, "active", "import:people.csv", '{"line": 1}'))
        with _measured(figures), store.write() as conn:
            bulk = Bulk(conn)
            with bulk.roomy_cache():  # the page cache the import has
                bulk.insert(subscribers, _PEOPLE, people)
                bulk.insert(subscriber_tags, _TAGS, tags)
                bulk.insert(subscriber_events, _EVENTS, events)
        figures["rows"] = len(people)
    return figures


def child(variant: str, source: Path, url: str, code: str | None) -> None:
    if variant in ("ours", MIGRATE):
        figures = _ours(source, url, code, migrate_only=variant == MIGRATE)
    elif variant == "floor":
        figures = _floor(source, url)
    elif url.startswith("sqlite"):
        figures = _limit_sqlite(source, url)
    else:
        figures = _limit_postgres(source, url)
    print(json.dumps(figures))


# --- the parent: databases, rounds, the PostgreSQL server's CPU, the table -----------------------------------


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd on (the name may hold spaces)


class ServerCpu:
    """CPU seconds of a PostgreSQL server: the postmaster (with its reaped children: ended backends)
    plus the processes alive now (checkpointer, WAL writer, open backends)."""

    def __init__(self, port: int) -> None:
        self.postmaster = next(pid for pid, argv in _processes() if _serves(argv, port))
        self.idle = len(self._children())

    def _children(self) -> list[int]:
        found = []
        for pid, _ in _processes():
            try:
                if int(_stat(pid)[1]) == self.postmaster:
                    found.append(pid)
            except (OSError, ValueError):
                continue  # ended meanwhile
        return found

    def seconds(self) -> float:
        """Now, once (≤ 5 s) no more children are left than when idle: a backend still ending has then
        been reaped into the postmaster's total, and nothing of a run is counted in the next."""
        deadline = time.monotonic() + 5
        while len(self._children()) > self.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        ticks = sum(int(v) for v in _stat(self.postmaster)[11:15])  # utime stime cutime cstime
        for pid in self._children():
            try:
                ticks += sum(int(v) for v in _stat(pid)[11:13])
            except OSError:
                continue
        return ticks / os.sysconf("SC_CLK_TCK")


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue


def _serves(argv: list[bytes], port: int) -> bool:
    return argv[0].endswith(b"postgres") and b"-p" in argv and str(port).encode() in argv


def _child(variant: str, source: Path, url: str, code: str | None) -> Figures:
    command = [sys.executable, "-m", "bench.imports", "--child", variant, "--csv", str(source), "--url", url]
    if code is not None:
        command += ["--code", code]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr}")
    figures: Figures = json.loads(done.stdout.splitlines()[-1])
    return figures


def run_variant(variant: str, source: Path, url: str, code: str | None, server: ServerCpu | None) -> Figures:
    if variant != "limit":
        _child(MIGRATE, source, url, code if variant == "ours" else None)
    before = server.seconds() if server is not None else 0.0
    figures = _child(variant, source, url, code)
    if server is not None:
        figures["server"] = server.seconds() - before
    return figures


@contextmanager
def _databases(folder: Path, pg: bool) -> Iterator[tuple[Callable[[], str], ServerCpu | None]]:
    """A factory of fresh, empty database URLs: ours is migrated by the child, with its own code."""
    if not pg:
        names = iter(range(1_000_000))
        yield (lambda: f"sqlite:///{folder / f'run{next(names)}.db'}"), None
        return
    sys.path.insert(0, str(REPO))
    from tests.fixtures.store import running_postgres

    with running_postgres() as server:
        yield (lambda: server.url(server.create_database(migrated=False))), ServerCpu(server.port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", action="store_true", help="on PostgreSQL (COPY is the limit there)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating")
    parser.add_argument("--code", help="import pipeline for 'ours' from this checkout")
    parser.add_argument("--child", choices=(*VARIANTS, MIGRATE), help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.csv, args.url, args.code)
        return
    if args.code is not None and not (Path(args.code) / "pipeline" / "__init__.py").is_file():
        parser.error(f"--code {args.code}: no pipeline package there (e.g. `git archive COMMIT pipeline`)")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as name:
        folder = Path(name)
        os.chmod(folder, 0o700)
        source = folder / "people.csv"
        write_csv(source, args.rows)
        runs: dict[str, list[Figures]] = {variant: [] for variant in VARIANTS}
        with _databases(folder, args.pg) as (fresh, server):
            for round_ in range(args.rounds):
                for variant in VARIANTS if round_ % 2 == 0 else reversed(VARIANTS):
                    runs[variant].append(run_variant(variant, source, fresh(), args.code, server))
    report(args, runs, load, os.getloadavg())


def _median(runs: list[Figures], key: str) -> float:
    return statistics.median(run.get(key, 0.0) for run in runs)


def report(
    args: argparse.Namespace,
    runs: dict[str, list[Figures]],
    load: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    engine = "PostgreSQL" if args.pg else "SQLite"
    limit = "COPY" if args.pg else "csv + executemany"
    print(
        f"import of {args.rows:,} CSV rows on {engine}, {args.rounds} round(s) alternating, medians"
        f"{f' (ours from {args.code})' if args.code else ''}"
    )
    print(f"load average {' '.join(f'{v:.2f}' for v in load)} before, "
          f"{' '.join(f'{v:.2f}' for v in load_after)} after (2 cores)")  # fmt: skip
    server = " server CPU-s  total CPU-s" if args.pg else ""
    print(f"{'':28} {'CPU-s':>7}{server} {'wall-s':>7}  {'peak RSS':>9} {'(at start)':>11}  {'rows':>9}")
    totals: dict[str, tuple[float, float]] = {}
    labels = {"ours": "ours (import_csv)", "limit": f"limit ({limit})", "floor": "schema floor"}
    for variant, label in labels.items():
        done = runs[variant]
        cpu, wall, own = _median(done, "cpu"), _median(done, "wall"), _median(done, "server")
        total = statistics.median(run["cpu"] + run.get("server", 0.0) for run in done)
        totals[variant] = (total, wall)
        columns = f" {own:12.2f} {total:12.2f}" if args.pg else ""
        start = f"({_median(done, 'start_mb'):.0f} MB)"
        print(
            f"{label:28} {cpu:7.2f}{columns} {wall:7.2f}  {_median(done, 'peak_mb'):6.0f} MB "
            f"{start:>11}  {int(_median(done, 'rows')):>9,}"
        )
    what = "total CPU" if args.pg else "CPU"
    for below in ("limit", "floor"):
        (cpu, wall), (under_cpu, under_wall) = totals["ours"], totals[below]
        print(f"ratio ours / {below}: {cpu / under_cpu:.1f}x {what}, {wall / under_wall:.1f}x wall")


if __name__ == "__main__":
    main()
