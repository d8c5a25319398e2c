"""The weekly scheduler in the library, on SQLite and PostgreSQL, with an injected clock (no sleeping):
a year of Tuesdays, DST, downtime inside and outside the catch-up window, restarts, the loop.

What the other scheduler test modules share with this one lives in ``tests/scheduling.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter

import pytest
from sqlalchemy import func, select, update

from pipeline.dispatch import campaigns
from pipeline.dispatch.dispatcher import Dispatcher
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.schedule import decisions
from pipeline.schedule.lease import read_lease
from pipeline.schedule.scheduler import Scheduler
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.tables import campaigns as campaigns_table
from pipeline.store.tables import deliveries, dispatch_runs
from pipeline.transports.base import Batch, Outcome
from pipeline.transports.outbox import OutboxTransport
from pipeline.transports.smtp import SmtpTransport
from tests.fixtures.smtp import SmtpServer
from tests.mail import delivered, outbox_opener, outbox_transport, unknowing_outbox
from tests.scheduling import (
    AUDIENCE,
    NEW_YORK,
    SEVEN,
    ManualClock,
    at_seven,
    issues_dir,
    readers_in_zones,
    scheduler,
    tuned,
    write_issue,
)
from tests.system import dead_pid, free_port

UTC = dt.UTC


@pytest.fixture
def weekly(settings: Settings) -> Settings:
    """Tuesdays at 07:00 New York time, catch up within 12 hours; no issue files yet."""
    issues_dir(settings)
    return tuned(settings, weekday="tuesday", time="07:00", timezone="America/New_York", catch_up_hours=12)


# -- the tests ---------------------------------------------------------------------------------------


def test_a_year_of_weekly_issues_goes_out_on_its_days_exactly_once(store: Store, weekly: Settings) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    days = [dt.date(2027, 1, 5) + dt.timedelta(weeks=n) for n in range(52)]
    slugs = [write_issue(weekly, day) for day in days]
    clock = ManualClock(dt.datetime(2027, 1, 1, tzinfo=UTC))
    sched = scheduler(store, weekly, clock)

    for day, slug in zip(days, slugs, strict=True):
        due = at_seven(day)
        clock.set(due - dt.timedelta(minutes=1))
        before = sched.tick()
        assert not before.outcomes and before.next_slot is not None and before.next_slot.slug == slug
        clock.set(due)
        on_time = sched.tick()
        assert [(o.slug, o.action) for o in on_time.outcomes] == [(slug, "started"), (slug, "sent")]
        assert on_time.outcomes[1].run is not None and on_time.outcomes[1].run.counts == {"sent": 3}
        clock.set(due + dt.timedelta(days=2))
        assert sched.tick().outcomes == []

    assert delivered(weekly) == Counter({(slug, email): 1 for slug in slugs for email in emails})
    made = decisions.all_decisions(store)
    assert {s: (d.decision, d.due_at) for s, d in made.items()} == {
        slug: ("started", at_seven(day)) for slug, day in zip(slugs, days, strict=True)
    }
    assert {c.status for c, _ in campaigns.list_campaigns(store)} == {"finished"}
    assert len(campaigns.list_campaigns(store)) == 52


@pytest.mark.parametrize(
    ("day", "utc_hour"),
    [
        (dt.date(2027, 3, 9), 12),  # EST, before the March change
        (dt.date(2027, 3, 16), 11),  # EDT, after it
        (dt.date(2027, 11, 2), 11),  # EDT, before the November change
        (dt.date(2027, 11, 9), 12),  # EST, after it
    ],
)
def test_seven_oclock_is_seven_local_on_both_sides_of_a_dst_change(
    store: Store, weekly: Settings, day: dt.date, utc_hour: int
) -> None:
    readers_in_zones(store, AUDIENCE)
    slug = write_issue(weekly, day)
    due = dt.datetime.combine(day, dt.time(utc_hour), tzinfo=UTC)
    clock = ManualClock(due - dt.timedelta(seconds=1))
    sched = scheduler(store, weekly, clock)

    assert sched.tick().outcomes == []
    clock.set(due)
    assert [o.action for o in sched.tick().outcomes] == ["started", "sent"]
    decided = decisions.all_decisions(store)[slug]
    assert decided.due_at.astimezone(NEW_YORK).time() == SEVEN
    assert decided.due_at == due


def test_after_downtime_within_catch_up_the_issue_goes_out_late(store: Store, weekly: Settings) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)) + dt.timedelta(hours=11, minutes=59))

    report = scheduler(store, weekly, clock).tick()

    assert [o.action for o in report.outcomes] == ["started", "sent"] and report.ok
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})


def test_after_downtime_beyond_catch_up_the_issue_is_missed_not_sent_and_can_go_by_hand(
    store: Store, weekly: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    late = write_issue(weekly, dt.date(2027, 1, 5))
    upcoming = write_issue(weekly, dt.date(2027, 1, 12))
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)) + dt.timedelta(hours=12, minutes=1))
    sched = scheduler(store, weekly, clock)

    with caplog.at_level(logging.INFO, logger="pipeline"):
        report = sched.tick()

    assert [(o.slug, o.action) for o in report.outcomes] == [(late, "missed")]
    assert not report.ok and report.next_slot is not None and report.next_slot.slug == upcoming
    assert "catch_up_hours = 12" in report.outcomes[0].detail
    assert [r.getMessage() for r in caplog.records if "missed" in r.getMessage()] == [
        f"{late} → everyone: missed: {report.outcomes[0].detail}"
    ]
    assert delivered(weekly) == Counter() and campaigns.list_campaigns(store) == []
    clock.advance(dt.timedelta(days=1))
    assert sched.tick().outcomes == []  # decided once; never sent days late by surprise

    plan = plan_send(store, weekly, issues_dir(weekly, clear=False) / f"{late}.yaml", sched.links)
    campaign, _ = start_campaign(store, plan, "outbox")
    Dispatcher(store, weekly, outbox_transport(weekly), sched.links).run(campaign.id)
    assert sched.tick().outcomes == []
    assert delivered(weekly) == Counter({(late, e): 1 for e in emails})
    assert decisions.all_decisions(store)[late].decision == "missed"


def test_an_issue_sent_by_hand_before_its_day_is_linked_not_sent_again(
    store: Store, weekly: Settings
) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)) - dt.timedelta(days=1))
    sched = scheduler(store, weekly, clock)
    path = issues_dir(weekly, clear=False) / f"{slug}.yaml"
    campaign, _ = start_campaign(store, plan_send(store, weekly, path, sched.links), "outbox")
    Dispatcher(store, weekly, outbox_transport(weekly), sched.links).run(campaign.id)

    clock.advance(dt.timedelta(days=3))  # even past the catch-up window: it was sent, not missed
    report = sched.tick()

    assert [(o.action, o.campaign_id) for o in report.outcomes] == [("started", campaign.id)]
    assert decisions.all_decisions(store)[slug].campaign_id == campaign.id
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})


def test_an_issue_with_errors_on_its_day_fails_the_tick_and_goes_out_once_fixed(
    store: Store, weekly: Settings
) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    path = issues_dir(weekly, clear=False) / f"{slug}.yaml"
    good = path.read_text()
    path.write_text(good.replace("subject:", "subjectt:"))
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)))
    sched = scheduler(store, weekly, clock)

    report = sched.tick()
    assert [o.action for o in report.outcomes] == ["failed"] and not report.ok
    assert "cannot be sent" in report.outcomes[0].detail and "subject" in report.outcomes[0].detail
    assert decisions.all_decisions(store) == {}

    path.write_text(good)
    clock.advance(dt.timedelta(hours=1))
    assert [o.action for o in sched.tick().outcomes] == ["started", "sent"]
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})


class Killed(BaseException):
    """The process dies: nothing after this point runs (no except, no cleanup of the ledger)."""


class DiesOnSecondBatch(OutboxTransport):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.path(settings.delivery.outbox_dir), fsync=False)
        self.batches = 0

    def send(self, batch: Batch) -> list[Outcome]:
        self.batches += 1
        if self.batches == 2:
            raise Killed
        return super().send(batch)


def test_a_restart_after_a_kill_mid_campaign_resumes_it_and_never_resends(
    store: Store, weekly: Settings
) -> None:
    emails = readers_in_zones(store, {f"reader{n:02d}@example.com": None for n in range(10)})
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)))
    dying = DiesOnSecondBatch(weekly)
    first = Scheduler(store, weekly, clock=clock, transports=lambda _name: dying)
    with pytest.raises(Killed):
        first.tick()
    with store.write() as conn:  # as after SIGKILL: the run never ended, its pid is gone
        conn.execute(update(dispatch_runs).values(ended_at=None, pid=dead_pid()))
    with store.read() as conn:
        left = conn.execute(select(func.count()).where(deliveries.c.status == "sending")).scalar_one()
    assert left == 4

    clock.advance(dt.timedelta(seconds=weekly.schedule.lease_seconds + 1))  # the dead one's lease expires
    # A transport that cannot tell what became of the rows in doubt (SMTP, say); the outbox could.
    report = Scheduler(store, weekly, clock=clock, transports=lambda _name: unknowing_outbox(weekly)).tick()

    (sent,) = report.of("sent")
    assert sent.run is not None and sent.run.found_in_doubt == 4 and sent.run.counts == {"sent": 2}
    assert sent.run.campaign.status == "finished" and not report.ok  # in doubt: the operator decides
    mail = delivered(weekly)
    assert set(mail.values()) == {1} and len(mail) == 6 and {s for s, _ in mail} == {slug}
    assert campaigns.report(store, sent.campaign_id or 0).counts == {"sent": 6, "in_doubt": 4}
    assert {e for _, e in mail} < set(emails)


def test_a_crash_between_the_decision_and_the_campaign_is_completed_once(
    store: Store, weekly: Settings
) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    due = at_seven(dt.date(2027, 1, 5))
    assert decisions.decide(store, slug, due, "started", due)  # …and the process died here
    clock = ManualClock(due + dt.timedelta(days=3))

    report = scheduler(store, weekly, clock).tick()

    assert [o.action for o in report.outcomes] == ["sent"]
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(campaigns_table)).scalar_one() == 1


class StopsAfter(ManualClock):
    """A clock whose ``wait`` sets the stop event after ``waits`` waits (a SIGTERM, in effect)."""

    def __init__(self, start: dt.datetime, waits: int) -> None:
        super().__init__(start)
        self.waits = waits

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        self.waits -= 1
        if self.waits <= 0:
            stop.set()
        return super().wait(seconds, stop)


def test_the_loop_ticks_at_start_and_stops_cleanly_releasing_the_lease(
    store: Store, weekly: Settings
) -> None:
    emails = readers_in_zones(store, AUDIENCE)
    slug = write_issue(weekly, dt.date(2027, 1, 5))
    fast = tuned(weekly, tick_seconds=0.001)
    stop = threading.Event()
    clock = StopsAfter(at_seven(dt.date(2027, 1, 5)), waits=3)

    Scheduler(store, fast, clock=clock, stop=stop, transports=outbox_opener(fast)).run_forever()

    assert stop.is_set()
    assert delivered(weekly) == Counter({(slug, e): 1 for e in emails})
    lease = read_lease(store)
    assert lease is not None and lease.expires_at == clock.now()  # released: free for the next one


def test_a_stop_request_finishes_the_batch_in_flight_and_leaves_nothing_sending(
    store: Store, weekly: Settings
) -> None:
    readers_in_zones(store, {f"reader{n:02d}@example.com": None for n in range(10)})
    write_issue(weekly, dt.date(2027, 1, 5))
    stop = threading.Event()

    class SignalDuringFirstBatch(OutboxTransport):
        def send(self, batch: Batch) -> list[Outcome]:
            stop.set()  # SIGTERM arrives while this batch is being sent
            return super().send(batch)

    transport = SignalDuringFirstBatch(weekly.path(weekly.delivery.outbox_dir), fsync=False)
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)))
    report = Scheduler(store, weekly, clock=clock, stop=stop, transports=lambda _n: transport).tick()

    (sent,) = report.of("sent")
    assert sent.run is not None and sent.run.end == "interrupted" and sent.run.counts == {"sent": 4}
    counts = campaigns.report(store, sent.campaign_id or 0).counts
    assert counts == {"sent": 4, "queued": 6}


def test_files_without_a_real_date_in_their_name_are_ignored_and_a_broken_due_one_fails(
    store: Store, weekly: Settings
) -> None:
    readers_in_zones(store, AUDIENCE)
    folder = issues_dir(weekly, clear=False)
    (folder / "notes.yaml").write_text("not: an issue\n")
    (folder / "2027-02-30-impossible.yaml").write_text("not: an issue\n")
    (folder / "2027-01-05-broken.yaml").write_text("subject: [unclosed\n")
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)) + dt.timedelta(hours=1))

    report = scheduler(store, weekly, clock).tick()

    assert [(o.slug, o.action) for o in report.outcomes] == [("2027-01-05-broken", "failed")]
    clock.advance(dt.timedelta(hours=12))  # still broken past the catch-up window: missed, once
    assert [o.action for o in scheduler(store, weekly, clock).tick().outcomes] == ["missed"]


def test_a_transport_that_is_down_fails_the_tick_and_the_next_tick_resumes(
    store: Store, weekly: Settings, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    emails = readers_in_zones(store, AUDIENCE)
    write_issue(weekly, dt.date(2027, 1, 5))
    smtp = weekly.smtp.model_copy(update={"host": "127.0.0.1", "port": free_port(), "security": "none"})
    down = weekly.model_copy(update={"smtp": smtp})
    up = weekly.model_copy(update={"smtp": smtp.model_copy(update={"port": smtp_server.port})})
    target = [down]
    clock = ManualClock(at_seven(dt.date(2027, 1, 5)))
    sched = Scheduler(store, weekly, clock=clock, transports=lambda _name: SmtpTransport(target[0], None))

    first = sched.tick()
    assert [o.action for o in first.outcomes] == ["started", "sent", "failed"] and not first.ok
    assert "transport unavailable" in first.outcomes[-1].detail
    assert smtp_server.handler.recipients() == []

    target[0] = up
    clock.advance(60)
    second = sched.tick()
    assert [o.action for o in second.outcomes] == ["sent"] and second.ok
    assert sorted(smtp_server.handler.recipients()) == sorted(emails)
