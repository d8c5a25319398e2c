"""`newsletter send` and `newsletter campaigns` as an operator uses them (outbox transport, SQLite)."""

from __future__ import annotations

from pathlib import Path

from pipeline.dispatch import campaigns
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.render.links import Links
from pipeline.settings import load_settings
from pipeline.store.engine import open_store
from tests.fixtures.project import CliInvoker
from tests.mail import outbox_files, parse_message

ISSUE = "issues/2026-12-08-realistic-expectations.yaml"


def test_dry_run_counts_and_sends_nothing(run: CliInvoker, project: Path) -> None:
    result = run("send", ISSUE, "--dry-run", "--segment", "toddlers", "--segment", "working-moms")
    assert "toddlers" in result.output and "working-moms" in result.output
    assert "Dry run: nothing sent." in result.output
    assert outbox_files(project / "outbox") == []
    assert "2026-12-08" not in run("campaigns").output


def test_send_reaches_everyone_once_and_running_it_again_resumes_nothing(
    run: CliInvoker, project: Path
) -> None:
    first = run("send", ISSUE, "--yes")
    assert "50 sent" in first.output and "finished" in first.output
    assert "outbox/1-2026-12-08-realistic-expectations/" in first.output
    files = outbox_files(project / "outbox")
    assert len(files) == 50

    second = run("send", ISSUE, "--yes")
    assert "already exists (finished)" in second.output
    assert outbox_files(project / "outbox") == files

    message = parse_message(files[0].read_bytes())
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<https://news.example.org/u/")


def test_confirmation_is_asked_and_no_means_nothing_starts(run: CliInvoker, project: Path) -> None:
    result = run("send", ISSUE, input="n\n", expect=1)
    assert "Send to 50 recipients through outbox?" in result.output
    assert outbox_files(project / "outbox") == []
    assert "realistic-expectations" not in run("campaigns").output


def test_a_test_copy_goes_to_one_address_without_a_campaign(run: CliInvoker, project: Path) -> None:
    result = run("send", ISSUE, "--to", "editor@example.org")
    assert "Test copy to editor@example.org: sent" in result.output
    (path,) = outbox_files(project / "outbox")
    message = parse_message(path.read_bytes())
    assert message["Subject"].startswith("[TEST] ")
    assert message["To"] == "editor@example.org"
    assert "realistic-expectations" not in run("campaigns").output


def test_an_issue_with_errors_is_refused_with_file_line_and_field(run: CliInvoker, project: Path) -> None:
    broken = project / "issues" / "2027-01-05-broken.yaml"
    text = (project / ISSUE).read_text(encoding="utf-8").replace("date: 2026-12-08", "date: 2027-01-05")
    broken.write_text(text.replace("subject:", "subjcet:", 1), encoding="utf-8")
    result = run("send", str(broken), "--yes", expect=1)
    assert "2027-01-05-broken.yaml:" in result.output
    assert "unknown key 'subjcet' (did you mean 'subject'?)" in result.output
    assert outbox_files(project / "outbox") == []


def test_campaign_commands_show_pause_resume_cancel_and_resolve(run: CliInvoker, project: Path) -> None:
    run("send", ISSUE, "--yes", "--segment", "toddlers")
    listing = run("campaigns").output
    assert "realistic-expectations" in listing and "toddlers" in listing and "finished" in listing

    shown = run("campaigns", "show", "1").output
    assert "sent" in shown and "14" in shown

    run("campaigns", "pause", "1", expect=1)  # a finished campaign cannot be paused
    assert "no such campaign" in run("campaigns", "show", "9", expect=1).output
    assert "choose --resend or --mark-sent" in run("campaigns", "resolve", "1", expect=2).output
    assert "0 in-doubt recipient(s)" in run("campaigns", "resolve", "1", "--mark-sent").output

    other = "issues/2026-12-15-build-your-support-system.yaml"
    run("send", other, "--dry-run")
    # a campaign that exists but was paused before sending waits for an explicit resume
    settings = load_settings(project / "settings.toml")
    with open_store(settings) as store:
        plan = plan_send(store, settings, project / other, Links(settings, store.signer))
        campaign, _ = start_campaign(store, plan, "outbox")
        campaigns.change_status(store, campaign.id, "pause")
    assert "resume it with `newsletter campaigns resume 2`" in run("send", other, "--yes").output
    resumed = run("campaigns", "resume", "2").output
    assert "finished" in resumed and "50 sent" in resumed
    assert "cannot cancel" in run("campaigns", "cancel", "2", "--yes", expect=1).output


def test_an_empty_audience_starts_no_campaign(run: CliInvoker, project: Path) -> None:
    segments = project / "subscribers" / "segments.toml"
    segments.write_text(
        segments.read_text(encoding="utf-8")
        + '\n[segments.nobody]\ndescription = "No one."\ntags.all = ["no-such-tag"]\n',
        encoding="utf-8",
    )
    result = run("send", ISSUE, "--yes", "--segment", "nobody", expect=1)
    assert "Nobody to send to" in result.output
    assert "realistic-expectations" not in run("campaigns").output
