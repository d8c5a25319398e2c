"""Export subscribers as CSV (which imports back unchanged) or JSON, streamed page by page.

The CSV has the importer's columns (``email,name,tags,timezone,status``, tags joined with ``|``) and
one column per attribute, so ``export`` then ``import`` round-trips, status included: a backup restored
into an empty store keeps everyone who unsubscribed unsubscribed. Every cell is guarded against
spreadsheet formulas (``csvsource.guard_cell``: ``=HYPERLINK(…)`` is written ``'=HYPERLINK(…)``), and
the importer takes the guard off again.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TextIO

from sqlalchemy import Row, Select, select

from pipeline.audience.csvsource import CSV_LINE_END, guard_cell
from pipeline.audience.fields import TAG_SEPARATOR
from pipeline.audience.segments import SegmentSpec, resolve, where
from pipeline.store.engine import Store
from pipeline.store.tables import subscriber_tags, subscribers

PAGE_SIZE = 5000
CSV_COLUMNS = ("email", "name", "tags", "timezone", "status")
Format = Literal["csv", "json"]


def _query(store: Store, segments: SegmentSpec | None) -> Select[Any]:
    query = select(subscribers)
    return query if segments is None else query.where(where(resolve(store, segments), paged=True))


def _with_tags(store: Store, page: Sequence[Row[Any]]) -> Iterator[tuple[dict[str, Any], list[str]]]:
    tags: dict[int, list[str]] = {row.id: [] for row in page}
    query = select(subscriber_tags).where(subscriber_tags.c.subscriber_id.in_(tags)).order_by("tag")
    with store.read() as conn:
        for subscriber_id, tag in conn.execute(query):
            tags[subscriber_id].append(tag)
    for row in page:
        yield dict(row._mapping), tags[row.id]


def _rows(store: Store, segments: SegmentSpec | None) -> Iterator[tuple[dict[str, Any], list[str]]]:
    query = _query(store, segments)
    for page in store.pages(query, subscribers.c.id, PAGE_SIZE):
        yield from _with_tags(store, page)


def _attribute_names(store: Store, segments: SegmentSpec | None) -> list[str]:
    """Every attribute name in use, found by a first streaming pass (the CSV header needs them all)."""
    names: set[str] = set()
    query = _query(store, segments).with_only_columns(subscribers.c.id, subscribers.c.attributes)
    for page in store.pages(query, subscribers.c.id, PAGE_SIZE):
        for row in page:
            names.update(row.attributes)
    return sorted(names - set(CSV_COLUMNS))


def _write_csv(store: Store, out: TextIO, segments: SegmentSpec | None) -> int:
    attributes = _attribute_names(store, segments)
    writer = csv.writer(out, lineterminator=CSV_LINE_END)
    writer.writerow([guard_cell(name) for name in [*CSV_COLUMNS, *attributes]])
    written = 0
    for row, tags in _rows(store, segments):
        core = [
            row["email"],
            row["name"] or "",
            TAG_SEPARATOR.join(tags),
            row["timezone"] or "",
            row["status"],
        ]
        cells = [*core, *(str(row["attributes"].get(name, "")) for name in attributes)]
        writer.writerow([guard_cell(cell) for cell in cells])
        written += 1
    return written


def _write_json(store: Store, out: TextIO, segments: SegmentSpec | None) -> int:
    out.write("[")
    written = 0
    for row, tags in _rows(store, segments):
        record = {key: value for key, value in row.items() if key not in {"email_key", "address_hash"}}
        record["tags"] = tags
        out.write(",\n  " if written else "\n  ")
        out.write(json.dumps(record, ensure_ascii=False, default=lambda value: value.isoformat()))
        written += 1
    out.write("\n]\n" if written else "]\n")
    return written


def export_subscribers(
    store: Store, out: TextIO, *, format: Format = "csv", segments: SegmentSpec | None = None
) -> int:
    """Write every subscriber (or those in ``segments``) to ``out``; returns how many were written."""
    writer = _write_csv if format == "csv" else _write_json
    return writer(store, out, segments)
