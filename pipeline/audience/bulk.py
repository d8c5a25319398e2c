"""Bulk writes and lookups inside one open transaction, at the driver's speed: what a big import needs.

SQLAlchemy Core converts every parameter of every row of an ``executemany`` (type processors,
parameter dictionaries, expanding ``IN`` lists), which made an import of 100,000 rows spend more time
there than in the database. Here rows are tuples of values the driver takes as they are: one
``executemany`` on SQLite, one ``COPY … FROM STDIN`` on PostgreSQL, both in the caller's transaction, so
a failure anywhere still rolls everything back. A lookup by many keys is one statement with one
parameter (a JSON list, read by ``json_each`` on SQLite and ``json_array_elements_text`` on
PostgreSQL) however many keys there are, so it uses the column's index without a placeholder per key.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
            statement = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({', '.join('?' * len(columns))})"
            with self._driver(statement) as driver:
                driver.executemany(statement, rows)
            return
        statement = f"COPY {quote(table.name)} ({names}) FROM STDIN"
        with self._driver(statement) as driver, driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    @contextmanager
    def _driver(self, statement: str) -> Iterator[Any]:
        """The driver's connection; its errors wrapped as SQLAlchemy's, so ``Store`` reports them."""
        try:
            yield self.conn.connection.driver_connection
        except self._dbapi.Error as exc:
            raise DBAPIError.instance(statement, None, exc, self._dbapi.Error) from exc


def _same(value: Any) -> Any:
    return value


def _copy_text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value
