"""Benchmark of the subscriber store on SQLite: CSV import, segment counts and audience streaming.

Run: ``.venv/bin/python bench/audience.py [--subscribers 1000000] [--csv-rows 100000]``. It builds its
own data in a temp folder and prints one line per figure with its target:

    (a) import of a 100,000-row CSV                  ≤ 10 s
    (b) segment counts over 1,000,000 subscribers    ≤ 1 s each
    (c) streaming 1,000,000 recipients               ≤ 100 MB peak RSS (measured in a subprocess)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.audience.importer import import_csv  # noqa: E402
from pipeline.audience.selection import audience, count  # noqa: E402
from pipeline.store.engine import Store, connect  # noqa: E402

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


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, where Linux has it: ru_maxrss would also count the parent's
    memory at fork time (Linux carries the high-water mark across exec), which here is the 1M-row fill."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_child(database: str, segments_file: str) -> None:
    """Runs in a subprocess: stream every recipient, then report time and peak RSS as JSON."""
    before = peak_rss_mb()
    with connect(f"sqlite:///{database}", KEY, segments_file=Path(segments_file)) as store:
        started = time.perf_counter()
        streamed = {name: sum(1 for _ in audience(store, name)) for name in ("everyone", "toddlers")}
        took = time.perf_counter() - started
    print(json.dumps({"streamed": streamed, "seconds": took, "peak_mb": peak_rss_mb(), "start_mb": before}))


def bench_stream(database: Path, segments_file: Path) -> None:
    child = [sys.executable, __file__, "--stream-child", str(database), str(segments_file)]
    figures = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    peak, start, streamed = figures["peak_mb"], figures["start_mb"], figures["streamed"]
    print(
        f"(c) stream {streamed['everyone']:,} recipients of 'everyone', then {streamed['toddlers']:,} of "
        f"'toddlers': {figures['seconds']:.2f} s, peak RSS {peak:.0f} MB (after imports {start:.0f} MB, "
        f"growth {peak - start:.0f} MB; target ≤ 100 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--csv-rows", type=int, default=100_000)
    parser.add_argument("--stream-child", nargs=2, help=argparse.SUPPRESS)
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
        bench_stream(database, segments_file)


if __name__ == "__main__":
    main()
