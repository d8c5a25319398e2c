"""Pacing: at most ``rate`` messages per second on average, in this process (``RateLimiter``, shared by
its threads) or for the whole campaign across processes and machines (``SharedPace``, in the store)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select, update

from pipeline.store.engine import Store, utcnow
from pipeline.store.tables import campaigns


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(rate, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def try_acquire(self, count: int) -> bool:
        """Take ``count`` tokens if the bucket holds them now; never waits."""
        with self._lock:
            now = self._clock()
            tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            if tokens < count:
                return False
            self._tokens, self._updated = tokens - count, now
            return True

    def acquire(self, count: int = 1, *, sleep: Callable[[float], object] | None = None) -> float:
        """Block until ``count`` messages may go; returns the seconds waited.

        Callers reserve their slot under the lock and sleep outside it, so concurrent threads queue in
        order; a batch larger than the bucket simply waits long enough to pay for itself. ``sleep``
        spends this one wait otherwise (the dispatcher records returning batches meanwhile).
        """
        with self._lock:
            now = self._clock()
            tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            wait = max(0.0, (count - tokens) / self.rate)
            # The bucket as it will be when this caller goes: refilled while waiting, minus its share.
            self._tokens = tokens + wait * self.rate - count
            self._updated = now + wait
        if wait > 0:
            (sleep or self._sleep)(wait)
        return wait


class Pace(Protocol):
    """What the dispatcher paces its claims with: a bucket of this process, or one in the store."""

    def try_acquire(self, count: int) -> bool: ...

    def acquire(self, count: int = 1, *, sleep: Callable[[float], object] | None = None) -> float: ...


class SharedPace:
    """The campaign's rate kept in its row of the store, so it holds across every process and machine
    sending the campaign: one short transaction per batch reserves the batch's share of time.

    It is a token bucket in the form of GCRA: ``paced_until`` is when the last reserved message may
    go; a reservation of ``count`` moves it ``count / rate`` on from itself (or from now, if that is
    later), and waits for whatever passes the ``burst`` the bucket allows. Machines sharing a store
    must keep their clocks in step (NTP), as for the scheduler's lease.
    """

    def __init__(
        self,
        store: Store,
        campaign_id: int,
        rate: float,
        burst: float,
        *,
        now: Callable[[], dt.datetime] = utcnow,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.rate = rate
        self.burst = burst
        self._now = now
        self._sleep = sleep

    def _reserve(self, count: int, *, only_without_waiting: bool) -> float | None:
        """Seconds to wait before ``count`` messages may go (reserved), or None if they would have to
        wait and ``only_without_waiting`` (nothing reserved then)."""
        c = campaigns.c
        with self.store.write() as conn:
            query = select(c.paced_until).where(c.id == self.campaign_id)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()  # SQLite's BEGIN IMMEDIATE already serialises writers
            paced_until = conn.execute(query).scalar_one_or_none()
            now = self._now()
            reserved = max(paced_until or now, now) + dt.timedelta(seconds=count / self.rate)
            wait = (reserved - now).total_seconds() - self.burst / self.rate
            if wait > 0 and only_without_waiting:
                return None
            conn.execute(update(campaigns).where(c.id == self.campaign_id).values(paced_until=reserved))
        return max(0.0, wait)

    def try_acquire(self, count: int) -> bool:
        return self._reserve(count, only_without_waiting=True) is not None

    def acquire(self, count: int = 1, *, sleep: Callable[[float], object] | None = None) -> float:
        wait = self._reserve(count, only_without_waiting=False) or 0.0
        if wait > 0:
            (sleep or self._sleep)(wait)
        return wait
