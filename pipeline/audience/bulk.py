"""Bulk writes and lookups inside one open transaction, at the driver's speed: what a big import needs.

SQLAlchemy Core converts every parameter of every row of an ``executemany`` (type processors,
parameter dictionaries, expanding ``IN`` lists), which made an import of 100,000 rows spend more time
there than in the database. Here rows are tuples of values the driver takes as they are: on SQLite an
``executemany`` of INSERTs of many rows each (SQLite checks a CHECK's ``IN`` list, the AUTOINCREMENT
counter and foreign keys once per statement: once per row, that was over a quarter of the cost), on
PostgreSQL one ``COPY … FROM STDIN``, both in the caller's transaction, so a failure anywhere still
rolls everything back. ``roomy_cache`` gives SQLite's page cache room for the indexes a big write
touches, for that write only. A lookup by many keys is one statement with one parameter (a JSON list,
read by ``json_each`` on SQLite and ``json_array_elements_text`` on PostgreSQL) however many keys
there are, so it uses the column's index without a placeholder per key.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Connection,
    Table,
    Text,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

IMPORT_CACHE_MB = 16
"""SQLite's page cache during a big write (its default is 2 MB): fewer pages of the random-order
indexes (``email_key``, ``address_hash``) go out to the WAL and back, 9% less CPU for 100,000 rows; a
fixed size, so a longer file takes no more memory."""
_SQLITE_ROWS = 500
"""Rows per INSERT statement on SQLite (fewer if SQLite's limit on bound parameters says so)."""
_HIGHEST_SQLITE = (
    "SELECT max(coalesce((SELECT max(id) FROM {table}), 0),"
    " coalesce((SELECT seq FROM sqlite_sequence WHERE name = :name), 0))"
)


class Bulk:
    """Driver-level writes and keyed lookups on ``conn``, which must be inside ``Store.write()``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self._dbapi = conn.dialect.loaded_dbapi
        self._next_id: dict[str, int] = {}

    def value_of(self, column: Column[Any]) -> Callable[[Any], Any]:
        """What ``insert`` takes for a Python value of ``column``: the column type's own conversion
        (a datetime as SQLite's text, a dict as JSON), looked up once instead of once per row. For
        COPY a datetime is its ISO text, which PostgreSQL reads back exactly: psycopg's formatting of
        datetimes costs more than all the rest of a row."""
        processor = column.type.dialect_impl(self.conn.dialect).bind_processor(self.conn.dialect) or _same
        if self.sqlite:
            return processor
        return lambda value: _copy_text(processor(value))

    def among(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """``column IN values`` with the values in one JSON text: one parameter (made at C speed, where
        psycopg would quote each element of an array in Python), an index lookup per value."""
        listed = bindparam(None, json.dumps(list(values)), type_=Text())
        if self.sqlite:
            return column.in_(select(func.json_each(listed).table_valued("value").c.value))
        elements = func.json_array_elements_text(cast(listed, JSON)).table_valued("value")
        return column.in_(select(cast(elements.c.value, column.type)))

    def new_ids(self, table: Table, count: int) -> list[int]:
        """``count`` ids for new rows of ``table`` (its key ``id``), never used before.

        SQLite: past the table's AUTOINCREMENT counter and every id in it, counted on in Python (the
        write transaction holds the database's only write lock, so no one else takes one meanwhile;
        inserting them moves the counter). PostgreSQL: taken from the column's sequence.
        """
        if count == 0:
            return []
        if self.sqlite:
            start = self._next_id.get(table.name)
            if start is None:
                highest = text(_HIGHEST_SQLITE.format(table=table.name))
                start = int(self.conn.execute(highest, {"name": table.name}).scalar_one()) + 1
            self._next_id[table.name] = start + count
            return list(range(start, start + count))
        series = text("SELECT nextval(pg_get_serial_sequence(:name, 'id')) FROM generate_series(1, :count)")
        return sorted(self.conn.scalars(series, {"name": table.name, "count": count}))

    def insert(self, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Append ``rows`` (tuples of driver values in the order of ``columns``) to ``table``."""
        if not rows:
            return
        quote = self.conn.dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in columns)
        if self.sqlite:
            self._insert_sqlite(f"INSERT INTO {quote(table.name)} ({names}) VALUES ", len(columns), rows)
            return
        statement = f"COPY {quote(table.name)} ({names}) FROM STDIN"
        with self._driver(statement) as driver, driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def _insert_sqlite(self, head: str, width: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """``rows`` in statements of ``_SQLITE_ROWS`` rows each: SQLite's work per statement (the CHECK
        constraint's ``IN`` list made anew, the AUTOINCREMENT counter, foreign-key bookkeeping) is then
        paid once per statement instead of once per row. The few left over go one a statement: one
        statement per count left over would fill the driver's cache of prepared statements with
        programs for hundreds of rows, and a long import's memory with them."""
        with self._driver(head) as driver:
            per = max(1, min(_SQLITE_ROWS, driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
            whole = len(rows) - len(rows) % per
            if whole:
                driver.executemany(_values(head, width, per), _flat(rows, whole, per))
            if whole < len(rows):
                driver.executemany(_values(head, width, 1), rows[whole:])

    @contextmanager
    def roomy_cache(self, mebibytes: int = IMPORT_CACHE_MB) -> Iterator[None]:
        """SQLite's page cache at ``mebibytes`` inside the block, then back as it was: the memory is
        bounded, however many rows are written, and other users of the pooled connection keep theirs."""
        if not self.sqlite:
            yield
            return
        with self._driver("PRAGMA cache_size") as driver:
            (before,) = driver.execute("PRAGMA cache_size").fetchone()
            driver.execute(f"PRAGMA cache_size = {-1024 * mebibytes}")
        try:
            yield
        finally:
            with self._driver("PRAGMA cache_size") as driver:
                driver.execute(f"PRAGMA cache_size = {int(before)}")

    @contextmanager
    def _driver(self, statement: str) -> Iterator[Any]:
        """The driver's connection; its errors wrapped as SQLAlchemy's, so ``Store`` reports them."""
        try:
            yield self.conn.connection.driver_connection
        except self._dbapi.Error as exc:
            raise DBAPIError.instance(statement, None, exc, self._dbapi.Error) from exc


def _values(head: str, width: int, count: int) -> str:
    """``head`` followed by ``count`` rows of ``width`` placeholders."""
    return head + ", ".join([f"({', '.join('?' * width)})"] * count)


def _flat(rows: Sequence[tuple[Any, ...]], end: int, per: int) -> Iterator[list[Any]]:
    """The values of ``rows[:end]``, ``per`` rows at a time, in one list each."""
    for start in range(0, end, per):
        yield list(chain.from_iterable(rows[start : start + per]))


def _same(value: Any) -> Any:
    return value


def _copy_text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value
