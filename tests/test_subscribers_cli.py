"""The subscribers, segments and db commands, run through click on a copy of the project (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from pipeline.cli import load_command
from pipeline.cli.context import console
from pipeline.store.engine import head_revision
from tests.fixtures.project import CliInvoker, cli_invoker

KEY = "k" * 40


@pytest.fixture
def run(project: Path, monkeypatch: pytest.MonkeyPatch) -> CliInvoker:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)
    monkeypatch.setattr(console, "width", 200)  # tables as on a wide terminal
    monkeypatch.chdir(project)

    return cli_invoker(project / "settings.toml")


def test_every_command_explains_itself(run: CliInvoker) -> None:
    for group in (load_command(name) for name in ("subscribers", "segments", "db")):
        assert isinstance(group, click.Group) and group.help and group.name
        assert group.name in run("--help").output
        for name, command in group.commands.items():
            assert command.help, f"{group.name} {name} has no help text"
            assert "Usage:" in run(group.name, name, "--help").output


def test_import_prints_the_counts_and_the_list_shows_people(run: CliInvoker) -> None:
    result = run("subscribers", "import", "subscribers/sample.csv")
    assert (
        "subscribers/sample.csv: 50 added, 0 updated, 0 unchanged, 0 rejected, 0 suppressed" in result.output
    )
    listed = run("subscribers", "list", "--segment", "europe", "--limit", "3").output
    assert "zoe.martin@example.org" in listed and "3 shown" in listed
    assert "0 shown" in run("subscribers", "list", "--status", "unsubscribed").output


def test_a_rejected_import_exits_1_listing_every_bad_row(run: CliInvoker, project: Path) -> None:
    (project / "bad.csv").write_text("email,name\nok@example.com,Ok\nnope,N\nalso-bad,A\n", encoding="utf-8")
    result = run("subscribers", "import", "bad.csv", expect=1)
    assert "bad.csv:3: error: email: 'nope' is not a valid email address" in result.stderr
    assert "bad.csv:4: error: email: 'also-bad'" in result.stderr
    assert "0 shown" in run("subscribers", "list").output
    skipped = run("subscribers", "import", "bad.csv", "--skip-invalid", "--rejects", "rejects.csv")
    assert "1 added" in skipped.output and "2 rejected" in skipped.output
    assert "rejected: bad.csv:3" in skipped.stderr
    assert (
        (project / "rejects.csv")
        .read_text(encoding="utf-8")
        .startswith("email,name,reason\nnope,N,'nope' is")
    )


def test_add_show_unsubscribe(run: CliInvoker) -> None:
    added = run(
        "subscribers", "add", "Ana@Example.com", "--name", "Ana Lima", "--tag", "toddler", "--tag", "vip"
    )
    assert "added Ana@example.com (id 1, active)" in added.output
    assert "already a subscriber" in run("subscribers", "add", "ana@example.com", expect=1).stderr
    assert "ana@example.com: unsubscribed" in run("subscribers", "unsubscribe", "ana@example.com").output
    assert "already unsubscribed" in run("subscribers", "unsubscribe", "ANA@example.com").output
    shown = run("subscribers", "show", "ana@example.com").output
    for text in ("Ana Lima", "toddler, vip", "unsubscribed", "added", "active → unsubscribed", "admin"):
        assert text in shown
    assert "not a subscriber" in run("subscribers", "show", "who@example.com", expect=1).stderr


def test_export_round_trips_through_import_into_another_project(
    run: CliInvoker, project: Path, tmp_path: Path
) -> None:
    run("subscribers", "import", "subscribers/sample.csv")
    run("subscribers", "unsubscribe", "maya.chen@example.com")
    exported = run("subscribers", "export", "--output", "all.csv")
    assert "exported 50 subscriber(s) to all.csv" in exported.stderr
    header = (project / "all.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "email,name,tags,timezone,status,children,city"
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.toml").write_text(
        (project / "settings.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    result = run("subscribers", "import", str(project / "all.csv"), settings=other / "settings.toml")
    assert "50 added" in result.output
    again = run("subscribers", "export", "--format", "json", settings=other / "settings.toml").stdout
    people = {p["email"]: p for p in json.loads(again)}
    assert people["maya.chen@example.com"]["status"] == "unsubscribed"
    assert people["zoe.martin@example.org"]["tags"] == ["new-parent", "working-mom"]
    assert people["zoe.martin@example.org"]["attributes"] == {"children": "1", "city": "London"}
    segment = json.loads(run("subscribers", "export", "--format", "json", "--segment", "big-families").stdout)
    assert segment and all(int(p["attributes"]["children"]) >= 3 for p in segment)


def test_erase_asks_first_and_then_forgets_for_good(run: CliInvoker) -> None:
    run("subscribers", "add", "erin@example.com", "--name", "Erin")
    aborted = run("subscribers", "erase", "erin@example.com", input="n\n", expect=1)
    assert "Aborted" in aborted.output
    assert "Erin" in run("subscribers", "show", "erin@example.com").output
    erased = run("subscribers", "erase", "erin@example.com", input="y\n")
    assert "erased subscriber 1; the address is suppressed for good" in erased.output
    assert "suppression list" in run("subscribers", "add", "erin@example.com", expect=1).stderr
    assert (
        "not a subscriber; the address is now suppressed"
        in run("subscribers", "erase", "x@example.com", "--yes").output
    )


def test_segments_list_and_show(run: CliInvoker) -> None:
    run("subscribers", "import", "subscribers/sample.csv")
    listed = run("segments").output
    for name in ("everyone", "working-moms", "new-parents", "toddlers", "school-age", "europe"):
        assert name in listed
    assert "50" in listed
    shown = run("segments", "show", "toddlers").output
    assert '"any": ["toddler"]' in shown and "SELECT count(*)" in shown and "recipients: " in shown
    assert "did you mean 'toddlers'" in run("segments", "show", "todlers", expect=1).stderr


def test_db_current_and_upgrade(run: CliInvoker) -> None:
    assert "none (empty database)" in run("db", "current").output
    assert f"at revision {head_revision()} (newest)" in run("db", "upgrade").output
    assert f"at revision {head_revision()} (newest)" in run("db", "current").output
