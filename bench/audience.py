"""Benchmark of the subscriber store on SQLite: CSV import, segment counts and audience streaming.

Run: ``.venv/bin/python bench/audience.py [--subscribers 1000000] [--csv-rows 100000]``. It builds its
own data in a temp folder and prints one line per figure with its target:

    (a) import of a 100,000-row CSV                  ≤ 10 s
    (b) segment counts over 1,000,000 subscribers    ≤ 1 s each
    (c) streaming the recipients of two segments     ≤ 1.3x the time of one raw sqlite3 cursor running
        (1.19M of 1,000,000 subscribers)             the same SQL, memory within 10 MB of it (both in
                                                     subprocesses, alternating; ≤ 100 MB peak RSS)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.audience.importer import import_csv  # noqa: E402
from pipeline.audience.selection import audience, count, segment_select  # noqa: E402
from pipeline.store.engine import Store, connect  # noqa: E402
from pipeline.store.tables import subscribers  # noqa: E402

KEY = b"bench-key-0123456789abcdef0123456789abcdef"
TAGS = {
    "working-mom": 0.85,
    "toddler": 0.3,
    "school-age": 0.4,
    "new-parent": 0.15,
    "teen": 0.2,
    "single-parent": 0.1,
}
ZONES = ["Europe/London", "Europe/Berlin", "America/New_York", "America/Chicago", "Asia/Kolkata", ""]
SEGMENTS = ["everyone", "working-moms", "toddlers", "school-age", "europe", "big-families"]


def person(rng: random.Random, i: int) -> tuple[str, str, list[str], str, str]:
    tags = [tag for tag, share in TAGS.items() if rng.random() < share]
    return f"person{i}@example{i % 500}.com", f"Person {i}", tags, rng.choice(ZONES), str(rng.randint(0, 5))


def bench_import(folder: Path, rows: int) -> None:
    rng = random.Random(1)
    path = folder / "people.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "tags", "timezone", "city", "children"])
        for i in range(rows):
            email, name, tags, zone, children = person(rng, i)
            writer.writerow([email, name, "|".join(tags), zone, "Springfield", children])
    with connect(f"sqlite:///{folder / 'import.db'}", KEY) as store:
        started = time.perf_counter()
        result = import_csv(store, path)
        took = time.perf_counter() - started
    print(f"(a) import {rows:,} CSV rows: {took:.2f} s  ({result.added:,} added; target ≤ 10 s)")


def fill(store: Store, size: int) -> None:
    """``size`` subscribers with tags and attributes, inserted directly (the import is measured above)."""
    rng = random.Random(2)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    people: list[tuple[object, ...]] = []
    tags: list[tuple[int, str]] = []
    insert_people = (
        "INSERT INTO subscribers (id, email, email_key, address_hash, name, status, attributes, timezone,"
        " source, created_at, updated_at, confirmed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'bench', ?, ?, ?)"
    )
    with store.write() as conn:
        for i in range(1, size + 1):
            email, name, person_tags, zone, children = person(rng, i)
            status = "active" if rng.random() < 0.95 else "unsubscribed"
            people.append(
                (i, email, email, store.address_hash(email), name, status, json.dumps({"children": children}),
                 zone or None, now, now, now)
            )  # fmt: skip
            tags.extend((i, tag) for tag in person_tags)
            if len(people) == 50_000 or i == size:
                conn.exec_driver_sql(insert_people, people)
                conn.exec_driver_sql("INSERT INTO subscriber_tags (subscriber_id, tag) VALUES (?, ?)", tags)
                people.clear()
                tags.clear()
    with store.write() as conn:
        conn.execute(text("ANALYZE"))


def bench_counts(store: Store, size: int) -> None:
    for name in SEGMENTS:
        started = time.perf_counter()
        found = count(store, name)
        took = time.perf_counter() - started
        print(f"(b) count '{name}' over {size:,}: {took:.3f} s  ({found:,} recipients; target ≤ 1 s)")


STREAMED = ("everyone", "toddlers")


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB. VmHWM, where Linux has it: ru_maxrss would also count the
    parent's memory at fork time (Linux carries the high-water mark across exec), which here is the
    1M-row fill."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _unit = line.split()
                values[name[:-1]] = int(amount) / 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    return values["VmRSS"], values["VmHWM"]


def raw_sql(store: Store, name: str) -> str:
    """The audience's own SQL for ``name`` (``segment_select``, the form for one statement over the
    whole table), in id order, with its values inlined: what one plain cursor runs."""
    query = segment_select(store, name).order_by(subscribers.c.id)
    return str(query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))


def stream_child(kind: str, database: str, segments_file: str) -> None:
    """Runs in a subprocess: stream every recipient of STREAMED, through ``audience`` ("ours") or one
    sqlite3 cursor per segment running the same SQL ("raw"); print counts, time and memory as JSON.
    Both kinds import and open the same things first, so their memory starts from the same place."""
    with connect(f"sqlite:///{database}", KEY, segments_file=Path(segments_file)) as store:
        queries = [raw_sql(store, name) for name in STREAMED]
        cursor = sqlite3.connect(database)
        start, _ = rss_mb()
        with contextlib.suppress(OSError):  # VmHWM back to VmRSS (Linux >= 4.0): the peak is the stream's
            Path("/proc/self/clear_refs").write_text("5")
        started, cpu = time.perf_counter(), time.process_time()
        if kind == "ours":
            streamed = [sum(1 for _ in audience(store, name)) for name in STREAMED]
        else:
            streamed = [sum(1 for _ in cursor.execute(sql)) for sql in queries]
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        cursor.close()
    _, peak = rss_mb()
    print(json.dumps({"streamed": streamed, "seconds": took, "cpu": cpu, "peak_mb": peak, "start_mb": start}))


def bench_stream(database: Path, segments_file: Path, rounds: int) -> None:
    """Ours against one raw cursor with the same SQL, alternately, ``rounds`` times each (medians)."""
    figures: dict[str, list[dict[str, Any]]] = {"raw": [], "ours": []}
    for _ in range(rounds):
        for kind in figures:
            child = [sys.executable, __file__, "--stream-child", kind, str(database), str(segments_file)]
            done = subprocess.run(child, check=True, capture_output=True, text=True)
            figures[kind].append(json.loads(done.stdout))
    ours, raw = figures["ours"], figures["raw"]
    if any(f["streamed"] != raw[0]["streamed"] for f in ours + raw):
        raise SystemExit(f"the streams disagree: {[f['streamed'] for f in ours + raw]}")
    counts = raw[0]["streamed"]
    took = {kind: statistics.median(f["seconds"] for f in runs) for kind, runs in figures.items()}
    cpu = {kind: statistics.median(f["cpu"] for f in runs) for kind, runs in figures.items()}
    growth = {
        kind: statistics.median(f["peak_mb"] - f["start_mb"] for f in runs) for kind, runs in figures.items()
    }
    peak = {kind: statistics.median(f["peak_mb"] for f in runs) for kind, runs in figures.items()}
    ratio = took["ours"] / took["raw"]
    print(
        f"(c) stream {counts[0]:,} recipients of '{STREAMED[0]}', then {counts[1]:,} of '{STREAMED[1]}' "
        f"({sum(counts):,}; median of {rounds} runs each, alternating):"
    )
    for kind, label in (
        ("ours", "audience()                      "),
        ("raw", "one sqlite3 cursor, the same SQL"),
    ):
        print(
            f"    {label} {took[kind]:5.2f} s (CPU {cpu[kind]:5.2f} s), memory growth {growth[kind]:5.1f} MB "
            f"(peak RSS {peak[kind]:.0f} MB)"
        )
    print(
        f"    ratio {ratio:.2f}x, CPU {cpu['ours'] / cpu['raw']:.2f}x (target <= 1.3x: "
        f"{'met' if ratio <= 1.3 else 'MISSED'}); memory "
        f"{growth['ours'] - growth['raw']:+.1f} MB (target within 10 MB: "
        f"{'met' if growth['ours'] - growth['raw'] <= 10 else 'MISSED'}); peak RSS <= 100 MB: "
        f"{'met' if peak['ours'] <= 100 else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--csv-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="streams of each kind  [default: 3]")
    parser.add_argument("--stream-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        stream_child(*args.stream_child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-audience-") as name:
        folder = Path(name)
        bench_import(folder, args.csv_rows)
        database = folder / "big.db"
        segments_file = REPO / "subscribers" / "segments.toml"
        with connect(f"sqlite:///{database}", KEY, segments_file=segments_file) as store:
            started = time.perf_counter()
            fill(store, args.subscribers)
            print(
                f"    (generated {args.subscribers:,} subscribers in {time.perf_counter() - started:.1f} s)"
            )
            bench_counts(store, args.subscribers)
        bench_stream(database, segments_file, args.rounds)


if __name__ == "__main__":
    main()
