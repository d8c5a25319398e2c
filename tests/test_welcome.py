"""The welcome series: steps as issue files, readers enrolled when they confirm (or are added with
--welcome), each step sent by the scheduler on its reader's day exactly once, through the ledger.

In-process tests drive the scheduler with a manual clock that starts at the real time (people join at
the real time), on SQLite and PostgreSQL, sending to the outbox. The crash test kills real
`newsletter run --once` processes mid-step and counts what the SendGrid emulator accepted.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select, update
from starlette.testclient import TestClient

from pipeline.audience.enrollment import enrolled_at
from pipeline.audience.importer import import_csv
from pipeline.audience.optin import confirm
from pipeline.audience.subscribers import add_subscriber, erase, find_subscriber, unsubscribe
from pipeline.content.issue import load_issue
from pipeline.dispatch import campaigns
from pipeline.dispatch.welcome import overview
from pipeline.render.renderer import render
from pipeline.schedule.tickreport import TickReport
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect, utcnow
from pipeline.store.statuses import SubscriberStatus
from pipeline.store.tables import welcome_enrollments
from tests.emulators.sendgrid import Fault, SendGridEmulator
from tests.fixtures.project import CliInvoker
from tests.mail import parse_message
from tests.paths import REPO
from tests.scheduling import ManualClock, issues_dir, scheduler, tuned
from tests.sendproc import API_KEY, SECRET_KEY, Process, SendProject, subscriber_emails, write_subscribers_csv
from tests.test_crash import BATCH_SIZE, CONCURRENCY, ROUND_TRIP, CrashLog, check_ledger_against, store_on
from tests.transport_helpers import ISSUE
from tests.web_support import send_everything

FIRST = "welcome/01-welcome-to-the-juggle"
SECOND = "welcome/02-the-first-small-step"
FIRST_SUBJECT = "Welcome to The Juggle: you're in good company"
THREE_DAYS = dt.timedelta(days=3)


@pytest.fixture
def series(settings: Settings) -> Settings:
    """The sample welcome series (step 1 at once, step 2 after three days) without the dated issues,
    catching up at most 12 hours, sending fast."""
    issues_dir(settings)
    return tuned(settings, catch_up_hours=12)


def joined(store: Store, email: str) -> int:
    """Someone signs up and confirms (double opt-in); their id."""
    person = add_subscriber(store, email, status=SubscriberStatus.UNCONFIRMED, actor="signup-form")
    assert confirm(store, person.id) == "confirmed"
    return person.id


def welcome_mail(settings: Settings) -> Counter[tuple[str, str]]:
    """(step, address) of every welcome message in the outbox (outbox/ID-welcome/NN-slug/*.eml)."""
    found: Counter[tuple[str, str]] = Counter()
    for path in settings.path(settings.delivery.outbox_dir).glob("*-welcome/*/*.eml"):
        found[(f"welcome/{path.parent.name}", str(parse_message(path.read_bytes())["To"]))] += 1
    return found


def actions(report: TickReport) -> list[tuple[str, str]]:
    return [(outcome.slug, outcome.action) for outcome in report.outcomes]


def backdate(store: Store, by: dt.timedelta, *subscriber_ids: int) -> None:
    """Move people's joining into the past (everyone's, with no ids), as if they had joined ``by`` ago."""
    e = welcome_enrollments.c
    with store.write() as conn:
        query = select(e.subscriber_id, e.enrolled_at)
        if subscriber_ids:
            query = query.where(e.subscriber_id.in_(subscriber_ids))
        moved = [{"who": who, "at": at - by} for who, at in conn.execute(query)]
        change = update(welcome_enrollments).where(e.subscriber_id == bindparam("who"))
        conn.execute(change.values(enrolled_at=bindparam("at")), moved)


def write_step(
    settings: Settings, name: str, *, after: str = "0d", replaced: dict[str, str] | None = None
) -> Path:
    """A copy of the first sample step as ``issues/welcome/NAME.yaml``, with another ``after`` and
    text replaced (``replaced``: old → new)."""
    folder = settings.path(settings.newsletter.issues_dir) / "welcome"
    text = (folder / "01-welcome-to-the-juggle.yaml").read_text(encoding="utf-8")
    text = text.replace("after: 0d", f"after: {after}")
    for old, new in (replaced or {}).items():
        assert old in text
        text = text.replace(old, new)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- sending ---------------------------------------------------------------------------------------


def test_a_reader_who_confirms_gets_each_step_on_its_day_exactly_once(store: Store, series: Settings) -> None:
    joined(store, "ann@example.com")
    start = utcnow()
    clock = ManualClock(start)
    sched = scheduler(store, series, clock)

    first = sched.tick()
    assert actions(first) == [(FIRST, "queued"), (FIRST, "sent")] and first.ok
    assert welcome_mail(series) == Counter({(FIRST, "ann@example.com"): 1})
    for later in (dt.timedelta(minutes=1), dt.timedelta(days=1), THREE_DAYS - dt.timedelta(minutes=1)):
        clock.set(start + later)
        assert sched.tick().outcomes == [], f"nothing is due {later} after joining"

    clock.set(start + THREE_DAYS + dt.timedelta(minutes=1))
    assert actions(sched.tick()) == [(SECOND, "queued"), (SECOND, "sent")]
    clock.set(start + dt.timedelta(days=30))
    assert sched.tick().outcomes == []

    assert welcome_mail(series) == Counter({(FIRST, "ann@example.com"): 1, (SECOND, "ann@example.com"): 1})
    standing = campaigns.welcome_campaigns(store)
    assert {slug: c.status for slug, c in standing.items()} == {FIRST: "finished", SECOND: "finished"}
    assert all(c.kind == "welcome" and c.segments == () for c in standing.values())


def test_later_readers_join_the_same_step_campaign_each_on_their_own_day(
    store: Store, series: Settings
) -> None:
    joined(store, "ann@example.com")
    clock = ManualClock(utcnow())
    sched = scheduler(store, series, clock)
    sched.tick()
    bo = joined(store, "bo@example.com")
    clock.set(utcnow())

    report = sched.tick()

    assert actions(report) == [(FIRST, "queued"), (FIRST, "sent")]
    assert report.outcomes[0].detail.startswith("1 reader(s) due")
    assert welcome_mail(series) == Counter({(FIRST, "ann@example.com"): 1, (FIRST, "bo@example.com"): 1})
    assert len(campaigns.welcome_campaigns(store)) == 1
    assert campaigns.report(store, campaigns.welcome_campaigns(store)[FIRST].id).counts == {"sent": 2}
    assert enrolled_at(store, bo) is not None
    erase(store, "bo@example.com")
    assert enrolled_at(store, bo) is None, "erasure takes the enrollment with it"


def test_people_added_without_welcome_are_not_enrolled(store: Store, series: Settings) -> None:
    add_subscriber(store, "ann@example.com")
    add_subscriber(store, "bo@example.com", welcome=True)

    sched = scheduler(store, series, ManualClock(utcnow()))
    sched.tick()

    assert welcome_mail(series) == Counter({(FIRST, "bo@example.com"): 1})


def test_someone_who_unsubscribes_after_step_one_gets_no_more_even_coming_back(
    store: Store, series: Settings
) -> None:
    ann = joined(store, "ann@example.com")
    joined(store, "bo@example.com")
    start = utcnow()
    clock = ManualClock(start)
    sched = scheduler(store, series, clock)
    sched.tick()
    unsubscribe(store, "ann@example.com")

    clock.set(start + THREE_DAYS + dt.timedelta(minutes=1))
    sched.tick()
    assert confirm(store, ann) == "confirmed", "she subscribes again, by her own click"
    clock.set(start + THREE_DAYS + dt.timedelta(hours=2))
    sched.tick()

    assert welcome_mail(series) == Counter(
        {(FIRST, "ann@example.com"): 1, (FIRST, "bo@example.com"): 1, (SECOND, "bo@example.com"): 1}
    )
    view = overview(store, series, clock.now())
    (reader,) = [r for r in view.readers if r.email == "ann@example.com"]
    assert reader.left and reader.at_step == FIRST and reader.next_step is None


def test_a_broken_step_is_reported_and_not_sent_while_the_others_go(store: Store, series: Settings) -> None:
    write_step(series, "03-unfinished", replaced={"  Thank you": "  TODO: a warmer opening.\n  Thank you"})
    write_step(series, "04-bad-wait", after="3 days")
    joined(store, "ann@example.com")
    sched = scheduler(store, series, ManualClock(utcnow()))

    report = sched.tick()

    failed = {o.slug: o.detail for o in report.outcomes if o.action == "failed"}
    assert set(failed) == {"welcome/03-unfinished", "welcome/04-bad-wait"} and not report.ok
    assert "unfinished: replace the TODO" in failed["welcome/03-unfinished"]
    assert "'3 days' is not a wait" in failed["welcome/04-bad-wait"]
    assert welcome_mail(series) == Counter({(FIRST, "ann@example.com"): 1})
    assert set(campaigns.welcome_campaigns(store)) == {FIRST}, "no campaign for a step with errors"


def test_an_edited_step_reaches_the_readers_after_the_edit_and_nobody_twice(
    store: Store, series: Settings
) -> None:
    joined(store, "ann@example.com")
    clock = ManualClock(utcnow())
    sched = scheduler(store, series, clock)
    sched.tick()
    write_step(series, "01-welcome-to-the-juggle", replaced={"Why we started writing": "How we began"})
    joined(store, "bo@example.com")
    clock.set(utcnow())

    report = sched.tick()

    assert "the edited file from now on" in report.outcomes[0].detail
    folder = next(series.path(series.delivery.outbox_dir).glob("*-welcome/01-welcome-to-the-juggle"))
    bodies = {
        str(m["To"]): m.as_string() for m in map(parse_message, map(Path.read_bytes, folder.glob("*.eml")))
    }
    assert set(bodies) == {"ann@example.com", "bo@example.com"}
    assert (
        "Why we started writing" in bodies["ann@example.com"] and "How we began" in bodies["bo@example.com"]
    )
    assert welcome_mail(series).most_common(1)[0][1] == 1


def test_a_step_is_not_sent_days_late_and_counts_as_missed(store: Store, series: Settings) -> None:
    """Someone who joined long before the scheduler ran (or before the step existed) is not welcomed
    weeks later by surprise: beyond catch_up_hours the step is missed, and `welcome` says so."""
    ann = joined(store, "ann@example.com")
    backdate(store, dt.timedelta(days=10), ann)
    joined(store, "bo@example.com")
    now = utcnow()

    scheduler(store, series, ManualClock(now)).tick()

    assert welcome_mail(series) == Counter({(FIRST, "bo@example.com"): 1})
    view = overview(store, series, now)
    assert [(s.slug, s.counts["sent"], s.due_now, s.upcoming, s.missed) for s in view.steps] == [
        (FIRST, 1, 0, 0, 1),
        (SECOND, 0, 0, 1, 1),
    ]
    assert view.next_due is not None and view.next_due[1] == SECOND
    assert abs(view.next_due[0] - (now + THREE_DAYS)) < dt.timedelta(minutes=1)


def test_welcome_steps_are_not_in_the_archive_and_take_nothing_from_issues(
    store: Store, series: Settings, settings: Settings, client: TestClient
) -> None:
    joined(store, "ann@example.com")
    scheduler(store, series, ManualClock(utcnow())).tick()
    rendered = render(load_issue(REPO / "issues" / ISSUE), settings)
    issue, _ = campaigns.create_campaign(store, rendered, ("everyone",), "outbox")
    send_everything(store, settings, issue.id)

    index = client.get("/archive/")
    feed = client.get("/archive/feed.xml")

    assert [entry.slug for entry in campaigns.published(store)] == [issue.issue_slug]
    assert campaigns.published_html(store, FIRST) is None
    assert (
        issue.subject.replace("'", "&#39;") in index.text
        and FIRST_SUBJECT.replace("'", "&#39;") not in index.text
    )
    assert "Welcome to The Juggle" not in feed.text
    assert client.get("/archive/welcome/01-welcome-to-the-juggle").status_code == 404
    assert campaigns.report(store, issue.id).counts == {"sent": 1}, (
        "the welcome step is no earlier campaign of it"
    )


def test_an_import_with_welcome_enrolls_its_new_active_people_only(store: Store, tmp_path: Path) -> None:
    """Both bulk paths (executemany on SQLite, COPY on PostgreSQL) write the enrollments."""
    known = add_subscriber(store, "ann@example.com")
    csv = tmp_path / "list.csv"
    csv.write_text("email,status\nann@example.com,\nbo@example.com,\ncy@example.com,unconfirmed\n")

    result = import_csv(store, csv, welcome=True)

    assert (result.added, result.enrolled) == (2, 1)
    bo, cy = find_subscriber(store, "bo@example.com"), find_subscriber(store, "cy@example.com")
    assert bo is not None and cy is not None
    assert enrolled_at(store, bo.id) is not None
    assert enrolled_at(store, known.id) is None and enrolled_at(store, cy.id) is None
    csv.write_text("email\ndee@example.com\n")
    assert import_csv(store, csv).enrolled == 0
    dee = find_subscriber(store, "dee@example.com")
    assert dee is not None and enrolled_at(store, dee.id) is None, "without welcome, nobody joins"


# -- the commands ----------------------------------------------------------------------------------


def test_check_reports_a_wrong_wait_and_fields_of_the_other_kind(
    run: CliInvoker, operator_shell: Path
) -> None:
    welcome = operator_shell / "issues" / "welcome"
    step = welcome / "03-later.yaml"
    step.write_text(
        (welcome / "02-the-first-small-step.yaml")
        .read_text()
        .replace("after: 3d", "after: 3 days\ndate: 2027-01-05")
    )
    issue = operator_shell / "issues" / "2026-12-01-name-it-to-tame-it.yaml"
    issue.write_text(issue.read_text().replace("date: 2026-12-01", "date: 2026-12-01\nafter: 1d"))

    result = run("check", expect=1)

    errors = [
        line.removeprefix(f"{operator_shell}/") for line in result.output.splitlines() if ": error: " in line
    ]
    assert errors == [
        "issues/2026-12-01-name-it-to-tame-it.yaml:8:1: error: after: only welcome steps "
        "(welcome/NN-slug.yaml) go out `after` a wait; an issue goes out on its date",
        "issues/welcome/03-later.yaml:5:8: error: after: '3 days' is not a wait; write the wait as whole "
        "days or hours: 0d (at once), 3d, 12h",
        "issues/welcome/03-later.yaml:6:1: error: date: a welcome step has no date: it goes out `after` a "
        "wait from each reader's joining",
    ]


def test_add_and_import_enroll_only_when_asked(run: CliInvoker, operator_shell: Path) -> None:
    """The `run` fixture imported the sample list without --welcome: nobody joined."""
    run("subscribers", "add", "ann@example.com")
    added = run("subscribers", "add", "bo@example.com", "--welcome")
    refused = run("subscribers", "add", "cy@example.com", "--welcome", "--status", "unconfirmed", expect=1)
    known = (operator_shell / "subscribers" / "sample.csv").read_text().splitlines()[1].split(",")[0]
    more = operator_shell / "more.csv"
    more.write_text(f"email,name\n{known},Known\ndee@example.com,Dee\neve@example.com,Eve\n")
    imported = run("subscribers", "import", str(more), "--welcome")

    assert "in the welcome series" in added.output
    assert "only active people join the welcome series" in refused.output
    assert "2 added" in imported.output and "2 enrolled in the welcome series" in imported.output
    shown = run("welcome", "--people", "10")
    emails = [line.split()[0] for line in shown.output.splitlines() if "@example.com" in line]
    assert emails == ["eve@example.com", "dee@example.com", "bo@example.com"], "the latest to join first"
    assert "3 joined, 3 still in it" in shown.output


def test_run_sends_step_one_and_welcome_shows_who_is_where(run: CliInvoker, operator_shell: Path) -> None:
    for path in (operator_shell / "issues").glob("*.yaml"):  # no dated issue to decide about
        path.unlink()
    run("subscribers", "add", "ann@example.com", "--name", "Ann", "--welcome")
    ticked = run("run", "--once")
    shown = run("welcome")
    refused = run("send", "issues/welcome/01-welcome-to-the-juggle.yaml", "--yes", expect=1)

    assert f"{FIRST}: queued: 1 reader(s) due" in ticked.output
    rows = [line.split() for line in shown.output.splitlines()]
    assert next(row for row in rows if row[:1] == [FIRST])[1:5] == ["0d", "#1", "finished", "1"]
    assert f"At each step (their latest): {FIRST}: 1" in shown.output
    assert f"Next due: {SECOND}, " in shown.output
    reader = next(row for row in rows if row[:1] == ["ann@example.com"])
    assert FIRST in reader and SECOND in reader, "at step 1, step 2 next"
    assert "a welcome step is sent by `newsletter run`" in refused.output


# -- crashes ---------------------------------------------------------------------------------------

READERS = 300
KILLS = 4


@pytest.fixture
def emulator() -> Iterator[SendGridEmulator]:
    with SendGridEmulator(api_key=API_KEY, record="recipients") as emu:
        yield emu


def accepted(emulator: SendGridEmulator, campaign_id: int) -> Counter[str]:
    """How often the emulator accepted each address for ``campaign_id``."""
    return Counter(
        to["email"]
        for message in emulator.messages
        if message.custom_args.get("campaign_id") == str(campaign_id)
        for personalization in message.personalizations
        for to in personalization["to"]
    )


def confirmed_readers(proj: SendProject, count: int) -> list[str]:
    """``count`` people sign up and confirm: imported unconfirmed, each then confirming by the library."""
    csv = proj.root / "signups.csv"
    emails = write_subscribers_csv(csv, count)
    proj.run("subscribers", "import", str(csv), "--status", "unconfirmed")
    store = connect(proj.store_url or f"sqlite:///{proj.db_path}", SECRET_KEY.encode())
    try:
        for subscriber_id in proj.subscribers():
            assert confirm(store, subscriber_id) == "confirmed"
    finally:
        store.close()
    return emails


def _mid_step(proj: SendProject, process: Process, campaign_id: int, delay: float, sent_before: int) -> bool:
    """Late enough, this run has recorded a batch of the step, and another is out now."""
    counts = proj.counts(campaign_id)
    return process.elapsed >= delay and counts["sent"] > sent_before and counts["sending"] > 0


def kill_mid_step(proj: SendProject, campaign_id: int, rng: random.Random, kills: int) -> CrashLog:
    """`newsletter run --once` again and again, SIGKILLed while a batch of the step is out, then to the end."""
    log = CrashLog()
    for _ in range(kills):
        delay = rng.uniform(0.8, 2.5)
        before = proj.counts(campaign_id)["sent"]
        with proj.spawn("run", "--once") as process:
            if process.wait_until(partial(_mid_step, proj, process, campaign_id, delay, before)):
                process.kill()
        if process.returncode != -signal.SIGKILL:
            break  # the step went out before a kill came
        log.kills += 1
        log.left_sending |= proj.ids_with_status("sending", campaign_id)
    log.final = proj.run("run", "--once", expect=None)
    in_doubt = proj.counts(campaign_id)["in_doubt"]
    assert log.final.returncode == (1 if in_doubt else 0), log.final.describe()
    assert proj.campaign_status(campaign_id) == "finished", log.final.describe()
    return log


@pytest.mark.parametrize(
    ("engine", "processes", "seed"),
    [
        pytest.param("sqlite", 1, 20261210, id="sqlite-threads"),
        pytest.param("postgresql", 2, 20261211, id="postgresql-processes"),
    ],
)
def test_a_step_killed_mid_send_reaches_everyone_once_or_in_doubt_and_the_next_step_goes_on(
    project: Path,
    emulator: SendGridEmulator,
    request: pytest.FixtureRequest,
    engine: str,
    processes: int,
    seed: int,
) -> None:
    for path in (project / "issues").glob("*.yaml"):  # only the welcome series is due
        path.unlink()
    sendgrid = {"host": emulator.url, "concurrency": CONCURRENCY, "timeout": 20.0, "max_retries": 6}
    delivery = {
        "batch_size": BATCH_SIZE,
        "rate_per_second": 40.0,
        "processes": processes,
        "transport": "sendgrid",
    }
    proj = SendProject(project, {"delivery": delivery, "sendgrid": sendgrid}, store_on(engine, request))
    emails = confirmed_readers(proj, READERS)
    emulator.inject_every(1, Fault(delay=ROUND_TRIP))

    log = kill_mid_step(proj, 1, random.Random(seed), KILLS)

    assert log.kills >= 2, "the step was meant to be interrupted mid-send"
    assert log.left_sending, "a kill should have caught a batch in flight"
    assert proj.ids_with_status("in_doubt") == log.left_sending, (
        "nothing settles a SendGrid request in flight"
    )
    check_ledger_against(proj, accepted(emulator, 1), emails, log, in_flight=BATCH_SIZE * CONCURRENCY)
    step_one = accepted(emulator, 1)

    # Three days on, step 2 goes to everyone once, and step 1 to nobody again.
    store = connect(proj.store_url or f"sqlite:///{proj.db_path}", SECRET_KEY.encode())
    try:
        backdate(store, THREE_DAYS)
    finally:
        store.close()
    emulator.clear_faults()
    proj.run("run", "--once")
    assert accepted(emulator, 2) == Counter(subscriber_emails(READERS))
    assert accepted(emulator, 1) == step_one, "step 1 went to nobody again"
    assert proj.counts(2) == Counter({"sent": READERS})
