"""The token bucket every sending thread shares, on a simulated clock."""

from __future__ import annotations

import pytest

from pipeline.dispatch.ratelimit import RateLimiter


class SimulatedTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float, burst: float) -> tuple[RateLimiter, SimulatedTime]:
    time = SimulatedTime()
    return RateLimiter(rate, burst, clock=time.clock, sleep=time.sleep), time


def test_a_burst_goes_at_once_then_the_average_rate_holds() -> None:
    bucket, time = limiter(rate=10.0, burst=10)
    assert bucket.acquire(10) == 0.0
    for _ in range(5):
        bucket.acquire(10)
    assert time.now == pytest.approx(5.0)  # 50 more messages at 10/s


def test_a_batch_larger_than_the_bucket_waits_long_enough_to_pay_for_itself() -> None:
    bucket, time = limiter(rate=100.0, burst=100)
    bucket.acquire(100)
    bucket.acquire(500)
    assert time.now == pytest.approx(5.0)


def test_try_acquire_takes_only_what_is_there_and_never_waits() -> None:
    bucket, time = limiter(rate=10.0, burst=20)
    assert bucket.try_acquire(15)
    assert not bucket.try_acquire(10)  # 5 left
    time.now += 0.5
    assert bucket.try_acquire(10)  # refilled by 5
    assert time.now == pytest.approx(0.5)


def test_idle_time_refills_no_more_than_the_burst() -> None:
    bucket, time = limiter(rate=10.0, burst=10)
    bucket.acquire(10)
    time.now += 3600
    assert bucket.acquire(10) == 0.0
    assert bucket.acquire(10) == pytest.approx(1.0)
