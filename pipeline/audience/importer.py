"""CSV import: every row checked, then written in batches inside one transaction, or nothing written at all.

Consent rules hold whatever the file says: an address on the suppression list is never added, people
who unsubscribed, bounced or complained are never touched, and a file can withdraw consent (a ``status``
column saying ``unsubscribed``) but never grant it back. A file with any invalid row imports nothing
(``ImportRejected`` lists every bad row) unless ``skip_invalid`` is set, when the bad rows go to a
rejects CSV instead.

Names and attributes follow the preferences form's rules (``fields.check_name``): a control character
or an over-long value is a bad row naming its column, never something stored.

Speed and memory: each row is checked once in Python, then a batch of rows at a time is looked up and
written with the driver's bulk statements (``bulk``): one query for the people already known, one for
suppressed hashes, then new people, their tags and their consent-log entries in three bulk inserts,
with a page cache of ``bulk.IMPORT_CACHE_MB`` for the import (the same however long the file).
The file is streamed, and the addresses already read (to name a duplicate with the line it repeats)
are kept in a temporary table of the import's transaction, not in Python, so a million rows take no
more memory than a thousand.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import repeat
from json.encoder import encode_basestring_ascii as _quoted
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Update,
    bindparam,
    delete,
    select,
    update,
)

from pipeline.audience.bulk import Bulk
from pipeline.audience.csvsource import CSV_LINE_END, GUARD, Columns, CsvSource, guard_cell, unguard_cell
from pipeline.audience.fields import (
    ATTRIBUTE_LENGTH,
    NAME_LENGTH,
    check_attribute,
    check_name,
    check_tag,
    check_timezone,
    is_timezone,
    needs_check,
    parse_email,
    split_tags,
    visible,
)
from pipeline.audience.subscribers import NEW_STATUSES, status_timestamps
from pipeline.errors import AudienceError, ImportRejected, Problem, Severity
from pipeline.store.engine import Store, utcnow
from pipeline.store.statuses import LEFT, SubscriberStatus
from pipeline.store.tables import (
    EMAIL_LENGTH,
    subscriber_events,
    subscriber_tags,
    subscribers,
    suppressions,
    welcome_enrollments,
)

BATCH_ROWS = 5000
"""Rows read (good or bad) between two writes: the most the import holds in memory at once."""
MAX_PROBLEMS = 1000
Progress = Callable[[int, int], None]
"""Called after each batch with (bytes read, file size)."""
Undeliverable = Callable[[str], str | None]
"""Why the transport in use cannot take an address (None if it can): each such row gets a warning."""
_STATUSES = frozenset(SubscriberStatus)
_PEOPLE = (
    "id",
    "email",
    "email_key",
    "address_hash",
    "name",
    "status",
    "attributes",
    "timezone",
    "source",
    "created_at",
    "updated_at",
    "confirmed_at",
    "unsubscribed_at",
)
_TAGS = ("subscriber_id", "tag")
_EVENTS = ("subscriber_id", "at", "kind", "from_status", "to_status", "actor", "detail")
_ENROLLMENTS = ("subscriber_id", "enrolled_at", "source")

_seen = Table(
    "import_seen",
    MetaData(),
    Column("email_key", String(EMAIL_LENGTH), primary_key=True),
    Column("line", Integer(), nullable=False),
    prefixes=["TEMPORARY"],
    sqlite_with_rowid=False,
)
"""Every address read so far and the line it was first on: made for one import, dropped at its end."""


@dataclass(slots=True)
class ImportResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    suppressed: int = 0
    enrolled: int = 0
    """New people enrolled in the welcome series (``welcome``: the active ones among the added)."""
    problems: list[Problem] = field(default_factory=list)
    """The rejected rows (``skip_invalid``), at most MAX_PROBLEMS of them."""
    skipped: list[Problem] = field(default_factory=list)
    """Why each suppressed row was left alone, at most MAX_PROBLEMS of them."""
    warnings: list[Problem] = field(default_factory=list)
    """Addresses the transport cannot take (see ``Undeliverable``), at most MAX_PROBLEMS of them."""


@dataclass(slots=True)
class _Row:
    line: int
    email: str
    key: str
    name: str | None
    tags: tuple[str, ...]
    timezone: str | None
    status: str | None
    attributes: dict[str, str]


_Entry = tuple[int, list[str], _Row | list[Problem]]
"""A row as read: its line, its cells, and the checked row or what is wrong with it."""


@dataclass(frozen=True, slots=True)
class _Options:
    actor: str
    extra_tags: list[str]
    status: str | None
    update: bool
    welcome: bool


def _attributes_json(values: dict[str, str]) -> str:
    """``json.dumps(values)`` for the flat dict of strings attributes are, three times faster (a test
    holds the two equal): it runs for every row of an import."""
    return "{" + ", ".join([f"{_quoted(key)}: {_quoted(value)}" for key, value in values.items()]) + "}"


class _Checker:
    """Checks the rows of one file field by field; every problem in a row is reported, not only the first."""

    def __init__(self, path: str, columns: Columns, options: _Options) -> None:
        self.path, self.columns, self.width = path, columns, len(columns.header)
        self.other = ";" if columns.delimiter == "," else ","
        # Where each core column is; -1 (an empty cell added at the end of each row) where it is absent.
        self.email, self.name, self.tags, self.timezone, self.status = (
            -1 if index is None else index
            for index in (columns.email, columns.name, columns.tags, columns.timezone, columns.status)
        )
        self.extra_tags = options.extra_tags
        self.tag_list = functools.lru_cache(maxsize=4096)(self._tag_list)  # a list repeats a few tag cells

    def _tag_list(self, cell: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*split_tags(cell), *self.extra_tags]))

    def _check(
        self, problems: list[Problem], line: int, name: str, value: str, checker: Callable[[str], Any]
    ) -> None:
        try:
            checker(value)
        except ValueError as exc:
            problems.append(Problem(self.path, str(exc), line, field=name))

    def _check_texts(self, problems: list[Problem], line: int, name: str, attributes: dict[str, str]) -> None:
        """The name and the attributes of a row that is long or has a character that is not printable."""
        if needs_check(name, NAME_LENGTH):
            self._check(problems, line, "name", name, check_name)
        for column, value in attributes.items():
            if needs_check(value, ATTRIBUTE_LENGTH):
                self._check(problems, line, column, value, check_attribute)

    def parse(self, line: int, cells: list[str]) -> _Row | list[Problem]:
        width = self.width
        if len(cells) != width and (len(cells) < width or any(cell.strip() for cell in cells[width:])):
            hint = (
                f" (is this row separated by '{self.other}'?)" if any(self.other in c for c in cells) else ""
            )
            return [Problem(self.path, f"has {len(cells)} fields but the header has {width}{hint}", line)]
        # Spaces around each value and a spreadsheet guard (``csvsource``) taken off.
        values = [*map(str.strip, cells), ""]
        whole = "".join(values)
        if GUARD in whole:
            values = [unguard_cell(value) for value in values]
        problems: list[Problem] = []
        address = None
        try:
            address = parse_email(values[self.email])
        except ValueError as exc:
            problems.append(Problem(self.path, str(exc), line, field="email"))
        name = values[self.name]
        attributes = {column: values[index] for index, column in self.columns.attributes}
        # A short row of printable characters (nearly every one) has no value to look at twice.
        if len(whole) > NAME_LENGTH or not whole.isprintable():
            self._check_texts(problems, line, name, attributes)
        tags: tuple[str, ...] = ()
        try:
            tags = self.tag_list(values[self.tags])
        except ValueError as exc:
            problems.append(Problem(self.path, str(exc), line, field="tags"))
        zone = values[self.timezone]
        if zone and not is_timezone(zone):
            self._check(problems, line, "timezone", zone, check_timezone)
        status = values[self.status].lower() or None
        if status is not None and status not in _STATUSES:
            message = f"'{visible(status)}' is not one of {', '.join(SubscriberStatus)}"
            problems.append(Problem(self.path, message, line, field="status"))
        if problems or address is None:
            return problems
        return _Row(line, address.email, address.key, name or None, tags, zone or None, status, attributes)


class _Writer:
    """Writes batches of good rows: one lookup of known people and one of suppressed hashes per batch,
    then bulk inserts of the new people and one executemany of the changes to known ones."""

    def __init__(
        self,
        conn: Connection,
        store: Store,
        path: str,
        columns: Columns,
        options: _Options,
        result: ImportResult,
    ):
        self.conn, self.bulk, self.store, self.path, self.columns = conn, Bulk(conn), store, path, columns
        self.options, self.result = options, result
        self.now = utcnow()
        self.stamp = self.bulk.value_of(subscribers.c.created_at)(self.now)
        self.json = self.bulk.value_of(subscribers.c.attributes)
        # What is read of people already known: only what the rules and ``update`` compare (a whole
        # row costs a datetime parse per timestamp, which made re-importing a list slow).
        self.known = [subscribers.c[name] for name in ("id", "email_key", "status")]
        if options.update:
            self.known += [subscribers.c.name, subscribers.c.timezone, subscribers.c.attributes]

    def _skip(self, row: _Row, reason: str) -> None:
        self.result.suppressed += 1
        if len(self.result.skipped) < MAX_PROBLEMS:
            self.result.skipped.append(Problem(self.path, reason, row.line))

    def write(self, batch: list[_Row]) -> None:
        if not batch:
            return
        bulk, keys = self.bulk, [row.key for row in batch]
        hashes = [self.store.address_hash(key) for key in keys]
        found = self.conn.execute(select(*self.known).where(bulk.among(subscribers.c.email_key, keys)))
        existing = {current["email_key"]: current for current in found.mappings()}
        query = select(suppressions.c.address_hash).where(bulk.among(suppressions.c.address_hash, hashes))
        suppressed = set(self.conn.scalars(query))
        new, known = [], []
        for row, address_hash in zip(batch, hashes, strict=True):
            current = existing.get(row.key)
            if address_hash in suppressed:
                self._skip(row, "the address is on the suppression list (erased or blocked)")
            elif current is not None and current["status"] in LEFT:
                self._skip(row, f"{current['status']}: an import never resubscribes people who left")
            elif current is None:
                new.append((row, address_hash))
            else:
                known.append((row, current))
        self._insert(new)
        self._update(known)

    def _event(
        self,
        subscriber_id: int,
        kind: str,
        detail: dict[str, Any] | str,
        from_status: str | None = None,
        to_status: str | None = None,
    ) -> tuple[Any, ...]:
        """One consent-log row (``_EVENTS``); like ``subscribers.event_row``, ``detail`` (a dict, or
        its JSON already made) never holds an address or a name."""
        text = detail if isinstance(detail, str) else self.json(detail)
        return (subscriber_id, self.stamp, kind, from_status, to_status, self.options.actor, text)

    def _insert(self, rows: list[tuple[_Row, str]]) -> None:
        if not rows:
            return
        stamp, actor, welcome = self.stamp, self.options.actor, self.options.welcome
        default = self.options.status or SubscriberStatus.ACTIVE
        active, unsubscribed = SubscriberStatus.ACTIVE, SubscriberStatus.UNSUBSCRIBED
        people, events, enrolled = [], [], []
        tags: list[tuple[int, str]] = []
        for id_, (row, address_hash) in zip(self.bulk.new_ids(subscribers, len(rows)), rows, strict=True):
            status = row.status or default
            if welcome and status == active:
                enrolled.append((id_, stamp, actor))
            given = row.attributes  # an empty cell sets no attribute
            kept = given if "" not in given.values() else {k: v for k, v in given.items() if v}
            attributes = _attributes_json(kept)
            people.append(
                (id_, row.email, row.key, address_hash, row.name, status, attributes, row.timezone, actor,
                 stamp, stamp, stamp if status == active else None, stamp if status == unsubscribed else None)
            )  # fmt: skip
            tags += zip(repeat(id_), row.tags)
            events.append(self._event(id_, "imported", f'{{"line": {row.line}}}', to_status=status))
        self.bulk.insert(subscribers, _PEOPLE, people)
        self.bulk.insert(subscriber_tags, _TAGS, tags)
        self.bulk.insert(subscriber_events, _EVENTS, events)
        self.bulk.insert(welcome_enrollments, _ENROLLMENTS, enrolled)
        self.result.added += len(rows)
        self.result.enrolled += len(enrolled)

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
        tags = list(row.tags) if columns.tags is not None else list(dict.fromkeys([*old_tags, *row.tags]))
        return changes, (tags if set(tags) != set(old_tags) else None)

    def _update(self, pairs: list[tuple[_Row, Any]]) -> None:
        if not pairs:
            return
        now, bulk = self.now, self.bulk
        old_tags: dict[int, list[str]] = {current["id"]: [] for _, current in pairs}
        if self.options.update:
            query = select(subscriber_tags).where(bulk.among(subscriber_tags.c.subscriber_id, list(old_tags)))
            for subscriber_id, tag in self.conn.execute(query):
                old_tags[subscriber_id].append(tag)
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        events, retag = [], {}
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
                events.append(self._event(current["id"], "updated", {"line": row.line, "fields": fields}))
            if status != current["status"]:
                kind = "unsubscribed" if status == "unsubscribed" else "status_changed"
                events.append(self._event(current["id"], kind, {"line": row.line}, current["status"], status))
                changes.update(status=status, **status_timestamps(status, now))
            if tags is not None:
                retag[current["id"]] = tags
            values = {**changes, "updated_at": now}
            updates.setdefault(tuple(sorted(values)), []).append({**values, "b_id": current["id"]})
        for columns, rows in updates.items():  # one executemany per set of columns changed
            self.conn.execute(_update_of(columns), rows)
        if retag:
            self.conn.execute(
                delete(subscriber_tags).where(bulk.among(subscriber_tags.c.subscriber_id, list(retag)))
            )
            bulk.insert(subscriber_tags, _TAGS, [(i, tag) for i, tags in retag.items() for tag in tags])
        bulk.insert(subscriber_events, _EVENTS, events)


@functools.cache
def _update_of(columns: tuple[str, ...]) -> Update:
    """The UPDATE of these columns of one subscriber (``b_id``), for an executemany."""
    values: dict[str, Any] = {name: bindparam(name) for name in columns}
    return update(subscribers).where(subscribers.c.id == bindparam("b_id")).values(values)


class _Batches:
    """The rows of the file a batch at a time, in file order: duplicates named with the line they
    repeat, bad rows rejected (and written to the rejects CSV), the good ones handed to the writer."""

    def __init__(
        self,
        conn: Connection,
        path: str,
        writer: _Writer,
        *,
        skip_invalid: bool,
        rejects: Any,
        undeliverable: Undeliverable | None,
    ) -> None:
        self.conn, self.bulk, self.path, self.writer = conn, writer.bulk, path, writer
        self.result = writer.result
        self.skip_invalid, self.rejects, self.undeliverable = skip_invalid, rejects, undeliverable
        _seen.create(conn)  # inside the transaction: a failed import takes it away with everything else

    def _first_lines(self, window: list[_Entry]) -> dict[str, int]:
        """The line each address in ``window`` was first read on, in this batch or an earlier one."""
        first: dict[str, int] = {}
        for line, _, parsed in window:
            if isinstance(parsed, _Row):
                first.setdefault(parsed.key, line)
        if not first:
            return first
        query = select(_seen.c.email_key, _seen.c.line).where(self.bulk.among(_seen.c.email_key, list(first)))
        earlier = {key: line for key, line in self.conn.execute(query)}
        self.bulk.insert(
            _seen, ("email_key", "line"), [pair for pair in first.items() if pair[0] not in earlier]
        )
        first.update(earlier)
        return first

    def flush(self, window: list[_Entry]) -> None:
        first, result, good = self._first_lines(window), self.result, []
        for line, cells, parsed in window:
            if isinstance(parsed, _Row) and first[parsed.key] != line:
                message = (
                    f"'{parsed.email}' is a duplicate of line {first[parsed.key]} (letter case is ignored)"
                )
                parsed = [Problem(self.path, message, line, field="email")]
            if isinstance(parsed, list):
                _reject(result, parsed)
                if self.rejects is not None:
                    reason = "; ".join(p.message for p in parsed)
                    self.rejects.writerow([guard_cell(cell) for cell in [*cells, reason]])
                continue
            why = self.undeliverable(parsed.email) if self.undeliverable is not None else None
            if why is not None and len(result.warnings) < MAX_PROBLEMS:
                message = f"'{visible(parsed.email)}' {why}"
                result.warnings.append(
                    Problem(self.path, message, line, field="email", severity=Severity.WARNING)
                )
            good.append(parsed)
        if result.rejected and not self.skip_invalid:
            return  # nothing will be written: the rest is read only to report every bad row
        self.writer.write(good)

    def close(self) -> None:
        _seen.drop(self.conn)


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
    welcome: bool = False,
) -> ImportResult:
    """Import subscribers from a CSV file in one transaction; see the module docstring for the rules.

    ``status`` (active or unconfirmed) is given to new people whose row has no status of its own
    (default active). ``update`` refreshes name, tags, attributes and time zone of people already in the
    store. ``rejects`` receives the invalid rows with a ``reason`` column. ``undeliverable`` says which
    addresses the transport in use cannot take; their rows are imported, each with a warning.
    ``welcome`` enrolls the new people who are active in the welcome series (an import enrolls nobody
    without it, and never the people already in the store).
    """
    if status is not None and status not in NEW_STATUSES:
        raise AudienceError(f"status: an import adds people as active or unconfirmed, not '{status}'")
    try:
        extra_tags = [check_tag(tag) for tag in tags]
    except ValueError as exc:
        raise AudienceError(f"--tag: {exc}") from None
    source = CsvSource(Path(path))
    options = _Options(f"import:{Path(path).name}", extra_tags, status, update, welcome)
    result = ImportResult()
    with store.write() as conn, Bulk(conn).roomy_cache(), ExitStack() as files:
        rows = source.rows()
        first = next(rows, None)  # reads the header, so ``source.columns`` is known
        assert source.columns is not None
        checker = _Checker(source.name, source.columns, options)
        batches = _Batches(
            conn,
            source.name,
            _Writer(conn, store, source.name, source.columns, options, result),
            skip_invalid=skip_invalid,
            rejects=_rejects_writer(files, rejects, source) if rejects is not None else None,
            undeliverable=undeliverable,
        )
        window: list[_Entry] = []
        for line, cells in _chain(first, rows):
            window.append((line, cells, checker.parse(line, cells)))
            if len(window) >= BATCH_ROWS:
                batches.flush(window)
                window.clear()
                if progress is not None:
                    progress(source.bytes_read, source.total_bytes)
        batches.flush(window)
        if result.rejected and not skip_invalid:
            problems = result.problems
            if result.rejected > len(problems):
                problems = [
                    *problems,
                    Problem(source.name, f"… {result.rejected - len(problems)} more rows rejected"),
                ]
            raise ImportRejected(problems)
        batches.close()
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
