"""One scheduler at a time: the lease in the store, on SQLite and PostgreSQL, raced by threads that each
have their own connection pool (as separate processes would), and taken over when its holder dies."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pipeline.dispatch import campaigns
from pipeline.schedule.lease import Lease, read_lease
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect
from tests.fixtures.store import TEST_KEY
from tests.mail import delivered
from tests.scheduling import (
    AUDIENCE,
    ManualClock,
    at_seven,
    issues_dir,
    readers_in_zones,
    scheduler,
    tuned,
    write_issue,
)
from tests.system import dead_pid

T = TypeVar("T")
START = dt.datetime(2027, 1, 4, 12, 0, tzinfo=dt.UTC)
RACERS = 8


@pytest.fixture
def stores(store_url: str, project: Path) -> Iterator[list[Store]]:
    """Independent stores (engines) on one database: one per racing instance."""
    opened = [
        connect(store_url, TEST_KEY, segments_file=project / "subscribers" / "segments.toml")
        for _ in range(RACERS)
    ]
    yield opened
    for one in opened:
        one.close()


def race(actions: list[Callable[[], T]]) -> list[T]:
    """Run every action on its own thread, released at the same moment; their results, in order."""
    barrier = threading.Barrier(len(actions))
    results: list[T | BaseException | None] = [None] * len(actions)

    def runner(index: int) -> None:
        barrier.wait()
        try:
            results[index] = actions[index]()
        except BaseException as exc:  # re-raised below, on the test's thread
            results[index] = exc

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_the_holder_renews_others_wait_and_release_frees_it(store: Store) -> None:
    mine, theirs = Lease(store, 60), Lease(store, 60)
    assert mine.holder.startswith(f"{socket.gethostname()[:100]}:{os.getpid()}:")
    assert mine.holder != theirs.holder

    assert mine.acquire(START)
    assert not theirs.acquire(START + dt.timedelta(seconds=30))
    assert mine.acquire(START + dt.timedelta(seconds=50))  # renewed: now expires at +110 s
    assert not theirs.acquire(START + dt.timedelta(seconds=100))
    state = read_lease(store)
    assert state is not None and state.holder == mine.holder
    assert (state.acquired_at, state.expires_at) == (START, START + dt.timedelta(seconds=110))

    mine.release(START + dt.timedelta(seconds=100))
    state = read_lease(store)
    assert state is not None and state.holder == mine.holder  # who held it last, and until when
    assert state.expired(START + dt.timedelta(seconds=100))
    assert theirs.acquire(START + dt.timedelta(seconds=100))
    mine.release(START + dt.timedelta(seconds=100))  # no longer ours: nothing happens
    assert not mine.acquire(START + dt.timedelta(seconds=101))


def test_a_lease_whose_holder_died_is_taken_over_after_it_expires(store: Store) -> None:
    dead, alive = Lease(store, 60, holder="gone:1:dead"), Lease(store, 60)
    assert dead.acquire(START)

    assert not alive.acquire(START + dt.timedelta(seconds=59))
    assert alive.acquire(START + dt.timedelta(seconds=60))
    state = read_lease(store)
    assert state is not None and (state.holder, state.acquired_at) == (
        alive.holder,
        START + dt.timedelta(seconds=60),
    )
    assert not dead.acquire(START + dt.timedelta(seconds=61))  # back from the dead: it must wait


def test_a_holder_that_died_on_this_host_is_taken_over_at_once(store: Store) -> None:
    """A scheduler SIGKILLed and restarted on the same machine does not wait out its own lease."""
    dead = Lease(store, 300, holder=f"{socket.gethostname()}:{dead_pid()}:killed")
    assert dead.acquire(START)
    state = read_lease(store)
    assert state is not None and state.holder_gone and not state.expired(START)

    restarted = Lease(store, 300)
    assert restarted.acquire(START + dt.timedelta(seconds=1))
    state = read_lease(store)
    assert state is not None and state.holder == restarted.holder and not state.holder_gone


def test_a_live_holder_or_one_on_another_host_is_not_taken_over_early(store: Store) -> None:
    for holder in (f"{socket.gethostname()}:{os.getpid()}:alive", f"elsewhere:{dead_pid()}:remote"):
        other = Lease(store, 300, holder=holder)
        assert other.acquire(START)
        assert not Lease(store, 300).acquire(START + dt.timedelta(seconds=1)), holder
        other.release(START)


@pytest.mark.parametrize("expired_holder", [None, "gone:1:dead"])
def test_racing_instances_exactly_one_takes_the_lease(
    stores: list[Store], expired_holder: str | None
) -> None:
    if expired_holder:
        assert Lease(stores[0], 60, holder=expired_holder).acquire(START - dt.timedelta(hours=1))
    leases = [Lease(one, 60) for one in stores]

    won = race([lambda lease=lease: lease.acquire(START) for lease in leases])  # type: ignore[misc]

    assert won.count(True) == 1
    state = read_lease(stores[0])
    assert state is not None and state.holder == leases[won.index(True)].holder


def test_two_schedulers_racing_exactly_one_acts_and_everyone_gets_the_issue_once(
    stores: list[Store], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    issues_dir(settings)
    weekly = tuned(settings, timezone="America/New_York")
    emails = readers_in_zones(stores[0], AUDIENCE)
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)))
    first, second = scheduler(stores[0], weekly, clock), scheduler(stores[1], weekly, clock)

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        reports = race([first.tick, second.tick])

    acted = [r for r in reports if not r.waiting_for_lease]
    waited = [r for r in reports if r.waiting_for_lease]
    assert len(acted) == 1 and len(waited) == 1
    assert [o.action for o in acted[0].outcomes] == ["started", "sent"]
    assert waited[0].outcomes == []
    holder = waited[0].holder
    assert holder is not None and holder.holder in {first.lease.holder, second.lease.holder}
    assert f"another scheduler holds the lease ({holder.holder} until" in caplog.text
    assert len(campaigns.list_campaigns(stores[0])) == 1
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})


def test_a_waiting_scheduler_takes_over_when_the_holder_dies(
    store: Store, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    issues_dir(settings)
    weekly = tuned(settings, timezone="America/New_York", lease_seconds=300)
    emails = readers_in_zones(store, AUDIENCE)
    due = at_seven(dt.date(2027, 1, 5))
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    clock = ManualClock(due - dt.timedelta(minutes=2))
    doomed, standby = scheduler(store, weekly, clock), scheduler(store, weekly, clock)
    assert doomed.tick().outcomes == []  # holds the lease, then dies silently (no release)

    clock.set(due)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        waiting = standby.tick()
        assert waiting.holder is not None and waiting.holder.holder == doomed.lease.holder
        assert standby.tick().waiting_for_lease  # says so once, not every tick
        clock.set(due - dt.timedelta(minutes=2) + dt.timedelta(seconds=300))
        report = standby.tick()

    assert [o.action for o in report.outcomes] == ["started", "sent"]
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})
    messages = [r.getMessage() for r in caplog.records]
    assert sum("another scheduler holds the lease" in m for m in messages) == 1
    assert f"took over the lease from {doomed.lease.holder}" in caplog.text
