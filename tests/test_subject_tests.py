"""Subject tests: each subject to an equal random sample, the winner by unique clicks to the rest, all
in one ledger, nobody getting two subjects; refused with the numbers when the samples would be small."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pipeline.dispatch import subjects
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.errors import DispatchError
from pipeline.feedback.events import record_events
from pipeline.feedback.reportpage import ReportPage
from pipeline.feedback.reports import campaign_stats
from pipeline.feedback.trends import trends
from pipeline.render.links import Links
from pipeline.render.lint import check_issue
from pipeline.render.renderer import Renderer
from pipeline.settings import Settings
from pipeline.store.engine import Store, utcnow
from pipeline.store.tables import campaigns as campaigns_table
from pipeline.transports.sendgrid import SendGridTransport
from tests.emulators.sendgrid import AcceptedMessage, SendGridEmulator
from tests.emulators.sendgrid_events import event
from tests.fixtures.project import CliInvoker
from tests.mail import delivered, outbox_files, parse_message
from tests.scheduling import ManualClock, at_seven, issues_dir, scheduler, tuned, write_issue
from tests.test_clicks import tracking
from tests.test_transport_sendgrid import API_KEY
from tests.transport_helpers import ISSUE, dispatcher
from tests.web_support import readers

FIRST = "Guilt isn't a verdict: start by naming it"
SECOND = "One sentence that takes the sting out of mom guilt"
THIRD = "Mom guilt? Try this 10-second trick"


def issue_with(project: Path, *variants: str, name: str = "2026-12-01-subject-test.yaml") -> Path:
    """The first sample issue with ``subject_variants``, saved as another issue of the project."""
    text = (project / "issues" / ISSUE).read_text()
    listed = "".join(f'  - "{variant}"\n' for variant in variants)
    path = project / "issues" / name
    path.write_text(text.replace(f'subject: "{FIRST}"\n', f'subject: "{FIRST}"\nsubject_variants:\n{listed}'))
    return path


def problems_of(path: Path, settings: Settings, store: Store) -> list[tuple[str, str, int | None]]:
    checked = check_issue(path, Renderer(settings), Links(settings, store.signer))
    return [(p.field or "", p.message, p.line) for p in checked.problems if p.severity.name == "ERROR"]


# --- the issue file ---------------------------------------------------------------------------------


def test_an_issue_names_up_to_two_more_subjects(project: Path, settings: Settings, store: Store) -> None:
    assert problems_of(issue_with(project, SECOND, THIRD), settings, store) == []
    too_many = problems_of(issue_with(project, SECOND, THIRD, "A fourth"), settings, store)
    assert [(field, line) for field, _, line in too_many] == [("subject_variants", 7)]
    assert "at most 2" in too_many[0][1]
    twice = problems_of(issue_with(project, FIRST.upper()), settings, store)
    assert twice == [("subject_variants.0", "the same subject twice: a test needs different ones", 7)]


def test_a_welcome_step_has_no_subject_test(project: Path, settings: Settings, store: Store) -> None:
    step = sorted((project / "issues" / "welcome").glob("*.yaml"))[0]
    text = step.read_text()
    subject_line = next(line for line in text.splitlines() if line.startswith("subject:"))
    step.write_text(text.replace(subject_line, f'{subject_line}\nsubject_variants: ["{SECOND}"]'))
    (problem,) = problems_of(step, settings, store)
    assert problem[0] == "subject_variants" and "welcome step" in problem[1]


# --- refusals ---------------------------------------------------------------------------------------


def sendgrid_settings(settings: Settings, emulator: SendGridEmulator) -> Settings:
    config = settings.sendgrid.model_copy(update={"host": emulator.url})
    delivery = settings.delivery.model_copy(update={"transport": "sendgrid", "rate_per_second": 1e6})
    return settings.model_copy(update={"sendgrid": config, "delivery": delivery})


def test_a_test_too_small_is_refused_with_the_numbers(
    project: Path, settings: Settings, store: Store, tmp_path: Path
) -> None:
    readers(store, tmp_path, 3032)
    path = issue_with(project, SECOND)
    links = Links(settings, store.signer)
    with pytest.raises(DispatchError) as refused:
        plan_send(store, settings, path, links, transport="sendgrid")
    assert "at least 500 people per subject: 10% of 3,032 is 303" in str(refused.value)
    assert "audience of 5,000 or more" in str(refused.value)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(campaigns_table)).scalar_one() == 0


def test_a_test_nobody_can_count_clicks_for_is_refused(
    project: Path, settings: Settings, store: Store, tmp_path: Path
) -> None:
    readers(store, tmp_path, 5000)
    with pytest.raises(DispatchError, match=r"picks its winner by clicks.*\[tracking\] clicks = true"):
        plan_send(
            store, settings, issue_with(project, SECOND), Links(settings, store.signer), transport="outbox"
        )


# --- the test, through the SendGrid emulator ---------------------------------------------------------


def subject_by_address(messages: list[AcceptedMessage]) -> Counter[tuple[str, str]]:
    """(address, subject) of every recipient of every accepted request."""
    return Counter(
        (p["to"][0]["email"], message.subject or "") for message in messages for p in message.personalizations
    )


def clicks_for(store: Store, campaign_id: int, emails: list[str]) -> list[dict[str, object]]:
    """SendGrid's click events for ``emails``, tied to their ledger rows as the custom args tie them."""
    from pipeline.store.tables import deliveries

    d = deliveries.c
    with store.read() as conn:
        ids = dict(conn.execute(select(d.email, d.subscriber_id).where(d.campaign_id == campaign_id)).all())
    return [
        event(
            "click",
            email,
            campaign_id=campaign_id,
            subscriber_id=ids[email],
            url="https://www.pewresearch.org/",
        )
        for email in emails
    ]


@pytest.mark.parametrize("clicks", [(30, 80), (40, 45)], ids=["a-winner", "within-chance"])
def test_five_thousand_readers_get_one_subject_each_and_the_rest_the_winners(
    project: Path, settings: Settings, store: Store, tmp_path: Path, clicks: tuple[int, int]
) -> None:
    everyone = set(readers(store, tmp_path, 5000))
    path = issue_with(project, SECOND)
    with SendGridEmulator(api_key=API_KEY) as emulator:
        sending = sendgrid_settings(settings, emulator)
        plan = plan_send(store, sending, path, Links(sending, store.signer))
        assert plan.test is not None and plan.test.subjects == (FIRST, SECOND)
        campaign, created = start_campaign(store, plan, "sendgrid")
        assert created and campaign.subjects == (FIRST, SECOND)

        def send(at: dt.datetime) -> subjects.Verdict | None:
            transport = SendGridTransport(sending, API_KEY)
            return dispatcher(store, sending, transport, now=lambda: at).run(campaign.id).verdict

        # The samples go at once; the rest wait, even though SendGrid could schedule them ahead.
        assert send(utcnow()) is None
        samples = subject_by_address(emulator.messages)
        by_subject = Counter(subject for _, subject in samples)
        assert by_subject == {FIRST: 500, SECOND: 500}
        assert max(samples.values()) == 1
        got = {email: subject for email, subject in samples}

        # Within the wait nothing more goes, and nothing is decided.
        assert send(utcnow() + dt.timedelta(hours=1)) is None
        assert sum(by_subject.values()) == len(subject_by_address(emulator.messages))

        first_clicks, second_clicks = clicks
        readers_of = {s: sorted(e for e, got_s in got.items() if got_s == s) for s in (FIRST, SECOND)}
        record_events(
            store,
            clicks_for(store, campaign.id, readers_of[FIRST][:first_clicks])
            + clicks_for(store, campaign.id, readers_of[SECOND][:second_clicks])
            + clicks_for(store, campaign.id, readers_of[SECOND][:5]),  # a second click is one reader
        )

        verdict = send(utcnow() + dt.timedelta(hours=5))
        everybody = subject_by_address(emulator.messages)

    assert verdict is not None and verdict.rest == 4000
    assert [(v.sample, v.sent, v.clickers) for v in verdict.variants] == [
        (500, 500, first_clicks),
        (500, 500, second_clicks),
    ]
    winner = SECOND if clicks == (30, 80) else FIRST
    assert verdict.significant is (winner == SECOND)
    assert verdict.variants[verdict.winner].subject == winner
    assert ("won" if verdict.significant else "no subject won") in verdict.summary()
    assert "Apple Mail Privacy Protection" in verdict.summary()
    # Everyone once, with one subject: the samples theirs, the other 4,000 the winner's.
    assert {email for email, _ in everybody} == everyone and max(everybody.values()) == 1
    rest = {email: subject for email, subject in everybody if email not in got}
    assert len(rest) == 4000 and set(rest.values()) == {winner}
    assert subjects.verdict(store, campaign.id) == verdict
    # The report shows each subject's sample, clicks, rate and interval, and crowns only a real winner.
    stats = campaign_stats(store, campaign.id)
    page = ReportPage(settings).campaign(stats, trends(store))
    rows = re.findall(r'<tr data-variant="(\d)"( class="winner")?>\s*<th scope="row">(.*?)</th>', page)
    assert [(place, bool(crowned)) for place, crowned, _ in rows] == [
        ("0", False),
        ("1", verdict.significant),
    ]
    low, high = verdict.variants[1].interval()
    assert f"{low:.1%} to {high:.1%}" in page and f"{second_clicks / 500:.1%}" in page
    note = re.search(r'<p class="note" id="verdict">(.*?)</p>', page, re.S)
    assert note and ("won" if verdict.significant else "no subject won") in html.unescape(note[1])


@pytest.mark.parametrize("processes", [1, 2])
def test_the_rest_waits_until_the_samples_are_all_sent(
    project: Path,
    settings: Settings,
    store: Store,
    tmp_path: Path,
    processes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also with worker processes, which get each subject when they start."""
    monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
    readers(store, tmp_path, 5000)
    with SendGridEmulator(api_key=API_KEY) as emulator:
        sending = sendgrid_settings(settings, emulator)
        plan = plan_send(store, sending, issue_with(project, SECOND, THIRD), Links(sending, store.signer))
        campaign, _ = start_campaign(store, plan, "sendgrid")
        later = utcnow() + dt.timedelta(hours=5)

        def send() -> subjects.Verdict | None:
            transport = SendGridTransport(sending, API_KEY)
            run = dispatcher(store, sending, transport, now=lambda: later, processes=processes)
            return run.run(campaign.id).verdict

        # Past the wait, but no sample has gone: the run sends the samples (three subjects of 10 %
        # each) and decides nothing; the next one decides and sends the other 3,500.
        assert subjects.decide(store, campaign.id, later) is None
        assert send() is None
        samples = subject_by_address(emulator.messages)
        assert Counter(subject for _, subject in samples) == {FIRST: 500, SECOND: 500, THIRD: 500}
        verdict = send()
        assert verdict is not None and verdict.rest == 3500
        assert not verdict.significant and verdict.winner == 0  # no clicks at all: nobody won
        everybody = subject_by_address(emulator.messages)
    assert len(everybody) == 5000 and max(everybody.values()) == 1
    assert Counter(subject for _, subject in everybody) == {FIRST: 4000, SECOND: 500, THIRD: 500}


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 500, 0.1323, 0.1969), (0, 0, 0.0, 1.0)],
)
def test_the_confidence_interval_is_wilsons(successes: int, trials: int, low: float, high: float) -> None:
    # The bounds solve (p̂ - p)² = z² p (1 - p) / n, found here by bisection to four places.
    lower, upper = subjects.wilson(successes, trials)
    assert lower == pytest.approx(low, abs=5e-4) and upper == pytest.approx(high, abs=5e-4)


# --- the commands -----------------------------------------------------------------------------------


def test_send_refuses_a_small_test_and_shows_a_large_one_then_report_shows_it_undecided(
    run: CliInvoker, project: Path
) -> None:
    path = issue_with(project, SECOND).relative_to(project)
    unmeasured = run("send", str(path), "--dry-run", expect=1)
    assert "picks its winner by clicks, and through outbox none are counted" in unmeasured.output
    settings_file = project / "settings.toml"
    settings_file.write_text(settings_file.read_text().replace("clicks = false", "clicks = true", 1))
    small = run("send", str(path), "--dry-run", expect=1)
    assert "needs at least 500 people per subject: 10% of 50 is 5" in small.output

    rows = "".join(f"reader{i:04d}@example.com,Reader {i},\n" for i in range(5000))
    (project / "many.csv").write_text("email,name,tags\n" + rows)
    run("subscribers", "import", "many.csv")
    plan = run("send", str(path), "--dry-run")
    assert "Subject test: 2 subjects, 505 people each (a random 10%)" in plan.output
    assert f"1. {FIRST}" in plan.output and f"2. {SECOND}" in plan.output
    assert "goes to the other 4,040" in plan.output

    sent = run("send", str(path), "--yes")
    assert "1,010 sent" in sent.output
    assert "subject test: the samples are out; the winner goes to the rest from" in sent.output
    assert len(outbox_files(project / "outbox")) == 1010
    subjects_sent = Counter(
        parse_message(p.read_bytes())["Subject"] for p in outbox_files(project / "outbox")
    )
    assert subjects_sent == {FIRST: 505, SECOND: 505}

    shown = run("campaigns", "show", "1")
    assert f"subject test: 1. {FIRST}; 2. {SECOND}; the winner goes to the rest from" in shown.output
    report = run("report", "1")
    assert "Subject test" in report.output and "not decided yet" in report.output
    assert "Apple Mail Privacy Protection" in report.output


def test_the_scheduler_sends_the_samples_on_the_day_and_the_rest_after_the_wait(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    emails = readers(store, tmp_path, 5000)
    weekly = tuned(
        tracking(settings), weekday="tuesday", time="07:00", timezone="America/New_York", catch_up_hours=12
    )
    weekly = weekly.model_copy(update={"delivery": weekly.delivery.model_copy(update={"batch_size": 500})})
    issues_dir(weekly)
    day = dt.date(2027, 1, 5)
    slug = write_issue(weekly, day, subject_variants=f'["{SECOND}"]')
    clock = ManualClock(at_seven(day))
    sched = scheduler(store, weekly, clock)

    first = sched.tick()
    assert [(o.slug, o.action) for o in first.outcomes] == [(slug, "started"), (slug, "sent")]
    assert first.outcomes[1].run is not None and first.outcomes[1].run.counts == {"sent": 1000}
    clock.advance(dt.timedelta(hours=2))
    (waiting,) = sched.tick().outcomes  # the rest waits for its time: no run at all
    assert waiting.action == "waiting" and waiting.run is None
    assert waiting.detail == "subject test: the winner goes to the rest from Tue 2027-01-05 11:00 EST"

    clock.advance(dt.timedelta(hours=2, minutes=1))
    later = sched.tick()
    (outcome,) = later.outcomes
    assert outcome.run is not None and outcome.run.counts == {"sent": 4000}
    assert outcome.run.verdict is not None and not outcome.run.verdict.significant
    assert delivered(weekly) == Counter({(slug, email): 1 for email in emails})
    folder = weekly.path(weekly.delivery.outbox_dir)
    subjects_sent = Counter(parse_message(p.read_bytes())["Subject"] for p in outbox_files(folder))
    assert subjects_sent == {FIRST: 4500, SECOND: 500}
