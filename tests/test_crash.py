"""The proof of the ledger: real `newsletter send` processes killed, stopped and resumed.

Every test runs the console script as a subprocess against a copy of the project with a tmp SQLite
store, and counts what a real server accepted: the SendGrid emulator (in a thread here) or an aiosmtpd
sink. A SIGKILL can leave at most the batches in flight *in doubt*; nobody is ever accepted twice,
every row recorded ``sent`` was accepted exactly once, rows in doubt are never resent silently, and
everyone in the audience has a ledger row saying what happened to them.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.emulators.sendgrid import Fault, SendGridEmulator
from tests.fixtures.smtp import SmtpServer
from tests.sendproc import API_KEY, Process, Row, SendProject

BATCH_SIZE = 10
CONCURRENCY = 4
KILLS = 6
ROUND_TRIP = 0.2
"""Seconds a batch is out (one API request; ten messages over SMTP): batches are recorded as soon as
they return, so only a batch really in flight leaves rows in doubt, and the kills must find one."""


@pytest.fixture
def emulator() -> Iterator[SendGridEmulator]:
    with SendGridEmulator(api_key=API_KEY, record="recipients") as emu:
        yield emu


def store_on(engine: str, request: pytest.FixtureRequest) -> str | None:
    """The store a crash test sends from: None for SQLite (the project's own file), else PostgreSQL."""
    return None if engine == "sqlite" else str(request.getfixturevalue("postgres_url"))


def sendgrid_project(
    project: Path,
    emulator: SendGridEmulator,
    *,
    rate: float,
    processes: int = 1,
    store_url: str | None = None,
    **more: object,
) -> SendProject:
    sendgrid = {"host": emulator.url, "concurrency": CONCURRENCY, "timeout": 20.0, "max_retries": 6}
    sendgrid |= more
    delivery = {"batch_size": BATCH_SIZE, "rate_per_second": rate, "processes": processes}
    return SendProject(project, {"delivery": delivery, "sendgrid": sendgrid}, store_url)


def smtp_project(
    project: Path, server: SmtpServer, *, rate: float, processes: int = 1, store_url: str | None = None
) -> SendProject:
    smtp = {
        "host": server.host,
        "port": server.port,
        "security": "none",
        "connections": CONCURRENCY,
        "timeout": 20.0,
    }
    delivery = {"batch_size": BATCH_SIZE, "rate_per_second": rate, "processes": processes}
    return SendProject(project, {"delivery": delivery, "smtp": smtp}, store_url)


@dataclass
class CrashLog:
    kills: int = 0
    left_sending: set[int] = field(default_factory=set)
    """Ledger rows a killed process left ``sending``: exactly the rows that must be reported in doubt."""
    final: Process | None = None


def _mid_send(proj: SendProject, process: Process, delay: float, sent_before: int) -> bool:
    """Late enough, this run has recorded a batch (not merely marked the last run's rows in doubt), and a
    batch is out now: the kill is meant to catch one in flight, not the pause between two."""
    if process.elapsed < delay:
        return False
    counts = proj.counts()
    return counts["sent"] > sent_before and counts["sending"] > 0


def _exit_status(proj: SendProject) -> int:
    """What a `send` that ran to the end exits with: 1 while any recipient is in doubt."""
    return 1 if proj.counts()["in_doubt"] else 0


def kill_and_resume(proj: SendProject, transport: str, rng: random.Random, kills: int) -> CrashLog:
    """Run the same `newsletter send` over and over, SIGKILLing it mid-send ``kills`` times, then to the end.

    Each kill lands at a seeded random time 0.8-2.5 s after the start, but never before that run has
    recorded a batch (so it hits the sending loop, not the interpreter starting up), and while a batch is
    out.
    """
    log = CrashLog()
    for _ in range(kills):
        delay = rng.uniform(0.8, 2.5)
        before = proj.counts()["sent"]
        with proj.spawn(*proj.send_args(transport)) as process:
            if process.wait_until(partial(_mid_send, proj, process, delay, before)):
                process.kill()
        if process.returncode == -signal.SIGKILL:
            log.kills += 1
            log.left_sending |= proj.ids_with_status("sending")
            continue
        # It finished before the kill came: a normal run, which must have finished the campaign,
        # and exits 1 while recipients are in doubt (the operator has a decision to make).
        assert process.returncode == _exit_status(proj), process.describe()
        log.final = process
        break
    if log.final is None:
        log.final = proj.send(transport, timeout=120.0, expect=None)
        assert log.final.returncode == _exit_status(proj), log.final.describe()
    assert proj.campaign_status() == "finished", log.final.describe()
    return log


def check_ledger_against(
    proj: SendProject, accepted: Counter[str], emails: list[str], log: CrashLog, *, in_flight: int
) -> None:
    """The ledger's promises, checked against what the server really accepted: after the kills, at most
    ``in_flight`` rows per kill are in doubt (what the transport can really have had out at once)."""
    ledger = proj.ledger()
    audience = proj.subscribers()
    assert {email for email, _ in audience.values()} == set(emails)

    twice = {email: n for email, n in accepted.items() if n > 1}
    assert not twice, f"{len(twice)} accepted more than once, e.g. {dict(list(twice.items())[:10])}"
    assert set(accepted) <= set(emails), f"accepted outside the audience: {set(accepted) - set(emails)}"

    missing = set(audience) - {row.subscriber_id for row in ledger}
    assert not missing, f"{len(missing)} people of the audience have no ledger row: {sorted(missing)[:10]}"
    assert len(ledger) == len(audience), "one ledger row per recipient"

    by_status = Counter(row.status for row in ledger)
    assert set(by_status) <= {"sent", "in_doubt"}, by_status
    sent = [row for row in ledger if row.status == "sent"]
    not_accepted = [row.email for row in sent if accepted[row.email] != 1]
    assert not not_accepted, f"{len(not_accepted)} rows say sent but were not accepted: {not_accepted[:10]}"

    in_doubt = {row.id for row in ledger if row.status == "in_doubt"}
    assert in_doubt <= log.left_sending, "only rows a killed run left sending can be in doubt"
    assert len(in_doubt) <= log.kills * in_flight, (
        f"{len(in_doubt)} in doubt after {log.kills} kills: more than were really in flight"
    )

    report = proj.run("campaigns", "show", "1", expect=1 if in_doubt else 0)
    assert "status: finished" in report.stdout, report.describe()
    resolved = proj.run("campaigns", "resolve", "1", "--mark-sent")
    assert f"{len(in_doubt)} in-doubt recipient(s) of campaign #1 marked sent" in resolved.stdout
    after = proj.counts()
    assert after == Counter({"sent": len(audience)}), after
    assert proj.campaign_status() == "finished"


SENDGRID_CRASHES = [
    pytest.param("sqlite", 1, 20261201, id="sqlite-threads"),
    pytest.param("sqlite", 2, 20261215, id="sqlite-processes"),
    pytest.param("postgresql", 2, 20261202, id="postgresql-processes"),
]


@pytest.mark.parametrize(("engine", "processes", "seed"), SENDGRID_CRASHES)
def test_sendgrid_send_killed_six_times_sends_everyone_at_most_once(
    project: Path,
    emulator: SendGridEmulator,
    request: pytest.FixtureRequest,
    engine: str,
    processes: int,
    seed: int,
) -> None:
    """With worker processes, SIGKILL reaches only the main process: a worker may still finish the batch
    it holds, whose rows stay ``sending`` and so are reported in doubt; the next run neither waits for it
    nor resends them."""
    store_url = store_on(engine, request)
    proj = sendgrid_project(project, emulator, rate=40.0, processes=processes, store_url=store_url)
    emails = proj.import_subscribers(600)
    # A real API round trip: batches are really out for a while, where a kill can catch them.
    emulator.inject_every(1, Fault(delay=ROUND_TRIP))
    log = kill_and_resume(proj, "sendgrid", random.Random(seed), KILLS)

    assert log.kills >= 3, "the sends were meant to be interrupted mid-campaign"
    assert log.left_sending, "at least one kill should have caught a batch in flight"
    # Without the Event Webhook nothing settles a SendGrid request in flight: each stays in doubt whole.
    assert proj.ids_with_status("in_doubt") == log.left_sending
    check_ledger_against(
        proj, Counter(emulator.recipients()), emails, log, in_flight=BATCH_SIZE * CONCURRENCY
    )


@pytest.mark.parametrize(
    ("engine", "processes", "seed"),
    [
        pytest.param("sqlite", 1, 20261208, id="sqlite-threads"),
        pytest.param("sqlite", 2, 20261216, id="sqlite-processes"),
        pytest.param("postgresql", 1, 20261203, id="postgresql-threads"),
    ],
)
def test_smtp_send_killed_six_times_leaves_one_message_per_connection_in_doubt(
    project: Path,
    smtp_server: SmtpServer,
    request: pytest.FixtureRequest,
    engine: str,
    processes: int,
    seed: int,
) -> None:
    """A kill catches whole batches ``sending``, but over SMTP only the message whose DATA was out is
    uncertain: the next run settles the rest of each batch from the handover journal (sent, or back to
    the queue), so at most one row per connection and kill stays in doubt."""
    store_url = store_on(engine, request)
    proj = smtp_project(project, smtp_server, rate=40.0, processes=processes, store_url=store_url)
    emails = proj.import_subscribers(600)
    smtp_server.handler.data_seconds = ROUND_TRIP / BATCH_SIZE  # a real server takes its time too
    log = kill_and_resume(proj, "smtp", random.Random(seed), KILLS)

    assert log.kills >= 3, "the sends were meant to be interrupted mid-campaign"
    assert len(log.left_sending) > CONCURRENCY * processes, "the kills should have caught batches in flight"
    accepted = Counter(smtp_server.handler.recipients())
    check_ledger_against(proj, accepted, emails, log, in_flight=CONCURRENCY * processes)
    settled = log.left_sending - proj.ids_with_status("in_doubt")
    assert settled, "the journal settled rows the kills had left sending"


def test_a_storm_of_429_and_503_delays_the_send_but_everyone_gets_it_once(
    project: Path, emulator: SendGridEmulator
) -> None:
    proj = sendgrid_project(project, emulator, rate=10_000.0, max_retries=12)
    emails = proj.import_subscribers(250)
    now = str(int(time.time()))  # reset "now": retry at once, and keep the test short
    emulator.inject(Fault(status=503, headers={"Retry-After": "0"}))
    emulator.inject_every(2, Fault(status=429, headers={"X-RateLimit-Reset": now}))
    emulator.inject_every(7, Fault(status=503))

    process = proj.send("sendgrid", timeout=120.0)

    assert Counter(emulator.recipients()) == Counter(emails), process.describe()
    assert emulator.requests_seen > 2 * len(emails) // BATCH_SIZE, "the storm did happen"
    assert proj.campaign_status() == "finished"
    assert proj.counts() == Counter({"sent": len(emails)})


def test_an_unsubscribe_mid_campaign_is_honoured(project: Path, emulator: SendGridEmulator) -> None:
    proj = sendgrid_project(project, emulator, rate=20.0)  # ~12 s for the unsubscribe to land
    emails = proj.import_subscribers(240)
    with proj.spawn(*proj.send_args("sendgrid")) as sender:
        assert sender.wait_until(lambda: proj.done() > 0), sender.describe()
        target: Row = max(proj.ledger(), key=lambda row: row.subscriber_id)
        assert target.status == "queued", "the last recipient is still waiting when they unsubscribe"
        unsubscribe = proj.run("subscribers", "unsubscribe", target.email)
        assert f"{target.email}: unsubscribed" in unsubscribe.stdout
        now = next(row for row in proj.ledger() if row.id == target.id)
        assert now.status in {"queued", "skipped"}, (
            "the sender reached the last recipient before the unsubscribe command had run (machine too slow?)"
        )
        sender.wait(120.0)
    assert sender.returncode == 0, sender.describe()

    accepted = Counter(emulator.recipients())
    assert target.email not in accepted
    assert accepted == Counter(e for e in emails if e != target.email)
    rows = {row.subscriber_id: row for row in proj.ledger()}
    assert rows[target.subscriber_id].status == "skipped"
    assert "unsubscribed" in (rows[target.subscriber_id].error or "")
    assert Counter(row.status for row in rows.values()) == Counter({"sent": len(emails) - 1, "skipped": 1})
    assert proj.campaign_status() == "finished"


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_finishes_the_batches_in_flight_and_a_second_run_completes(
    project: Path, emulator: SendGridEmulator, processes: int
) -> None:
    """With worker processes, every process gets the SIGTERM, as from systemd: workers finish their
    batch and the main process records it."""
    proj = sendgrid_project(project, emulator, rate=40.0, processes=processes)
    emails = proj.import_subscribers(300)
    rng = random.Random(20261215)
    with proj.spawn(*proj.send_args("sendgrid")) as sender:
        assert sender.wait_until(lambda: proj.done() > 0), sender.describe()
        time.sleep(rng.uniform(0.0, 0.5))
        signalled = sender.signal_all(signal.SIGTERM)
        sender.wait(30.0)
    assert processes == 1 or signalled > processes, "the workers (and their forkserver) got it too"
    assert sender.returncode is not None and sender.returncode >= 0, (
        f"killed by the signal instead of stopping: {sender.describe()}"
    )
    assert "interrupted" in sender.stdout, sender.describe()
    counts = proj.counts()
    assert counts["sending"] == 0 and counts["in_doubt"] == 0, counts
    assert counts["queued"] > 0, "SIGTERM was meant to arrive mid-campaign"
    assert proj.campaign_status() == "running"
    accepted = Counter(emulator.recipients())
    sent = {row.email for row in proj.ledger() if row.status == "sent"}
    assert accepted == Counter(sent), "what was accepted is exactly what the ledger says was sent"

    proj.send("sendgrid", timeout=120.0)
    assert Counter(emulator.recipients()) == Counter(emails)
    assert proj.counts() == Counter({"sent": len(emails)})
    assert proj.campaign_status() == "finished"


def test_sigterm_claims_no_new_batch_after_the_signal(project: Path, emulator: SendGridEmulator) -> None:
    """ "Ctrl-C or SIGTERM: stop claiming batches; the ones in flight finish" (pipeline/cli/sending.py).

    With pacing slower than the transport (2 s per batch here; 10 s with the shipped batch_size 500 at
    50/s), the signal lands while the loop paces the next claimed batch. That batch may still go; no
    row that is still queued once the signal has been handled may be claimed afterwards.
    """
    proj = sendgrid_project(project, emulator, rate=5.0)
    proj.import_subscribers(200)
    with proj.spawn(*proj.send_args("sendgrid")) as sender:
        assert sender.wait_until(lambda: proj.done() > 0), sender.describe()
        sender.signal(signal.SIGTERM)
        time.sleep(1.0)  # the handler runs at once: the main thread sleeps in the rate limiter
        queued_after_signal = proj.ids_with_status("queued")
        sender.wait(120.0)
    assert sender.returncode is not None and sender.returncode >= 0, sender.describe()
    counts = proj.counts()
    assert counts["sending"] == 0 and counts["in_doubt"] == 0, counts
    claimed_late = queued_after_signal - proj.ids_with_status("queued")
    assert not claimed_late, (
        f"{len(claimed_late)} rows were claimed and sent after SIGTERM had been handled "
        f"(campaign now {dict(counts)})"
    )


def test_a_killed_send_leaves_no_process_behind(project: Path, emulator: SendGridEmulator) -> None:
    """SIGKILL reaches only the main process; its workers, the forkserver and the resource tracker
    must notice and exit by themselves (a scheduler restarted after each kill would pile them up)."""
    proj = sendgrid_project(project, emulator, rate=40.0, processes=2)
    proj.import_subscribers(300)
    emulator.inject_every(1, Fault(delay=ROUND_TRIP))
    with proj.spawn(*proj.send_args("sendgrid")) as sender:
        assert sender.wait_until(lambda: proj.done() > 0), sender.describe()
        helpers = sender.descendants()
        assert len(helpers) >= 3, "two workers and the forkserver, at least"
        sender.kill()

    deadline = time.monotonic() + 10.0
    while (left := [pid for pid in helpers if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running 10 s after the kill: {[_cmdline(pid) for pid in left]}"


def test_workers_are_up_before_the_first_row_is_claimed(project: Path, emulator: SendGridEmulator) -> None:
    """A row claimed for a worker that is still starting sits ``sending`` with nobody to send it: a kill
    then leaves it in doubt though it never went out. So the workers start (and open their transport)
    first: by the time any row of the campaign is ``sending``, both are running."""
    proj = sendgrid_project(project, emulator, rate=40.0, processes=2)
    proj.import_subscribers(100)
    with proj.spawn(*proj.send_args("sendgrid")) as sender:
        assert sender.wait_until(lambda: proj.counts()["sending"] + proj.counts()["sent"] > 0, timeout=60.0)
        at_first_claim = [_cmdline(pid) for pid in sender.descendants()]
        sender.wait(120.0)
    forkserver_processes = [cmd for cmd in at_first_claim if "multiprocessing.forkserver" in cmd]
    assert len(forkserver_processes) >= 3, (
        f"the forkserver and two workers were to be up at the first claim; there were: {at_first_claim}"
    )


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (orphans are reaped by whoever adopts them, or not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"
