"""Per-recipient time zones across the date line: each reader gets the issue at 07:00 their time.

Auckland's Tuesday morning is Monday evening in UTC; Honolulu's comes a day later. The ledger rows get
their ``send_at`` when the campaign is created (one UPDATE per zone); SMTP and the outbox send each
bucket when its hour comes, on the scheduler's ticks; SendGrid gets every bucket at once, ahead, as
``send_at`` (never more than 72 hours ahead), one time per request.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event, select, update

from pipeline.content.issue import load_issue
from pipeline.dispatch import campaigns
from pipeline.render.renderer import render
from pipeline.schedule.localtime import local_moment
from pipeline.schedule.scheduler import Scheduler
from pipeline.schedule.status import agenda
from pipeline.settings import Settings
from pipeline.store.engine import Store, utcnow
from pipeline.store.tables import deliveries
from pipeline.transports.sendgrid import SendGridTransport
from tests.emulators.sendgrid import SendGridEmulator
from tests.fixtures.smtp import SmtpServer
from tests.mail import delivered
from tests.scheduling import ManualClock, at_seven, issues_dir, readers_in_zones, tuned, write_issue
from tests.transport_helpers import dispatcher

DAY = dt.date(2027, 1, 5)  # a Tuesday; summer in New Zealand (UTC+13)
ZONES = {
    "kiri@example.com": "Pacific/Auckland",
    "tama@example.com": "Pacific/Auckland",
    "hana@example.com": "Pacific/Honolulu",
    "lou@example.com": "America/Los_Angeles",
    "nat@example.com": None,  # no zone: the newsletter's (America/New_York)
}
BUCKETS = {  # 07:00 local on DAY, in UTC
    "Pacific/Auckland": dt.datetime(2027, 1, 4, 18, 0, tzinfo=dt.UTC),
    None: dt.datetime(2027, 1, 5, 12, 0, tzinfo=dt.UTC),
    "America/Los_Angeles": dt.datetime(2027, 1, 5, 15, 0, tzinfo=dt.UTC),
    "Pacific/Honolulu": dt.datetime(2027, 1, 5, 17, 0, tzinfo=dt.UTC),
}
FIRST_MORNING = dt.datetime(2027, 1, 4, 17, 0, tzinfo=dt.UTC)  # 07:00 at UTC+14: the campaign starts


@pytest.fixture
def local(settings: Settings) -> Settings:
    issues_dir(settings)
    return tuned(settings, per_recipient_timezone=True, time="07:00", timezone=None)


def send_times(store: Store) -> dict[str, dt.datetime]:
    with store.read() as conn:
        return dict(conn.execute(select(deliveries.c.email, deliveries.c.send_at)).all())


def emails_in(zone: str | None) -> set[str]:
    return {email for email, z in ZONES.items() if z == zone}


@pytest.fixture
def updates(store: Store) -> Iterator[list[str]]:
    """The SQL of every UPDATE that sets ``deliveries.send_at``."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("UPDATE deliveries SET send_at"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    yield seen
    event.remove(store.engine, "before_cursor_execute", record)


def test_each_zone_gets_seven_oclock_local_in_one_update_per_zone(
    store: Store, local: Settings, updates: list[str]
) -> None:
    readers_in_zones(store, ZONES)
    write_issue(local, DAY)
    clock = ManualClock(FIRST_MORNING - dt.timedelta(seconds=1))
    sched = Scheduler(store, local, clock=clock)
    assert sched.tick().outcomes == []

    clock.set(FIRST_MORNING)
    report = sched.tick()

    assert [o.action for o in report.outcomes] == ["started", "waiting"]
    assert len(updates) == 4  # Auckland, Honolulu, Los Angeles, and no zone: not one per reader
    times = send_times(store)
    assert times == {email: BUCKETS[zone] for email, zone in ZONES.items()}
    for email, zone in ZONES.items():
        wall = times[email].astimezone(ZoneInfo(zone or "America/New_York"))
        assert (wall.date(), wall.time()) == (DAY, dt.time(7, 0))


@pytest.mark.parametrize("transport", ["outbox", "smtp"])
def test_smtp_and_outbox_send_each_bucket_only_when_its_hour_comes(
    store: Store,
    local: Settings,
    transport: str,
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    smtp = local.smtp.model_copy(
        update={"host": smtp_server.host, "port": smtp_server.port, "security": "none"}
    )
    delivery = local.delivery.model_copy(update={"transport": transport})
    local = local.model_copy(update={"smtp": smtp, "delivery": delivery})
    readers_in_zones(store, ZONES)
    slug = write_issue(local, DAY)
    clock = ManualClock(FIRST_MORNING)
    sched = Scheduler(store, local, clock=clock)

    def received() -> set[str]:
        if transport == "smtp":
            return set(smtp_server.handler.recipients())
        return {email for _, email in delivered(local)}

    assert [o.action for o in sched.tick().outcomes] == ["started", "waiting"]
    expected: set[str] = set()
    for zone, moment in BUCKETS.items():
        clock.set(moment - dt.timedelta(minutes=1))
        assert [o.action for o in sched.tick().outcomes] == ["waiting"]
        assert received() == expected
        clock.set(moment)
        (sent,) = sched.tick().outcomes
        expected |= emails_in(zone)
        assert sent.action == "sent" and sent.run is not None
        assert sent.run.counts == {"sent": len(emails_in(zone))}
        assert received() == expected
        waiting = agenda(store, local, moment).campaigns
        later = sorted((at, len(emails_in(z))) for z, at in BUCKETS.items() if at > moment)
        assert (waiting[0].waiting if waiting else []) == later

    assert campaigns.list_campaigns(store)[0][0].status == "finished"
    if transport == "outbox":
        assert delivered(local) == Counter({(slug, email): 1 for email in ZONES})
    else:
        assert Counter(smtp_server.handler.recipients()) == Counter(list(ZONES))


def test_sendgrid_gets_every_bucket_ahead_with_one_send_at_per_request(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    issues_dir(settings)
    day = utcnow().date() + dt.timedelta(days=2)  # SendGrid's 72 h are counted from the real now
    with SendGridEmulator(api_key="SG.zones") as emulator:
        monkeypatch.setenv("SENDGRID_API_KEY", "SG.zones")
        local = tuned(settings, per_recipient_timezone=True, weekday=day.strftime("%A").lower())
        local = local.model_copy(
            update={
                "sendgrid": local.sendgrid.model_copy(update={"host": emulator.url}),
                "delivery": local.delivery.model_copy(update={"transport": "sendgrid"}),
            }
        )
        readers_in_zones(store, ZONES)
        write_issue(local, day)
        first_morning = dt.datetime.combine(day, dt.time(7), tzinfo=dt.timezone(dt.timedelta(hours=14)))
        clock = ManualClock(first_morning)

        report = Scheduler(store, local, clock=clock).tick()

        assert [o.action for o in report.outcomes] == ["started", "sent"]
        messages = emulator.messages
    when = {zone: at_seven(day, ZoneInfo(zone or "America/New_York")) for zone in BUCKETS}
    assert len(messages) == 4
    for message in messages:
        times = {p["send_at"] for p in message.personalizations}
        (send_at,) = times
        zones = {ZONES[p["to"][0]["email"]] for p in message.personalizations}
        (zone,) = zones
        assert send_at == int(when[zone].timestamp())
    assert Counter(p["to"][0]["email"] for m in messages for p in m.personalizations) == Counter(list(ZONES))
    (state,) = agenda(store, local, clock.now()).campaigns
    assert state.handed_ahead == len(ZONES) and state.campaign.status == "finished"


def test_sendgrid_is_never_handed_a_time_more_than_72_hours_ahead(store: Store, settings: Settings) -> None:
    readers_in_zones(store, {f"r{n}@example.com": None for n in range(4)})
    issue = load_issue(settings.path(settings.newsletter.issues_dir) / "2026-12-01-name-it-to-tame-it.yaml")
    campaign, _ = campaigns.create_campaign(store, render(issue, settings), ["everyone"], "sendgrid")
    now = utcnow().replace(microsecond=0)
    plan = {
        "r0@example.com": now + dt.timedelta(hours=1),
        "r1@example.com": now + dt.timedelta(hours=71),
        "r2@example.com": now + dt.timedelta(hours=73),
        "r3@example.com": None,
    }
    with store.write() as conn:
        for email, moment in plan.items():
            conn.execute(update(deliveries).where(deliveries.c.email == email).values(send_at=moment))

    with SendGridEmulator(api_key="SG.ahead") as emulator:
        config = settings.sendgrid.model_copy(update={"host": emulator.url})
        transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), "SG.ahead")
        run = dispatcher(store, settings, transport, now=lambda: now).run(campaign.id)
        requests = {p["to"][0]["email"]: p["send_at"] for m in emulator.messages for p in m.personalizations}

    assert requests == {
        "r0@example.com": int(plan["r0@example.com"].timestamp()),  # type: ignore[union-attr]
        "r1@example.com": int(plan["r1@example.com"].timestamp()),  # type: ignore[union-attr]
        "r3@example.com": None,
    }
    assert run.counts == {"sent": 3} and run.campaign.status == "running"
    assert campaigns.report(store, campaign.id).counts == {"sent": 3, "queued": 1}


@given(
    day=st.dates(dt.date(1990, 1, 1), dt.date(2060, 12, 31)),
    name=st.sampled_from(
        [
            "America/New_York",
            "America/St_Johns",
            "Europe/London",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
            "Pacific/Auckland",
            "Pacific/Chatham",
            "Pacific/Honolulu",
            "Pacific/Kiritimati",
        ]
    ),
)
def test_seven_oclock_local_is_always_seven_on_that_day(day: dt.date, name: str) -> None:
    zone = ZoneInfo(name)
    wall = local_moment(day, dt.time(7, 0), zone).astimezone(zone)
    assert (wall.date(), wall.time()) == (day, dt.time(7, 0))
