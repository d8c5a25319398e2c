"""A named lease in the store, so only one scheduler acts at a time, on one machine or several.

Taking the lease is one conditional statement, atomic on SQLite (``BEGIN IMMEDIATE`` serialises
writers) and PostgreSQL (a second ``UPDATE`` of the row waits, then re-checks its ``WHERE``):
``UPDATE … SET holder = me WHERE name = ? AND (holder = me OR expires_at <= now)``; when no row exists
yet, an ``INSERT`` whose primary key lets only one of two racing instances win. The holder renews it
on every tick; a holder that died stops renewing, and the lease is taken over once it has expired.
A clean exit releases it by expiring it at once, so the row still names the last holder.
Times come from the caller's clock: machines sharing a store must keep their clocks in step (NTP).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass

from sqlalchemy import case, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from pipeline import liveness
from pipeline.errors import StoreError
from pipeline.store.engine import Store
from pipeline.store.tables import UtcDateTime, leases

SCHEDULER = "scheduler"


def holder_id() -> str:
    """``host:pid:random``: says where the holder runs, and differs between two runs of one pid."""
    return f"{liveness.this_host()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"


def holder_gone(holder: str) -> bool:
    """True when the holder (``host:pid:random``) was a process on this host that no longer exists."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    return liveness.gone(parts[0], int(parts[1]))


@dataclass(frozen=True, slots=True)
class LeaseState:
    name: str
    holder: str
    acquired_at: dt.datetime
    expires_at: dt.datetime

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at <= now

    @property
    def holder_gone(self) -> bool:
        """Its holder died on this host: the lease is free although it has not expired."""
        return holder_gone(self.holder)


class Lease:
    """The lease called ``name``, as seen by ``holder``."""

    def __init__(
        self, store: Store, seconds: float, *, name: str = SCHEDULER, holder: str | None = None
    ) -> None:
        self.store = store
        self.name = name
        self.holder = holder or holder_id()
        self.duration = dt.timedelta(seconds=seconds)

    def acquire(self, now: dt.datetime) -> bool:
        """Take the lease, or renew it if we hold it; False while someone else holds it unexpired.

        A holder that died on this host (its pid is gone) is taken over at once, expired or not.
        """
        c = leases.c
        free = or_(c.holder == self.holder, c.expires_at <= now)
        held = self.current()
        if held is not None and held.holder != self.holder and held.holder_gone:
            free = or_(free, c.holder == held.holder)  # still that dead holder when we update
        with self.store.write() as conn:
            renewed = conn.execute(
                update(leases)
                .where(c.name == self.name, free)
                .values(
                    holder=self.holder,
                    acquired_at=case(
                        (c.holder == self.holder, c.acquired_at), else_=literal(now, UtcDateTime())
                    ),
                    expires_at=now + self.duration,
                )
            ).rowcount
        if renewed:
            return True
        try:
            with self.store.write() as conn:
                conn.execute(
                    insert(leases).values(
                        name=self.name, holder=self.holder, acquired_at=now, expires_at=now + self.duration
                    )
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False  # someone holds it (or took it a moment ago)
            raise
        return True

    def release(self, now: dt.datetime) -> None:
        """Give the lease up (a clean exit): it expires now, so a restart need not wait, and the row
        still says who held it last and when it stopped."""
        c = leases.c
        with self.store.write() as conn:
            conn.execute(
                update(leases)
                .where(c.name == self.name, c.holder == self.holder, c.expires_at > now)
                .values(expires_at=now)
            )

    def current(self) -> LeaseState | None:
        return read_lease(self.store, self.name)


def read_lease(store: Store, name: str = SCHEDULER) -> LeaseState | None:
    """Who holds the lease and until when (possibly expired); None if nobody ever took it."""
    c = leases.c
    with store.read() as conn:
        row = conn.execute(
            select(c.name, c.holder, c.acquired_at, c.expires_at).where(c.name == name)
        ).first()
    return LeaseState(row.name, row.holder, row.acquired_at, row.expires_at) if row else None
