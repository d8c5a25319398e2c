"""`newsletter init` and `newsletter templates`: a newsletter from nothing, checked, rendered and sent
with no file of this repository, and templates overridden one file at a time."""

from __future__ import annotations

import datetime as dt
import email
import json
import os
import re
import select
import subprocess
import sys
import time
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
import yaml

from pipeline.cli.context import console, console_err
from pipeline.content.issue import load_issue
from pipeline.content.newproject import STARTER
from pipeline.render.overrides import PACKAGED_TEMPLATES
from pipeline.render.renderer import render
from pipeline.settings import SECRET_ENV_NAMES, SETTINGS_ENV, load_settings
from tests.fixtures.project import CliInvoker, cli_invoker
from tests.paths import REPO
from tests.test_settings import _documented_keys
from tests.test_startup import WEB_AND_STORE, modules_after

OPTIONS = (
    "--name", "Field Notes",
    "--base-url", "https://notes.example.net",
    "--from-email", "hello@notes.example.net",
    "--postal-address", "Field Notes, 12 Elm Road, Leeds LS1 4AB, UK",
    "--timezone", "Europe/London",
)  # fmt: skip
PROJECT_FILES = {
    "settings.toml",
    "README.md",
    ".gitignore",
    ".pre-commit-config.yaml",
    ".github/workflows/newsletter.yml",
    ".github/newsletter-matcher.json",
    "subscribers/segments.toml",
    "templates/README.md",
}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliInvoker:
    """`newsletter …` as a new user types it: in an empty folder of their own, no settings chosen,
    no secret in the environment (the SQLite store makes its own key)."""
    for name in (SETTINGS_ENV, *SECRET_ENV_NAMES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(console, "width", 200)
    monkeypatch.setattr(console_err, "width", 200)
    return cli_invoker()


@pytest.fixture
def news(run: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project made by `newsletter init news`, as the working directory."""
    run("init", "news", *OPTIONS)
    monkeypatch.chdir(tmp_path / "news")
    return tmp_path / "news"


def files_in(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def sample_issue(project: Path) -> Path:
    [issue] = (project / "issues").glob("*.yaml")
    return issue


# init


def test_init_writes_a_whole_project_whose_settings_are_as_given(run: CliInvoker, tmp_path: Path) -> None:
    result = run("init", "news", *OPTIONS)

    project = tmp_path / "news"
    issue = sample_issue(project)
    assert files_in(project) == PROJECT_FILES | {f"issues/{issue.name}"}
    settings = load_settings(project / "settings.toml")
    assert settings.root == project
    assert settings.newsletter.name == "Field Notes"
    assert settings.newsletter.base_url == "https://notes.example.net"
    assert settings.newsletter.postal_address == "Field Notes, 12 Elm Road, Leeds LS1 4AB, UK"
    assert settings.newsletter.timezone == "Europe/London"
    assert (settings.sender.from_email, settings.sender.from_name) == (
        "hello@notes.example.net",
        "Field Notes",
    )
    assert settings.sender.reply_to is None
    assert "cd news && newsletter check" in result.output
    assert f"news/issues/{issue.name}" in result.output


def test_every_setting_of_a_new_project_is_there_with_its_comment(news: Path) -> None:
    written = _documented_keys((news / "settings.toml").read_text(encoding="utf-8"))
    sample = _documented_keys((REPO / "settings.toml").read_text(encoding="utf-8"))

    assert set(written) == set(sample)
    assert all(written.values()), [key for key, commented in written.items() if not commented]
    assert '# reply_to = "editors@notes.example.net"' in (news / "settings.toml").read_text(encoding="utf-8")


def test_the_sample_issue_is_dated_a_scheduled_day_at_least_a_week_ago(news: Path) -> None:
    issue = yaml.safe_load(sample_issue(news).read_text(encoding="utf-8"))
    settings = load_settings(news / "settings.toml")

    age = (dt.date.today() - issue["date"]).days
    assert 7 - 1 <= age <= 13 + 1, "a week or two ago (a day either way for the newsletter's time zone)"
    assert issue["date"].strftime("%A").lower() == settings.schedule.weekday
    assert sample_issue(news).name.startswith(issue["date"].isoformat())


def test_a_new_project_checks_strictly_renders_and_sends(run: CliInvoker, news: Path) -> None:
    issue = f"issues/{sample_issue(news).name}"

    checked = run("check", "--strict")
    rendered = run("render", issue)
    run("subscribers", "add", "ana@example.org", "--name", "Ana")
    sent = run("send", issue, "--yes")

    assert checked.output.strip().splitlines()[-1] == "1 file checked: 0 error(s), 0 warning(s)"
    html = (news / "rendered" / f"{sample_issue(news).stem}.html").read_text(encoding="utf-8")
    assert "Field Notes" in html and "12 Elm Road" in html and "Start with one idea" in html
    assert "rendered/" in rendered.output
    [eml] = (news / "outbox").rglob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=default_policy)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "Ana <ana@example.org>"
    assert message["From"] == "Field Notes <hello@notes.example.net>"
    assert message["Subject"] == "Your first issue, section by section"
    assert "campaign: 1 sent of 1 recipients" in sent.output
    assert (news / "var" / "secret.key").is_file(), "the SQLite project made its own signing key"


def test_the_footer_says_what_the_newsletter_is_in_its_own_words(run: CliInvoker, tmp_path: Path) -> None:
    """Nothing of the sample newsletter (The Juggle's "for working parents") reaches another one."""
    run("init", "news", *OPTIONS, "--description", "notes from a year of field work")
    settings = load_settings(tmp_path / "news" / "settings.toml")
    issue_file = load_issue(sample_issue(tmp_path / "news"))

    rendered = render(issue_file, settings)

    for part in (rendered.html, rendered.text):
        text = " ".join(part.with_tags(str.upper).split())
        assert "Field Notes, notes from a year of field work" in text
        assert "working parents" not in text


def test_without_its_segments_file_a_project_sends_to_everyone(run: CliInvoker, news: Path) -> None:
    (news / "subscribers" / "segments.toml").unlink()
    run("subscribers", "add", "ana@example.org")

    run("send", f"issues/{sample_issue(news).name}", "--yes")

    assert len(list((news / "outbox").rglob("*.eml"))) == 1


def test_a_problem_is_a_line_the_ci_matcher_reads(run: CliInvoker, news: Path) -> None:
    """`check` prints FILE:LINE:COL: error: FIELD: message, the shape GitHub's problem matchers,
    editors and pre-commit read; the workflow's own matcher finds file, line, column and message."""
    issue = sample_issue(news)
    issue.write_text(issue.read_text(encoding="utf-8").replace("subject:", "subjet:"), encoding="utf-8")
    matcher = json.loads((news / ".github" / "newsletter-matcher.json").read_text(encoding="utf-8"))
    pattern = matcher["problemMatcher"][0]["pattern"][0]

    result = run("check", "--strict", "issues", expect=1)

    line = next(line for line in result.output.splitlines() if "subjet" in line)
    found = re.match(pattern["regexp"], line)
    assert found, line
    subject_line = 1 + issue.read_text(encoding="utf-8").splitlines().index(
        next(text for text in issue.read_text(encoding="utf-8").splitlines() if text.startswith("subjet:"))
    )
    assert found[pattern["file"]] == f"issues/{issue.name}"
    assert (found[pattern["line"]], found[pattern["column"]]) == (str(subject_line), "1")
    assert found[pattern["severity"]] == "error"
    assert found[pattern["message"]] == "subjet: unknown key 'subjet' (did you mean 'subject'?)"


def test_init_refuses_a_folder_that_is_not_empty(run: CliInvoker, tmp_path: Path) -> None:
    (tmp_path / "news").mkdir()
    (tmp_path / "news" / "notes.txt").write_text("mine\n", encoding="utf-8")

    result = run("init", "news", *OPTIONS, expect=1)

    assert "news: error: is not empty (notes.txt)" in result.output
    assert "--force" in result.output
    assert files_in(tmp_path / "news") == {"notes.txt"}


def test_a_clone_of_an_empty_repository_counts_as_empty(run: CliInvoker, tmp_path: Path) -> None:
    (tmp_path / "news" / ".git").mkdir(parents=True)

    run("init", "news", *OPTIONS)

    assert (tmp_path / "news" / "settings.toml").is_file()


def test_a_folder_that_cannot_be_made_is_an_error_naming_it(run: CliInvoker, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")

    result = run("init", "notes.txt/news", *OPTIONS, expect=1)

    assert "notes.txt/news: error: cannot write: Not a directory" in result.output
    assert "Traceback" not in result.output


def test_force_writes_beside_what_is_there_and_keeps_it(run: CliInvoker, tmp_path: Path) -> None:
    project = tmp_path / "news"
    project.mkdir()
    (project / "README.md").write_text("# Our own readme\n", encoding="utf-8")

    result = run("init", "news", *OPTIONS, "--force")

    assert (project / "README.md").read_text(encoding="utf-8") == "# Our own readme\n"
    assert "news/README.md  (already there: kept)" in result.output
    assert files_in(project) == PROJECT_FILES | {f"issues/{sample_issue(project).name}"}


def test_missing_values_without_a_terminal_are_a_usage_error_naming_them(
    run: CliInvoker, tmp_path: Path
) -> None:
    result = run("init", "news", "--name", "Field Notes", expect=2)

    assert "missing --base-url, --from-email, --postal-address" in result.output
    assert "in a terminal" in result.output
    assert not (tmp_path / "news").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--base-url", "notes.example.net", "--base-url: 'notes.example.net' is not an absolute http(s) URL"),
        ("--from-email", "hello", "--from-email: not a valid email address"),
        ("--timezone", "Europe/Leeds", "--timezone: unknown time zone 'Europe/Leeds'"),
        ("--name", "  ", "missing --name"),
    ],
)
def test_a_wrong_value_is_a_usage_error_naming_its_option(
    run: CliInvoker, tmp_path: Path, option: str, value: str, message: str
) -> None:
    given = list(OPTIONS)
    given[given.index(option) + 1] = value

    result = run("init", "news", *given, expect=2)

    assert message in result.output
    assert not (tmp_path / "news").exists()


def _read_until(fd: int, needle: str, seen: list[str], timeout: float = 20.0) -> None:
    """Read the terminal ``fd`` into ``seen`` until its text holds ``needle``."""
    deadline = time.monotonic() + timeout
    while needle not in "".join(seen):
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {''.join(seen)!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                seen.append(os.read(fd, 4096).decode("utf-8", "replace"))
            except OSError:  # the child closed the terminal
                assert needle in "".join(seen), "".join(seen)


def test_in_a_terminal_init_asks_for_what_is_missing_and_again_for_what_is_wrong(tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    env = {key: value for key, value in os.environ.items() if key not in (SETTINGS_ENV, *SECRET_ENV_NAMES)}
    child = subprocess.Popen(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "init", "news"],
        cwd=tmp_path,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "COLUMNS": "200"},
    )
    os.close(follower)
    seen: list[str] = []
    try:
        for question, answer in [
            ("name", "Field Notes"),
            ("web address", "notes.example.net"),
            ("sent from", "hello@notes.example.net"),
            ("postal address", "12 Elm Road, Leeds LS1 4AB, UK"),
            ("is not an absolute http(s) URL", "https://notes.example.net"),
            ("Next: cd news", ""),
        ]:
            _read_until(leader, question, seen)
            seen.append("\n[answered]\n")  # each question is looked for after the last answer
            os.write(leader, f"{answer}\n".encode())
            seen[:] = ["".join(seen).rpartition("[answered]")[2]]
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        os.close(leader)
    settings = load_settings(tmp_path / "news" / "settings.toml")
    assert settings.newsletter.base_url == "https://notes.example.net"
    assert settings.newsletter.postal_address == "12 Elm Road, Leeds LS1 4AB, UK"


def test_the_starter_segments_explain_the_rules_as_the_samples_do() -> None:
    """One explanation of the segment rules: the starter's file and the sample newsletter's begin alike."""

    def header(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text[: re.search(r"^\[segments\.", text, re.M).start()]  # type: ignore[union-attr]

    assert header(STARTER / "subscribers" / "segments.toml") == header(REPO / "subscribers" / "segments.toml")


# pre-commit hooks


def test_the_repository_offers_the_check_as_a_pre_commit_hook() -> None:
    [hook] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))

    assert hook["id"] == "newsletter-check"
    assert hook["entry"] == "newsletter check --strict"
    assert hook["language"] == "python"
    assert re.search(hook["files"], "issues/2026-12-01-name-it-to-tame-it.yaml")
    assert not re.search(hook["files"], "templates/weekly.mjml.j2")
    assert not re.search(hook["files"], "issues/notes.txt")


# templates


def test_templates_list_shows_the_packaged_ones_and_which_the_project_overrides(
    run: CliInvoker, news: Path
) -> None:
    run("templates", "eject", "partials/footer.mjml.j2")
    (news / "templates" / "letter.txt.j2").write_text("{{ issue.subject }}\n", encoding="utf-8")

    listing = dict(line.split(None, 1) for line in run("templates", "list").output.splitlines())

    packaged = {path.relative_to(PACKAGED_TEMPLATES).as_posix() for path in PACKAGED_TEMPLATES.rglob("*.j2")}
    assert set(listing) == packaged | {"letter.txt.j2"}
    assert listing["letter.txt.j2"] == "templates/letter.txt.j2", "the project's own, overriding nothing"
    assert (
        listing["partials/footer.mjml.j2"] == "templates/partials/footer.mjml.j2 (overrides the packaged one)"
    )
    assert {name for name, where in listing.items() if where == "packaged"} == packaged - {
        "partials/footer.mjml.j2"
    }


def test_an_ejected_partial_once_edited_changes_only_its_part(run: CliInvoker, news: Path) -> None:
    issue = f"issues/{sample_issue(news).name}"
    run("render", issue)
    before = (news / "rendered" / f"{sample_issue(news).stem}.html").read_text(encoding="utf-8")

    ejected = run("templates", "eject", "partials/footer.mjml.j2")
    footer = news / "templates" / "partials" / "footer.mjml.j2"
    assert footer.read_bytes() == (PACKAGED_TEMPLATES / "partials" / "footer.mjml.j2").read_bytes()
    assert "templates/partials/footer.mjml.j2" in ejected.output
    footer.write_text(
        footer.read_text(encoding="utf-8").replace(
            "</mj-text>", "<p>Printed on recycled electrons.</p></mj-text>", 1
        ),
        encoding="utf-8",
    )
    run("check", "--strict")
    run("render", issue)

    after = (news / "rendered" / f"{sample_issue(news).stem}.html").read_text(encoding="utf-8")
    assert "Printed on recycled electrons." in after and "Printed on recycled electrons." not in before
    assert after.replace("<p>Printed on recycled electrons.</p>", "") == before
    assert files_in(news / "templates") == {"README.md", "partials/footer.mjml.j2"}


def test_eject_keeps_the_projects_own_copy_unless_forced(run: CliInvoker, news: Path) -> None:
    run("templates", "eject", "weekly.txt.j2")
    own = news / "templates" / "weekly.txt.j2"
    own.write_text("edited\n", encoding="utf-8")

    refused = run("templates", "eject", "weekly.txt.j2", expect=1)
    assert own.read_text(encoding="utf-8") == "edited\n"
    run("templates", "eject", "weekly.txt.j2", "--force")

    assert "already exists; not overwritten (--force replaces it" in refused.output
    assert own.read_bytes() == (PACKAGED_TEMPLATES / "weekly.txt.j2").read_bytes()


def test_eject_of_an_unknown_name_lists_the_packaged_ones(run: CliInvoker, news: Path) -> None:
    result = run("templates", "eject", "footer.mjml.j2", expect=1)

    assert "footer.mjml.j2: error: no packaged template of that name" in result.output
    assert "(did you mean 'partials/footer.mjml.j2'?)" in result.output
    assert "weekly.mjml.j2, weekly.txt.j2" in result.output
    assert files_in(news / "templates") == {"README.md"}


# start-up


def test_init_and_eject_load_neither_the_store_nor_the_web_stack(tmp_path: Path) -> None:
    assert not modules_after("init", "news", *OPTIONS, cwd=tmp_path) & WEB_AND_STORE
    assert not modules_after("templates", "eject", "weekly.txt.j2", cwd=tmp_path / "news") & WEB_AND_STORE
    assert (tmp_path / "news" / "templates" / "weekly.txt.j2").is_file()
