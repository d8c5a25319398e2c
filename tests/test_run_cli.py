"""`newsletter run` and `newsletter status` as an operator uses them: in-process for --once and status,
and one real long-running `newsletter run` process stopped with SIGTERM."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import sqlite3
import tomllib
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pipeline.schedule.lease import Lease
from pipeline.settings import load_settings
from pipeline.store.engine import open_store, utcnow
from tests.fixtures.project import CliInvoker, cli_invoker
from tests.mail import outbox_files
from tests.paths import REPO
from tests.scheduling import issues_dir, write_issue
from tests.sendproc import SendProject, dump_settings
from tests.system import dead_pid

TODAY = utcnow().date()


def scheduled_today(project: Path, **schedule: Any) -> Path:
    """The project's settings with issues due at 00:00 UTC, caught up within 30 hours; no issues yet."""
    data = tomllib.loads((project / "settings.toml").read_text(encoding="utf-8"))
    data["newsletter"]["timezone"] = "UTC"
    data["schedule"] = {
        "weekday": TODAY.strftime("%A").lower(),
        "time": "00:00",
        "catch_up_hours": 30.0,
        **schedule,
    }
    data["delivery"] = {"rate_per_second": 1000.0}
    path = project / "scheduled.toml"
    path.write_text(dump_settings(data), encoding="utf-8")
    issues_dir(load_settings(path))
    return path


@pytest.fixture
def run(operator_shell: Path) -> CliInvoker:
    """`newsletter --settings scheduled.toml …` in an operator's shell, the sample subscribers imported."""
    invoke = cli_invoker(scheduled_today(operator_shell))
    invoke("subscribers", "import", "subscribers/sample.csv")
    return invoke


def test_run_once_sends_the_issue_due_today_and_then_has_nothing_to_do(
    run: CliInvoker, project: Path
) -> None:
    slug = write_issue(load_settings(project / "scheduled.toml"), TODAY, "today")

    first = run("run", "--once")
    assert f"{slug}: started: campaign #1" in first.output
    assert f"{slug}: campaign #1: 50 sent; finished" in first.output
    assert len(outbox_files(project / "outbox")) == 50

    second = run("run", "--once")
    assert "Nothing due." in second.output
    assert len(outbox_files(project / "outbox")) == 50


def test_run_once_records_an_issue_past_catch_up_as_missed_and_exits_1(
    run: CliInvoker, project: Path
) -> None:
    settings = load_settings(project / "scheduled.toml")
    slug = write_issue(settings, TODAY - dt.timedelta(days=3), "late")
    upcoming = write_issue(settings, TODAY + dt.timedelta(days=7), "next")

    result = run("run", "--once", expect=1)

    assert f"{slug}: missed: due" in result.output
    assert f"Next: {upcoming}" in result.output
    assert outbox_files(project / "outbox") == []
    status = run("status")
    assert f"Missed: {slug}" in status.output
    assert f"Next run: {upcoming} → everyone" in status.output
    assert "Scheduler: not running" in status.output  # --once released the lease on its way out


def test_run_once_waits_while_another_scheduler_holds_the_lease(run: CliInvoker, project: Path) -> None:
    settings = load_settings(project / "scheduled.toml")
    write_issue(settings, TODAY, "today")
    with open_store(settings) as store:
        assert Lease(store, 300, holder="elsewhere:42:abcd").acquire(utcnow())

    result = run("run", "--once")

    assert "Another scheduler holds the lease (elsewhere:42:abcd, until" in result.output
    assert outbox_files(project / "outbox") == []
    status = run("status")
    assert "Scheduler: running as elsewhere:42:abcd" in status.output
    assert "Due now: " in status.output and "the next tick sends it" in status.output


def test_after_a_kill_status_says_the_holder_died_and_run_once_takes_over_at_once(
    run: CliInvoker, project: Path
) -> None:
    settings = load_settings(project / "scheduled.toml")
    write_issue(settings, TODAY, "today")
    killed = f"{socket.gethostname()}:{dead_pid()}:killed"
    with open_store(settings) as store:
        assert Lease(store, 300, holder=killed).acquire(utcnow())

    status = run("status")
    assert f"Scheduler: not running ({killed} died" in status.output

    result = run("run", "--once")
    assert "Another scheduler holds the lease" not in result.output
    assert len(outbox_files(project / "outbox")) > 0


def test_run_once_with_reader_time_zones_starts_the_campaign_and_status_shows_who_waits(
    run: CliInvoker, project: Path
) -> None:
    earliest = (utcnow() - dt.timedelta(minutes=1)).astimezone(dt.timezone(dt.timedelta(hours=14)))
    settings_file = scheduled_today(
        project,
        per_recipient_timezone=True,
        weekday=earliest.strftime("%A").lower(),
        time=earliest.strftime("%H:%M"),
    )
    slug = write_issue(load_settings(settings_file), earliest.date(), "local")

    invoke = cli_invoker(settings_file)

    once = invoke("run", "--once", expect=None)
    assert once.exit_code == 0, once.output
    assert f"{slug}: started: campaign #1" in once.output  # 07:00 has just come at UTC+14…
    assert f"{slug}: waiting: rows not yet due" in once.output  # …but in none of the readers' zones
    assert outbox_files(project / "outbox") == []

    status = invoke("status", expect=None)
    assert status.exit_code == 0, status.output
    assert "Campaigns in progress or in doubt" in status.output
    row = next(line for line in status.output.splitlines() if slug in line and "│" in line)
    assert "running" in row and " 50 " in row  # all queued, waiting for their morning:
    assert "3 at " in row  # Auckland's three come first
    assert "(8 times)" in status.output  # eight zones (no zone counts as the newsletter's, UTC)


def test_a_real_newsletter_run_sends_the_issue_and_stops_cleanly_on_sigterm(project: Path) -> None:
    proj = SendProject(
        project,
        {
            "newsletter": {"timezone": "UTC"},
            "schedule": {
                "weekday": TODAY.strftime("%A").lower(),
                "time": "00:00",
                "catch_up_hours": 30.0,
                "tick_seconds": 0.2,
                "lease_seconds": 30.0,
            },
            "delivery": {"transport": "outbox", "batch_size": 5, "rate_per_second": 1000.0},
        },
    )
    settings = load_settings(proj.settings)
    issues_dir(settings)
    slug = write_issue(settings, TODAY, "today")
    emails = proj.import_subscribers(20)

    with proj.spawn("run") as process:
        assert process.wait_until(lambda: proj.counts()["sent"] == len(emails)), process.describe()
        process.signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.describe()

    assert proj.counts() == {"sent": 20}
    assert proj.campaign_status() == "finished"
    files = sorted(settings.path(settings.delivery.outbox_dir).glob(f"1-{slug}/*.eml"))
    assert len(files) == 20
    assert f"{slug} → everyone: started campaign #1 for 20 recipients" in process.stderr
    assert "SIGTERM" in process.stderr
    with closing(sqlite3.connect(proj.db_path)) as conn:
        (expires_at,) = conn.execute("SELECT expires_at FROM leases").fetchone()
        assert dt.datetime.fromisoformat(expires_at).replace(tzinfo=dt.UTC) <= utcnow()  # released
        assert conn.execute("SELECT count(*) FROM deliveries WHERE status = 'sending'").fetchone() == (0,)


def test_quiet_run_once_prints_nothing_when_nothing_happened(run: CliInvoker, project: Path) -> None:
    write_issue(load_settings(project / "scheduled.toml"), TODAY + dt.timedelta(days=7), "next")
    assert run("-q", "run", "--once").output == ""  # so cron mails only when something happened


def unit_file() -> dict[str, dict[str, list[str]]]:
    """deploy/newsletter.service as {section: {key: [values]}} (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (REPO / "deploy" / "newsletter.service").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_systemd_unit_runs_the_scheduler_restarts_on_failure_and_stops_gently() -> None:
    unit = unit_file()
    service = unit["Service"]
    assert service["ExecStart"][0].endswith("/newsletter run")
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert 30 <= int(service["TimeoutStopSec"][0]) <= 600
    assert service["EnvironmentFile"] and "Type" in service
    assert any(v.startswith("NEWSLETTER_SETTINGS=") for v in service["Environment"])
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][0]
