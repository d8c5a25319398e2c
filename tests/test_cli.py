"""The `newsletter` command as an editor uses it: check, render, new; help everywhere; clean errors."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import click
import pytest
import yaml
from click.testing import Result

from pipeline import __version__
from pipeline.cli import cli
from tests.fixtures.project import cli_invoker
from tests.paths import REPO

FIRST = "2026-12-01-name-it-to-tame-it.yaml"
SAMPLES = len([*(REPO / "issues").glob("*.yaml"), *(REPO / "issues" / "welcome").glob("*.yaml")])
"""The sample issues and welcome steps: `check` with no paths checks them all."""
SUMMARY_OK = f"{SAMPLES} files checked: 0 error(s), 0 warning(s)"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEWSLETTER_SETTINGS", "NEWSLETTER_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)


def run(project: Path, *args: str) -> Result:
    """`newsletter --settings <the project copy's> ARGS`; each test asserts the exit status it expects."""
    return cli_invoker(project / "settings.toml")(*args, expect=None)


def lines(result: Result) -> list[str]:
    return result.output.splitlines()


# check


def test_check_passes_on_the_samples(project: Path) -> None:
    result = run(project, "check")

    assert result.exit_code == 0, result.output
    assert lines(result) == [SUMMARY_OK]


def test_check_accepts_files_and_folders(project: Path) -> None:
    one = run(project, "check", str(project / "issues" / FIRST))
    folder = run(project, "check", str(project / "issues"))

    assert one.exit_code == 0 and lines(one) == ["1 file checked: 0 error(s), 0 warning(s)"]
    assert folder.exit_code == 0 and lines(folder) == [SUMMARY_OK]


def test_check_fails_on_a_broken_file_with_located_messages(project: Path) -> None:
    broken = project / "issues" / "2027-01-05-broken.yaml"
    shutil.copy(REPO / "tests" / "data" / "malformed" / "unknown-keys.yaml", broken)

    result = run(project, "check")

    assert result.exit_code == 1
    out = lines(result)
    assert f"{broken}:6:1: error: subjet: unknown key 'subjet' (did you mean 'subject'?)" in out
    assert f"{broken}:11:3: error: strategy.boddy: unknown key 'boddy' (did you mean 'body'?)" in out
    assert f"{broken}:18:5: error: next_steps.0.lnk: unknown key 'lnk' (did you mean 'link'?)" in out
    assert out[-1] == f"{SAMPLES + 1} files checked: 4 error(s), 0 warning(s)"
    assert "Traceback" not in result.output


def test_check_reports_yaml_syntax_errors_with_line(project: Path) -> None:
    broken = project / "issues" / "2027-01-05-indent.yaml"
    shutil.copy(REPO / "tests" / "data" / "malformed" / "syntax-bad-indentation.yaml", broken)

    result = run(project, "check", str(broken))

    assert result.exit_code == 1
    # libyaml ends it "in this context", PyYAML's own parser "here"
    assert lines(result)[0].startswith(f"{broken}:8:9: error: YAML syntax: mapping values are not allowed ")


def test_strict_turns_warnings_into_failure(project: Path) -> None:
    path = project / "issues" / FIRST
    path.write_text(
        path.read_text(encoding="utf-8").replace("date: 2026-12-01", "date: 2026-12-02"), encoding="utf-8"
    )

    relaxed = run(project, "check")
    strict = run(project, "check", "--strict")

    assert relaxed.exit_code == 0
    assert f"{path}:1:1: warning: date: file name says 2026-12-01 but date is 2026-12-02" in lines(relaxed)
    assert lines(relaxed)[-1] == f"{SAMPLES} files checked: 0 error(s), 1 warning(s)"
    assert strict.exit_code == 1
    assert lines(strict) == lines(relaxed)


def test_check_of_a_missing_path_is_a_usage_error(project: Path) -> None:
    result = run(project, "check", str(project / "issues" / "nope.yaml"))

    assert result.exit_code == 2
    assert "does not exist" in result.output


# render


def test_render_writes_html_text_and_eml_and_prints_their_paths(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run(project, "render", str(project / "issues" / FIRST), "--out", str(out))

    assert result.exit_code == 0, result.output
    stem = FIRST.removesuffix(".yaml")
    written = [out / f"{stem}{suffix}" for suffix in (".html", ".txt", ".eml")]
    assert all(path.is_file() and path.stat().st_size > 0 for path in written)
    for path in written:
        assert any(str(path) in line for line in lines(result)), f"{path} not printed"
    assert "Hi Alex," in (out / f"{stem}.txt").read_text(encoding="utf-8")
    assert "Hi Alex," in (out / f"{stem}.html").read_text(encoding="utf-8")
    message = BytesParser(policy=default).parsebytes((out / f"{stem}.eml").read_bytes())
    assert message["To"].addresses[0].addr_spec == "reader@example.com"
    assert message["Subject"] == "Guilt isn't a verdict: start by naming it"
    assert (project / "var" / "secret.key").is_file(), "the signing key is generated inside the project"


def test_render_for_another_sample_recipient(project: Path, tmp_path: Path) -> None:
    result = run(
        project,
        "render",
        str(project / "issues" / FIRST),
        "--out",
        str(tmp_path / "out"),
        "--to",
        "zoe@example.com",
        "--name",
        "Zoë Ångström",
    )

    assert result.exit_code == 0, result.output
    stem = FIRST.removesuffix(".yaml")
    assert "Hi Zoë," in (tmp_path / "out" / f"{stem}.txt").read_text(encoding="utf-8")
    message = BytesParser(policy=default).parsebytes((tmp_path / "out" / f"{stem}.eml").read_bytes())
    assert message["To"].addresses[0].display_name == "Zoë Ångström"


def test_render_an_issue_with_a_non_ascii_subject(project: Path, tmp_path: Path) -> None:
    path = project / "issues" / FIRST
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            'subject: "Guilt isn\'t a verdict: start by naming it"', 'subject: "Guilt isn\u2019t a verdict"'
        ),
        encoding="utf-8",
    )

    result = run(project, "render", str(path), "--out", str(tmp_path / "out"))

    assert result.exit_code == 0, result.output
    eml = (tmp_path / "out" / FIRST.replace(".yaml", ".eml")).read_bytes()
    assert BytesParser(policy=default).parsebytes(eml)["Subject"] == "Guilt isn\u2019t a verdict"


def test_render_of_a_broken_issue_is_a_clean_error(project: Path, tmp_path: Path) -> None:
    broken = project / "issues" / "2027-01-05-broken.yaml"
    shutil.copy(REPO / "tests" / "data" / "malformed" / "empty-next-steps.yaml", broken)

    result = run(project, "render", str(broken), "--out", str(tmp_path / "out"))

    assert result.exit_code == 1
    unwrapped = result.output.replace(
        "\n", ""
    )  # line wrapping is test_bad_settings_file_is_a_one_line_error's
    assert f"{broken}:12:13: error: next_steps: must not be empty" in unwrapped
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# new


def test_new_scaffolds_every_section_and_check_flags_only_the_todos(project: Path) -> None:
    result = run(project, "new", "Title", "--date", "2027-01-05")

    path = project / "issues" / "2027-01-05-title.yaml"
    assert result.exit_code == 0, result.output
    assert path.is_file()
    assert str(path) in result.output
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert set(data) == {
        "subject",
        "preheader",
        "date",
        "intro",
        "strategy",
        "story",
        "next_steps",
        "resources",
    }
    assert "# hero:" in text, "the optional hero is there, commented out"
    assert "#   alt:" in text
    assert data["subject"] == "Title"
    assert data["strategy"]["title"] == "Title"
    assert set(data["strategy"]) == {"title", "body", "steps"}
    assert set(data["story"]) == {"title", "body", "attribution"}

    checked = run(project, "check", str(path))

    assert checked.exit_code == 1
    problems = lines(checked)[:-1]
    assert problems, checked.output
    assert all(line.startswith(f"{path}:") for line in problems)
    assert all(line.endswith("unfinished: replace the TODO") for line in problems), checked.output
    assert lines(checked)[-1] == f"1 file checked: {len(problems)} error(s), 0 warning(s)"


def test_new_refuses_to_overwrite(project: Path) -> None:
    first = run(project, "new", "Title", "--date", "2027-01-05")
    path = project / "issues" / "2027-01-05-title.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "# my edits\n", encoding="utf-8")
    before = path.read_bytes()

    second = run(project, "new", "Title", "--date", "2027-01-05")

    assert first.exit_code == 0
    assert second.exit_code == 1
    assert "already exists" in second.output
    assert "Traceback" not in second.output
    assert path.read_bytes() == before


def test_new_slugifies_the_title(project: Path) -> None:
    result = run(project, "new", 'Zoë\'s "Big" Week: 5 Tips!', "--date", "2027-01-05")

    assert result.exit_code == 0, result.output
    path = project / "issues" / "2027-01-05-zoe-s-big-week-5-tips.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["subject"] == "Zoë's 'Big' Week: 5 Tips!"


def test_new_without_date_goes_a_week_after_the_newest_issue(project: Path) -> None:
    result = run(project, "new", "Next")

    assert result.exit_code == 0, result.output
    expected = max(dt.date(2027, 1, 5), dt.date.today())
    assert (project / "issues" / f"{expected.isoformat()}-next.yaml").is_file()


def test_new_with_empty_title_is_an_error(project: Path) -> None:
    result = run(project, "new", "   ", "--date", "2027-01-05")

    assert result.exit_code == 1
    assert "title must not be empty" in result.output


def test_new_with_a_bad_date_is_a_usage_error(project: Path) -> None:
    result = run(project, "new", "Title", "--date", "next tuesday")

    assert result.exit_code == 2
    assert "--date" in result.output


# help and version


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        with click.Context(command) as ctx:
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(cli))


def test_the_group_has_the_editor_commands() -> None:
    names = {path for path, _ in COMMANDS}
    assert {("check",), ("render",), ("new",)} <= names


COMMAND_IDS = [" ".join(path) or "newsletter" for path, _ in COMMANDS]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_every_command_has_help(path: tuple[str, ...], command: click.Command) -> None:
    assert (command.help or "").strip(), f"`newsletter {' '.join(path)}` has no help text"

    result = cli_invoker()(*path, "--help", expect=None)

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    opening = " ".join((command.help or "").split()[:5])
    assert opening in " ".join(result.output.split()), "the help text is shown"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=COMMAND_IDS)
def test_every_option_has_help(path: tuple[str, ...], command: click.Command) -> None:
    undocumented = [
        option.name
        for option in command.params
        if isinstance(option, click.Option) and not option.hidden and not (option.help or "").strip()
    ]
    assert undocumented == [], f"`newsletter {' '.join(path)}` options without help: {undocumented}"


def test_short_help_option(project: Path) -> None:
    result = cli_invoker()("check", "-h", expect=None)

    assert result.exit_code == 0
    assert "--strict" in result.output


def test_version() -> None:
    result = cli_invoker()("--version", expect=None)

    assert result.exit_code == 0
    assert __version__ in result.output


# Bad settings


def test_bad_settings_file_is_a_one_line_error_without_traceback(project: Path) -> None:
    settings = project / "settings.toml"
    settings.write_text(
        settings.read_text(encoding="utf-8").replace("[newsletter]", "[newsletter"), encoding="utf-8"
    )

    result = run(project, "check")

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert lines(result) == [lines(result)[0]], f"expected one line, got:\n{result.output}"
    line = 1 + settings.read_text(encoding="utf-8").splitlines().index("[newsletter")
    assert lines(result)[0].startswith(f"{settings}:{line}:12: error: TOML syntax:")


def test_unknown_settings_key_is_a_clean_error_naming_it(project: Path) -> None:
    settings = project / "settings.toml"
    settings.write_text(
        settings.read_text(encoding="utf-8").replace("from_email =", "from_emial ="), encoding="utf-8"
    )

    result = run(project, "check")

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert (
        "sender.from_emial: unknown key 'from_emial' (did you mean 'from_email'?)"
        in result.output.replace("\n", "")
    )


def test_missing_settings_file_is_a_clean_error(tmp_path: Path) -> None:
    result = cli_invoker(tmp_path / "nope.toml")("check", expect=None)

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "settings file not found" in result.output.replace("\n", "")


def test_error_messages_are_printed_verbatim(tmp_path: Path) -> None:
    """Paths and keys with square brackets must not be taken for console markup."""
    missing = tmp_path / "[old]" / "settings.toml"

    result = cli_invoker(missing)("check", expect=None)

    assert result.exit_code == 1
    assert str(missing) in result.output.replace("\n", "")


def test_settings_key_that_looks_like_markup_does_not_crash(project: Path) -> None:
    settings = project / "settings.toml"
    settings.write_text(
        settings.read_text(encoding="utf-8").replace("[sendgrid]\n", '[sendgrid]\n"[/x]" = 1\n'),
        encoding="utf-8",
    )

    result = run(project, "check")

    assert result.exit_code == 1, repr(result.exception)
    assert "unknown key '[/x]'" in result.output
