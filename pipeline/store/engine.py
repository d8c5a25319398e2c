"""The store: one SQLAlchemy engine (SQLite by default, PostgreSQL through psycopg) kept at the newest schema.

``open_store(settings)`` is all most code needs: it opens the configured database, runs any pending
Alembic migration (so a fresh clone works without setup) and hands back a ``Store`` that knows the key
for address hashes. SQLite gets WAL, foreign keys and a busy timeout on every connection, and write
transactions start with ``BEGIN IMMEDIATE`` so two writers queue instead of failing halfway. The SQLite
file holds every subscriber's address, so it is private: its folder is made 0700, the database (and its
``-wal``/``-shm``) 0600.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple

from sqlalchemy import ColumnElement, Row, Select, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from pipeline.errors import StoreError
from pipeline.settings import Settings
from pipeline.tokens import Signer, load_secret_key

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "pipeline_immediate"
Ts = TypeVarTuple("Ts")


T = TypeVar("T")

IN_CHUNK = 500
"""The most values one ``IN (…)`` list carries: far below every engine's limit on bound parameters."""


def in_chunks(values: Iterable[T]) -> Iterator[list[T]]:
    """``values`` in lists of at most ``IN_CHUNK``, one ``IN (…)`` statement each."""
    items = list(values)
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC: the only kind of time the store keeps."""
    return dt.datetime.now(dt.UTC)


def _sqlite_setup(engine: Engine) -> None:
    """Per-connection pragmas, and transactions begun by us (IMMEDIATE for writes), not by pysqlite."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``; ``postgresql://`` means psycopg 3, the only PostgreSQL driver we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"store url '{url}': {exc}") from None
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_database(Path(parsed.database))
        engine = create_engine(parsed)
        _sqlite_setup(engine)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"store url '{_safe(url)}': only sqlite:/// and postgresql+psycopg:// are supported")
    return create_engine(parsed, pool_pre_ping=True)


def _private_database(path: Path) -> None:
    """Make the folder (0700) and the database file (0600) before SQLite does, so no other user on the
    machine can read the list; SQLite gives ``-wal`` and ``-shm`` the database's mode. Files of ours
    that are more open are tightened; a folder that is, only reported (it may not be ours alone)."""
    folder = path.parent
    if folder.is_dir():
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o077:
            log.warning("%s is open to other users (mode %04o): run `chmod 700 %s`", folder, mode, folder)
    else:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            file.chmod(0o600)
        except PermissionError:
            log.warning("%s is open to other users (mode %04o): run `chmod 600 %s`", file, mode, file)
        else:
            log.warning("%s was open to other users (mode %04o): it is 0600 now", file, mode)


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class Store:
    """An open database plus the key that hashes addresses for the suppression list."""

    def __init__(self, engine: Engine, signer: Signer, *, segments_file: Path | None = None) -> None:
        self.engine = engine
        self.signer = signer
        self.segments_file = segments_file
        """Where segment names are looked up (``pipeline.audience.segments``); None when made without settings."""

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def address_hash(self, email_key: str) -> str:
        """The keyed hash that identifies an address on the suppression list without storing it."""
        return self.signer.address_hash(email_key)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for queries (it may begin a transaction; nothing is committed)."""
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back entirely if it raises."""
        with self._errors(), self.engine.connect() as conn:
            conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            detail = getattr(exc, "orig", None) or exc
            raise StoreError(f"{self.url}: {detail}") from exc

    def pages(self, query: Select[*Ts], key: ColumnElement[int], size: int) -> Iterator[Sequence[Row[*Ts]]]:
        """Rows of ``query`` in ``key`` order, ``size`` at a time, by keyset pagination.

        Each page is one short read (``WHERE key > last ORDER BY key LIMIT size``): memory stays flat
        however big the table, and no transaction stays open while the caller works through a page.
        The key must be one of the columns ``query`` selects.
        """
        paged = query.order_by(key).limit(size)
        last: Any = None
        while True:
            with self.read() as conn:
                page = conn.execute(paged if last is None else paged.where(key > last)).all()
            if page:
                yield page
            if len(page) < size:
                return
            last = page[-1]._mapping[key]

    def current_revision(self) -> str | None:
        """The migration the database is at; None for an empty database."""
        with self.read() as conn:
            return _revision(conn)

    def upgrade(self) -> str:
        """Run every pending migration in one transaction and return the revision now current."""
        head = head_revision()
        with self._migrating() as conn:
            current = _revision(conn)
            if current is not None and current not in _known_revisions():
                raise StoreError(
                    f"{self.url}: database is at revision {current}, which this version of the pipeline "
                    f"does not know (newest known: {head}); upgrade the pipeline"
                )
            if current != head:
                from alembic import command  # only when there is something to migrate: a 0.2 s import
                from alembic.config import Config

                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        return head

    @contextmanager
    def _migrating(self) -> Iterator[Connection]:
        """``write()`` for migrations. On SQLite foreign keys are off meanwhile, as SQLite's own recipe
        for schema changes says (rebuilding a table drops it, and the drop would cascade to the rows
        pointing at it), and checked before the transaction commits."""
        sqlite = self.dialect == "sqlite"
        with self._errors(), self.engine.connect() as conn:
            raw = conn.connection.driver_connection  # outside any transaction: the pragma works only there
            assert raw is not None
            if sqlite:
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                conn.execution_options(**{_IMMEDIATE: True})
                with conn.begin():
                    yield conn
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise StoreError(f"{self.url}: a migration left rows that point at nothing")
            finally:
                if sqlite:
                    raw.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        """Close every pooled connection (tests rely on this to leave no ResourceWarning)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _revision(conn: Connection) -> str | None:
    """Read Alembic's version table directly: MigrationContext would log at INFO on every command."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _known_revisions() -> set[str]:
    """Every migration this code knows, by the number its file starts with (``0006_bounce_lookups.py``
    is revision "0006"): read from the file names, so checking a current store needs no Alembic.
    tests/test_store.py holds the convention against Alembic's own reading of the folder."""
    return {path.name.partition("_")[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py")}


def head_revision() -> str:
    """The newest migration this code knows (each revises the one numbered before it)."""
    return max(_known_revisions())


def connect(url: str, key: bytes, *, segments_file: Path | None = None, migrate: bool = True) -> Store:
    """Open the database at ``url``; with ``migrate`` bring its schema to the newest revision first."""
    store = Store(create_store_engine(url), Signer(key), segments_file=segments_file)
    try:
        if migrate and store.current_revision() != head_revision():
            store.upgrade()
    except BaseException:
        store.close()
        raise
    return store


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """The project's store, as configured in settings.toml, migrated on first use."""
    return connect(
        settings.store_url,
        load_secret_key(settings),
        segments_file=settings.path(settings.newsletter.segments_file),
        migrate=migrate,
    )
