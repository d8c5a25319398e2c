"""What the README promises the operator after a crash or a failed start, checked through the CLI: a
send that cannot start freezes nothing, and every command that reports a campaign shows the recipients
in doubt (those a dead run still holds included) and exits 1 until the operator decides."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, update

from pipeline.dispatch import campaigns, ledger
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.errors import SettingsError
from pipeline.render.links import Links
from pipeline.schedule import decisions
from pipeline.schedule.scheduler import Scheduler
from pipeline.settings import Settings, load_settings
from pipeline.store.engine import Store, open_store
from pipeline.store.tables import campaigns as campaigns_table
from pipeline.store.tables import deliveries, dispatch_runs
from pipeline.transports import Transport
from tests.fixtures.project import CliInvoker
from tests.fixtures.smtp import SmtpServer
from tests.mail import outbox_files, outbox_transport, parse_message
from tests.scheduling import AUDIENCE, ManualClock, at_seven, issues_dir, readers_in_zones, tuned, write_issue
from tests.system import dead_pid

ISSUE = "issues/2026-12-08-realistic-expectations.yaml"
OTHER = "issues/2026-12-15-build-your-support-system.yaml"


def started(project: Path, issue: str = ISSUE, transport: str = "outbox") -> tuple[Store, int]:
    """A campaign of ``issue`` started as `send` starts one, nothing sent yet; its store is open."""
    settings = load_settings(project / "settings.toml")
    store = open_store(settings)
    plan = plan_send(store, settings, project / issue, Links(settings, store.signer))
    campaign, _ = start_campaign(store, plan, transport)
    return store, campaign.id


def killed_mid_batch(store: Store, campaign_id: int, rows: int) -> None:
    """What a SIGKILL leaves: ``rows`` rows `sending`, claimed by a run whose process is gone."""
    run_id = ledger.start_run(store, campaign_id)
    with store.write() as conn:
        conn.execute(update(dispatch_runs).where(dispatch_runs.c.id == run_id).values(pid=dead_pid()))
        ids = conn.execute(
            select(deliveries.c.id).where(deliveries.c.campaign_id == campaign_id).limit(rows)
        ).scalars()
        conn.execute(
            update(deliveries).where(deliveries.c.id.in_(list(ids))).values(status="sending", run_id=run_id)
        )


def test_a_send_whose_transport_cannot_open_freezes_no_campaign(
    run: CliInvoker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)

    result = run("send", ISSUE, "--yes", "--transport", "sendgrid", expect=1)

    assert "SENDGRID_API_KEY: not set" in result.output
    assert "realistic-expectations" not in run("campaigns").output


def test_rows_a_dead_run_holds_are_in_doubt_in_status_show_and_list_and_each_exits_1(
    run: CliInvoker, project: Path
) -> None:
    store, campaign_id = started(project)
    killed_mid_batch(store, campaign_id, 7)
    store.close()

    for command in (("status",), ("campaigns",), ("campaigns", "show", str(campaign_id))):
        result = run(*command, expect=1)
        assert "in doubt" in result.output, command
    assert "7 recipient(s) in doubt" in run("campaigns", "show", str(campaign_id), expect=1).output


def test_send_exits_1_while_recipients_are_in_doubt_even_when_there_is_nothing_left_to_send(
    run: CliInvoker, project: Path, smtp_server: SmtpServer
) -> None:
    """Over SMTP, which cannot tell what a server did with a message whose connection dropped."""
    settings_file = project / "settings.toml"
    text = settings_file.read_text(encoding="utf-8").replace('host = "localhost"', 'host = "127.0.0.1"')
    text = text.replace("port = 587", f"port = {smtp_server.port}").replace(
        'security = "starttls"', 'security = "none"'
    )
    settings_file.write_text(text, encoding="utf-8")
    store, campaign_id = started(project, transport="smtp")
    killed_mid_batch(store, campaign_id, 5)
    store.close()

    resumed = run("send", ISSUE, "--yes", expect=1)
    assert "45 sent" in resumed.output and "5 recipient(s) in doubt" in resumed.output

    again = run("send", ISSUE, "--yes", expect=1)
    assert "is finished" in again.output and "5 recipient(s) in doubt" in again.output

    run("campaigns", "resolve", str(campaign_id), "--mark-sent")
    shown = run("campaigns", "show", str(campaign_id)).output  # decided: exit 0 again
    assert "of which marked sent by the operator" in shown and "│ 5" in shown.split("marked sent")[1]
    run("send", ISSUE, "--yes")


def test_run_once_reports_in_doubt_and_stalled_campaigns_it_did_not_start_and_exits_1(
    run: CliInvoker, project: Path
) -> None:
    store, stalled = started(project, OTHER)
    other_store, doubtful = started(project)
    killed_mid_batch(other_store, doubtful, 3)
    with other_store.write() as conn:  # the rest went out
        conn.execute(
            update(deliveries)
            .where(deliveries.c.campaign_id == doubtful, deliveries.c.status == "queued")
            .values(status="sent")
        )
    assert campaigns.report(other_store, doubtful).counts == {"sent": 47, "in_doubt": 3}
    store.close()
    other_store.close()

    result = run("run", "--once", expect=1)

    assert f"campaign #{doubtful}: 3 in doubt" in result.output
    assert f"unfinished: campaign #{stalled} was started outside the scheduler" in result.output
    assert "Nothing due." not in result.output


def test_the_scheduler_decides_nothing_while_the_transport_cannot_open(
    store: Store, settings: Settings
) -> None:
    """A missing API key on the issue's day: reported each tick, nothing frozen; fixed, it goes out."""
    issues_dir(settings)
    weekly = tuned(settings, weekday="tuesday", time="07:00", timezone="America/New_York")
    day = dt.date(2027, 1, 5)
    slug = write_issue(weekly, day)
    readers_in_zones(store, AUDIENCE)
    clock = ManualClock(at_seven(day) + dt.timedelta(minutes=1))
    broken = True

    def transports(name: str) -> Transport:
        if broken:
            raise SettingsError("SENDGRID_API_KEY: not set (export it; it is never read from settings.toml)")
        return outbox_transport(weekly)

    sched = Scheduler(store, weekly, clock=clock, transports=transports)
    report = sched.tick()

    assert [(o.slug, o.action) for o in report.outcomes] == [(slug, "failed")]
    assert "SENDGRID_API_KEY" in report.outcomes[0].detail
    assert campaigns.find_campaign(store, slug, weekly.newsletter.default_segments) is None
    assert slug not in decisions.all_decisions(store)

    broken = False
    clock.advance(dt.timedelta(minutes=1))
    assert [o.action for o in sched.tick().outcomes] == ["started", "sent"]


def test_a_second_campaign_of_an_issue_skips_everyone_the_first_reached_and_dry_run_says_so(
    run: CliInvoker, project: Path
) -> None:
    run("send", ISSUE, "--yes", "--segment", "toddlers")
    toddlers = len(outbox_files(project / "outbox"))
    assert toddlers > 0

    dry = run("send", ISSUE, "--dry-run", "--segment", "everyone").output
    (line,) = [line for line in dry.splitlines() if "already sent this issue" in line]
    assert line.split("│")[-2].strip() == str(toddlers)

    second = run("send", ISSUE, "--yes", "--segment", "everyone").output
    assert f"{50 - toddlers} sent" in second and f"{toddlers} skipped" in second
    recipients = Counter(parse_message(f.read_bytes())["To"] for f in outbox_files(project / "outbox"))
    assert len(recipients) == 50 and set(recipients.values()) == {1}, "one copy each"
    shown = run("campaigns", "show", "2").output
    assert "already sent this issue in campaign #1" in shown


def test_two_campaigns_of_an_issue_started_before_either_sent_still_give_one_copy_each(
    run: CliInvoker, project: Path
) -> None:
    """Both frozen first (nobody reached yet), so the second skips at its claims, not at its freeze."""
    settings = load_settings(project / "settings.toml")
    with open_store(settings) as store:
        links = Links(settings, store.signer)
        for segment in ("toddlers", "everyone"):
            start_campaign(store, plan_send(store, settings, project / ISSUE, links, (segment,)), "outbox")

    run("campaigns", "resume", "1")
    run("campaigns", "resume", "2")

    recipients = Counter(parse_message(f.read_bytes())["To"] for f in outbox_files(project / "outbox"))
    assert len(recipients) == 50 and set(recipients.values()) == {1}


def test_outbox_rows_in_doubt_are_settled_by_the_files_themselves(run: CliInvoker, project: Path) -> None:
    """After a kill, a row whose .eml is there went out; one whose file is missing never did. Nobody is
    left for the operator to decide about, and nobody gets a second file."""
    store, campaign_id = started(project)
    killed_mid_batch(store, campaign_id, 5)  # claimed, never written
    store.close()
    first = run("send", ISSUE, "--yes").output
    assert "5 recipient(s) in doubt settled by the outbox" in first and "50 sent" in first
    files = outbox_files(project / "outbox")

    with open_store(load_settings(project / "settings.toml")) as store, store.write() as conn:
        # as if killed after three files were written, before the record
        conn.execute(
            update(campaigns_table).where(campaigns_table.c.id == campaign_id).values(status="running")
        )
        ids = list(conn.execute(select(deliveries.c.id).order_by(deliveries.c.id).limit(3)).scalars())
        conn.execute(update(deliveries).where(deliveries.c.id.in_(ids)).values(status="sending", run_id=None))

    second = run("send", ISSUE, "--yes").output
    assert "3 recipient(s) in doubt settled by the outbox" in second and "finished" in second
    assert outbox_files(project / "outbox") == files, "no second copy"
    shown = run("campaigns", "show", str(campaign_id)).output
    (line,) = [line for line in shown.splitlines() if "found sent after being in doubt" in line]
    assert line.split("│")[-2].strip() == "3"
