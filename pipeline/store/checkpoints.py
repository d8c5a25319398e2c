"""SQLite's WAL checkpoints on a thread of their own while a process writes in a loop (a send, the web service).

In WAL mode the commit that takes the log past ``wal_autocheckpoint`` pages (1000) copies the log into
the database and syncs it, in the committing thread. A send commits twice per batch, and its commits
took 1.1 ms on average where they take 0.27 without those checkpoints: a tenth of the send loop's
time per batch, spent waiting for the disk while the couriers waited for the loop. A thread that runs a
``PASSIVE`` checkpoint every 50 ms keeps the log short, so those commits never reach the limit: the
copying happens beside the loop. Nothing about durability changes (every commit is what it was;
a checkpoint only moves committed pages), and the automatic checkpoint stays on as the fallback if this
thread falls behind or stops. On PostgreSQL there is nothing to do.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError

from pipeline.store.engine import Store

log = logging.getLogger(__name__)
EVERY_SECONDS = 0.05


@contextmanager
def in_background(store: Store, every: float = EVERY_SECONDS) -> Iterator[None]:
    """Checkpoint ``store`` every ``every`` seconds on another thread while the block runs (SQLite)."""
    if store.dialect != "sqlite":
        yield
        return
    done = threading.Event()
    thread = threading.Thread(target=_checkpoint, args=(store, every, done), name="checkpoints", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _checkpoint(store: Store, every: float, done: threading.Event) -> None:
    """``PASSIVE``: never waits for a reader or a writer, copies what it can and leaves the rest. If the
    database cannot be reached (gone, say), the thread ends and the automatic checkpoints remain."""
    connection = None
    try:
        connection = store.engine.raw_connection()
        while not done.wait(every):
            cursor = connection.cursor()
            try:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
            finally:
                cursor.close()
    except (sqlite3.Error, DBAPIError) as exc:  # the driver's own, or SQLAlchemy's around a connect
        log.debug("background checkpoints stopped (automatic ones go on): %s", exc)
    finally:
        if connection is not None:
            connection.close()
