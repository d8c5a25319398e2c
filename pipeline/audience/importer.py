"""CSV import: every row checked, then written in batches inside one transaction, or nothing written at all.

Consent rules hold whatever the file says: an address on the suppression list is never added, people
who unsubscribed, bounced or complained are never touched, and a file can withdraw consent (a ``status``
column saying ``unsubscribed``) but never grant it back. A file with any invalid row imports nothing
(``ImportRejected`` lists every bad row) unless ``skip_invalid`` is set, when the bad rows go to a
rejects CSV instead.

Names and attributes follow the preferences form's rules (``fields.check_name``): a control character
or an over-long value is a bad row naming its column, never something stored.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from pipeline.audience.csvsource import CSV_LINE_END, GUARD, Columns, CsvSource, guard_cell, unguard_cell
from pipeline.audience.fields import (
    ATTRIBUTE_LENGTH,
    NAME_LENGTH,
    check_attribute,
    check_name,
    check_tag,
    check_timezone,
    needs_check,
    parse_email,
    split_tags,
    visible,
)
from pipeline.audience.subscribers import NEW_STATUSES, event_row, status_timestamps
from pipeline.errors import AudienceError, ImportRejected, Problem, Severity
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import LEFT, SubscriberStatus
from pipeline.store.tables import (
    subscriber_events,
    subscriber_tags,
    subscribers,
    suppressions,
)

BATCH_ROWS = 5000
MAX_PROBLEMS = 1000
Progress = Callable[[int, int], None]
"""Called after each batch with (bytes read, file size)."""
Undeliverable = Callable[[str], str | None]
"""Why the transport in use cannot take an address (None if it can): each such row gets a warning."""


@dataclass(slots=True)
class ImportResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    suppressed: int = 0
    problems: list[Problem] = field(default_factory=list)
    """The rejected rows (``skip_invalid``), at most MAX_PROBLEMS of them."""
    skipped: list[Problem] = field(default_factory=list)
    """Why each suppressed row was left alone, at most MAX_PROBLEMS of them."""
    warnings: list[Problem] = field(default_factory=list)
    """Addresses the transport cannot take (see ``Undeliverable``), at most MAX_PROBLEMS of them."""


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    email: str
    key: str
    name: str | None
    tags: list[str]
    timezone: str | None
    status: str | None
    attributes: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Options:
    actor: str
    extra_tags: list[str]
    status: str | None
    update: bool


def _cell(cells: list[str], index: int | None) -> str:
    """The value of one cell: spaces around it and a spreadsheet guard (``csvsource``) taken off."""
    if index is None:
        return ""
    value = cells[index].strip()
    return unguard_cell(value) if value[:1] == GUARD else value


def _parse(
    path: str, line: int, cells: list[str], columns: Columns, options: _Options
) -> _Row | list[Problem]:
    """One row checked field by field; every problem in it is reported, not only the first."""
    width = len(columns.header)
    if len(cells) < width or any(cell.strip() for cell in cells[width:]):
        other = ";" if columns.delimiter == "," else ","
        hint = f" (is this row separated by '{other}'?)" if any(other in c for c in cells) else ""
        return [Problem(path, f"has {len(cells)} fields but the header has {width}{hint}", line)]
    problems: list[Problem] = []

    def check(name: str, value: str, checker: Callable[[str], Any]) -> Any:
        try:
            return checker(value)
        except ValueError as exc:
            problems.append(Problem(path, str(exc), line, field=name))
            return None

    address = check("email", _cell(cells, columns.email), parse_email)
    given_name = _cell(cells, columns.name)
    if needs_check(given_name, NAME_LENGTH):
        check("name", given_name, check_name)
    attributes = {column: _cell(cells, index) for index, column in columns.attributes}
    for column, value in attributes.items():
        if needs_check(value, ATTRIBUTE_LENGTH):
            check(column, value, check_attribute)
    tags = check("tags", _cell(cells, columns.tags), split_tags) or []
    zone = _cell(cells, columns.timezone)
    timezone = check("timezone", zone, check_timezone) if zone else None
    status = _cell(cells, columns.status).lower() or None
    if status is not None and status not in set(SubscriberStatus):
        message = f"'{visible(status)}' is not one of {', '.join(SubscriberStatus)}"
        problems.append(Problem(path, message, line, field="status"))
    if problems:
        return problems
    return _Row(
        line,
        address.email,
        address.key,
        given_name or None,
        list(dict.fromkeys([*tags, *options.extra_tags])),
        timezone,
        status,
        attributes,
    )


class _Writer:
    """Writes batches of valid rows: one lookup per batch, then executemany inserts and updates."""

    def __init__(
        self, conn: Connection, store: Store, source: CsvSource, options: _Options, result: ImportResult
    ):
        assert source.columns is not None
        self.conn, self.store, self.options, self.result = conn, store, options, result
        self.path, self.columns = source.name, source.columns
        self.now = utcnow()

    def _skip(self, row: _Row, reason: str) -> None:
        self.result.suppressed += 1
        if len(self.result.skipped) < MAX_PROBLEMS:
            self.result.skipped.append(Problem(self.path, reason, row.line))

    def flush(self, batch: list[_Row]) -> None:
        if not batch:
            return
        hashes = {row.key: self.store.address_hash(row.key) for row in batch}
        existing = {
            found["email_key"]: found
            for found in self.conn.execute(
                select(subscribers).where(subscribers.c.email_key.in_([row.key for row in batch]))
            ).mappings()
        }
        query = select(suppressions.c.address_hash).where(suppressions.c.address_hash.in_(hashes.values()))
        suppressed = set(self.conn.scalars(query))
        new, known = [], []
        for row in batch:
            current = existing.get(row.key)
            if hashes[row.key] in suppressed:
                self._skip(row, "the address is on the suppression list (erased or blocked)")
            elif current is not None and current["status"] in LEFT:
                self._skip(row, f"{current['status']}: an import never resubscribes people who left")
            elif current is None:
                new.append(row)
            else:
                known.append((row, current))
        self._insert(new, hashes)
        self._update(known)

    def _insert(self, rows: list[_Row], hashes: dict[str, str]) -> None:
        if not rows:
            return
        now, actor = self.now, self.options.actor
        values: list[dict[str, Any]] = []
        for row in rows:
            status = row.status or self.options.status or SubscriberStatus.ACTIVE
            values.append(
                {
                    "email": row.email,
                    "email_key": row.key,
                    "address_hash": hashes[row.key],
                    "name": row.name,
                    "status": status,
                    "attributes": {k: v for k, v in row.attributes.items() if v},
                    "timezone": row.timezone,
                    "source": actor,
                    "created_at": now,
                    "updated_at": now,
                    # Every row has both keys: one executemany needs the same columns in each.
                    "confirmed_at": now if status == SubscriberStatus.ACTIVE else None,
                    "unsubscribed_at": now if status == SubscriberStatus.UNSUBSCRIBED else None,
                }
            )
        self.conn.execute(insert(subscribers), values)  # plain executemany: no RETURNING round-trips
        keys = select(subscribers.c.email_key, subscribers.c.id).where(
            subscribers.c.email_key.in_([row.key for row in rows])
        )
        id_of: dict[str, int] = {key: id_ for key, id_ in self.conn.execute(keys)}
        ids = [id_of[row.key] for row in rows]
        tags = [
            {"subscriber_id": i, "tag": tag} for i, row in zip(ids, rows, strict=True) for tag in row.tags
        ]
        if tags:
            self.conn.execute(insert(subscriber_tags), tags)
        events = [
            event_row(i, "imported", actor, at=now, to_status=v["status"], detail={"line": row.line})
            for i, row, v in zip(ids, rows, values, strict=True)
        ]
        self.conn.execute(insert(subscriber_events), events)
        self.result.added += len(rows)

    def _target_status(self, row: _Row, current: str) -> str:
        """Consent withdrawals always apply; a confirmation only with ``update`` and an explicit status."""
        wanted = row.status or self.options.status
        if wanted in LEFT:
            return wanted
        if (
            wanted == SubscriberStatus.ACTIVE
            and current == SubscriberStatus.UNCONFIRMED
            and self.options.update
        ):
            return wanted
        return current

    def _changes(
        self, row: _Row, current: Any, old_tags: list[str]
    ) -> tuple[dict[str, Any], list[str] | None]:
        columns, changes = self.columns, dict[str, Any]()
        if columns.name is not None and row.name != current["name"]:
            changes["name"] = row.name
        if columns.timezone is not None and row.timezone != current["timezone"]:
            changes["timezone"] = row.timezone
        attributes = dict(current["attributes"])
        for key, value in row.attributes.items():
            if value:
                attributes[key] = value
            else:
                attributes.pop(key, None)
        if attributes != current["attributes"]:
            changes["attributes"] = attributes
        tags = row.tags if columns.tags is not None else list(dict.fromkeys([*old_tags, *row.tags]))
        return changes, (tags if set(tags) != set(old_tags) else None)

    def _update(self, pairs: list[tuple[_Row, Any]]) -> None:
        if not pairs:
            return
        now, actor = self.now, self.options.actor
        old_tags: dict[int, list[str]] = {current["id"]: [] for _, current in pairs}
        if self.options.update:
            query = select(subscriber_tags).where(subscriber_tags.c.subscriber_id.in_(old_tags))
            for subscriber_id, tag in self.conn.execute(query):
                old_tags[subscriber_id].append(tag)
        updates, events, retag = [], [], {}
        for row, current in pairs:
            status = self._target_status(row, current["status"])
            changes, tags = (
                self._changes(row, current, old_tags[current["id"]]) if self.options.update else ({}, None)
            )
            if not changes and tags is None and status == current["status"]:
                self.result.unchanged += 1
                continue
            self.result.updated += 1
            if changes or tags is not None:
                fields = sorted([*changes, *(["tags"] if tags is not None else [])])
                detail = {"line": row.line, "fields": fields}
                events.append(event_row(current["id"], "updated", actor, at=now, detail=detail))
            if status != current["status"]:
                kind = "unsubscribed" if status == "unsubscribed" else "status_changed"
                detail = {"line": row.line}
                events.append(
                    event_row(
                        current["id"],
                        kind,
                        actor,
                        at=now,
                        from_status=current["status"],
                        to_status=status,
                        detail=detail,
                    )
                )
                changes.update(status=status, **status_timestamps(status, now))
            if tags is not None:
                retag[current["id"]] = tags
            updates.append(
                {**{k: current[k] for k in _UPDATABLE}, **changes, "updated_at": now, "b_id": current["id"]}
            )
        if updates:
            self.conn.execute(_UPDATE, updates)
        if retag:
            self.conn.execute(delete(subscriber_tags).where(subscriber_tags.c.subscriber_id.in_(retag)))
            rows = [{"subscriber_id": i, "tag": tag} for i, tags in retag.items() for tag in tags]
            if rows:
                self.conn.execute(insert(subscriber_tags), rows)
        if events:
            self.conn.execute(insert(subscriber_events), events)


_UPDATABLE = ("name", "timezone", "attributes", "status", "confirmed_at", "unsubscribed_at")
_UPDATE = (
    update(subscribers)
    .where(subscribers.c.id == bindparam("b_id"))
    .values({name: bindparam(name) for name in (*_UPDATABLE, "updated_at")})
)


def _reject(result: ImportResult, problems: list[Problem]) -> None:
    result.rejected += 1
    room = MAX_PROBLEMS - len(result.problems)
    result.problems.extend(problems[: max(room, 0)])


def import_csv(
    store: Store,
    path: str | Path,
    *,
    tags: Iterable[str] = (),
    status: str | None = None,
    update: bool = False,
    skip_invalid: bool = False,
    rejects: str | Path | None = None,
    progress: Progress | None = None,
    undeliverable: Undeliverable | None = None,
) -> ImportResult:
    """Import subscribers from a CSV file in one transaction; see the module docstring for the rules.

    ``status`` (active or unconfirmed) is given to new people whose row has no status of its own
    (default active). ``update`` refreshes name, tags, attributes and time zone of people already in the
    store. ``rejects`` receives the invalid rows with a ``reason`` column. ``undeliverable`` says which
    addresses the transport in use cannot take; their rows are imported, each with a warning.
    """
    if status is not None and status not in NEW_STATUSES:
        raise AudienceError(f"status: an import adds people as active or unconfirmed, not '{status}'")
    try:
        extra_tags = [check_tag(tag) for tag in tags]
    except ValueError as exc:
        raise AudienceError(f"--tag: {exc}") from None
    source = CsvSource(Path(path))
    options = _Options(f"import:{Path(path).name}", extra_tags, status, update)
    result = ImportResult()
    with store.write() as conn, ExitStack() as files:
        rows = source.rows()
        first = next(rows, None)  # reads the header, so ``source.columns`` is known
        assert source.columns is not None
        writer = _Writer(conn, store, source, options, result)
        rejects_csv = _rejects_writer(files, rejects, source) if rejects is not None else None
        seen: dict[str, int] = {}
        batch: list[_Row] = []
        for line, cells in _chain(first, rows):
            parsed = _parse(source.name, line, cells, source.columns, options)
            if isinstance(parsed, _Row) and parsed.key in seen:
                message = (
                    f"'{parsed.email}' is a duplicate of line {seen[parsed.key]} (letter case is ignored)"
                )
                parsed = [Problem(source.name, message, line, field="email")]
            if isinstance(parsed, list):
                _reject(result, parsed)
                if rejects_csv is not None:
                    reason = "; ".join(p.message for p in parsed)
                    rejects_csv.writerow([guard_cell(cell) for cell in [*cells, reason]])
                continue
            seen[parsed.key] = line
            why = undeliverable(parsed.email) if undeliverable is not None else None
            if why is not None and len(result.warnings) < MAX_PROBLEMS:
                message = f"'{visible(parsed.email)}' {why}"
                warning = Problem(source.name, message, line, field="email", severity=Severity.WARNING)
                result.warnings.append(warning)
            if result.rejected and not skip_invalid:
                continue  # keep reading only to report every bad row
            batch.append(parsed)
            if len(batch) >= BATCH_ROWS:
                writer.flush(batch)
                batch.clear()
                if progress is not None:
                    progress(source.bytes_read, source.total_bytes)
        if result.rejected and not skip_invalid:
            problems = result.problems
            if result.rejected > len(problems):
                problems = [
                    *problems,
                    Problem(source.name, f"… {result.rejected - len(problems)} more rows rejected"),
                ]
            raise ImportRejected(problems)
        writer.flush(batch)
    if progress is not None:
        progress(source.total_bytes, source.total_bytes)
    return result


def _chain(
    first: tuple[int, list[str]] | None, rest: Iterable[tuple[int, list[str]]]
) -> Iterable[tuple[int, list[str]]]:
    if first is not None:
        yield first
        yield from rest


def _rejects_writer(files: ExitStack, path: str | Path, source: CsvSource) -> Any:
    assert source.columns is not None
    try:
        handle: IO[str] = files.enter_context(Path(path).open("w", encoding="utf-8", newline=""))  # noqa: SIM115
    except OSError as exc:
        raise AudienceError(f"{path}: error: cannot write the rejects file: {exc.strerror or exc}") from None
    writer = csv.writer(handle, delimiter=source.delimiter, lineterminator=CSV_LINE_END)
    writer.writerow([guard_cell(cell) for cell in [*source.columns.header, "reason"]])
    return writer
