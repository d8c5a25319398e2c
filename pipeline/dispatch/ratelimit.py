"""A token bucket shared by every sending thread: at most ``rate`` messages per second on average."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
