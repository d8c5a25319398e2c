"""Pre-send checks on the rendered issue: each rule fires with file, line and field, and samples are clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import Problem, Severity
from pipeline.render.lint import HTML_MAX, HTML_WARN, check_paths
from pipeline.settings import Settings
from tests.fixtures.project import own_template

FIRST = "2026-12-01-name-it-to-tame-it.yaml"
SUBJECT_LINE = 5  # line of `subject:` in the first sample
PREHEADER_LINE = 6
STRATEGY_TITLE = 'title: "Name it to tame it"'
BODY_END = "    care.\n"  # last line of the first sample's strategy.body


def edit_issue(project: Path, old: str, new: str) -> Path:
    path = project / "issues" / FIRST
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{FIRST} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def edit_template(project: Path, name: str, old: str, new: str) -> None:
    path = own_template(project, name)
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{name} no longer contains {old!r}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    return 1 + next(
        i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if needle in line
    )


def problems(settings: Settings, path: Path) -> list[Problem]:
    report = check_paths([path], settings)
    assert report.files == 1
    return report.problems


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def with_subject(project: Path, subject: str) -> Path:
    return edit_issue(
        project, 'subject: "Guilt isn\'t a verdict: start by naming it"', f'subject: "{subject}"'
    )


def test_sample_issues_are_clean(settings: Settings, project: Path) -> None:
    paths = sorted((project / "issues").glob("*.yaml"))
    report = check_paths(paths, settings)

    assert len(paths) >= 5
    assert report.files == len(paths)
    assert report.problems == [], "\n".join(map(str, report.problems))
    assert not report.failed(strict=True)


@pytest.mark.parametrize("length", [71, 90])
def test_subject_over_70_characters_is_an_error(settings: Settings, project: Path, length: int) -> None:
    path = with_subject(project, "S" * length)

    problem = only(problems(settings, path))

    assert (problem.path, problem.line, problem.field) == (str(path), SUBJECT_LINE, "subject")
    assert problem.severity is Severity.ERROR
    assert f"{length} characters" in problem.message
    assert str(problem).startswith(f"{path}:{SUBJECT_LINE}:10: error: subject: ")


@pytest.mark.parametrize("length", [61, 65, 70])
def test_subject_of_61_to_70_characters_is_a_warning(settings: Settings, project: Path, length: int) -> None:
    path = with_subject(project, "S" * length)

    report = check_paths([path], settings)

    problem = only(report.problems)
    assert (problem.line, problem.field, problem.severity) == (SUBJECT_LINE, "subject", Severity.WARNING)
    assert not report.failed()
    assert report.failed(strict=True)


def test_subject_of_60_characters_is_fine(settings: Settings, project: Path) -> None:
    assert problems(settings, with_subject(project, "S" * 60)) == []


@pytest.mark.parametrize(("length", "bad"), [(39, True), (40, False), (140, False), (141, True)])
def test_preheader_length_bounds(settings: Settings, project: Path, length: int, bad: bool) -> None:
    path = project / "issues" / FIRST
    old = next(
        line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("preheader:")
    )
    edit_issue(project, old, f'preheader: "{"p" * length}"')

    found = problems(settings, path)

    if bad:
        problem = only(found)
        assert (problem.line, problem.field, problem.severity) == (
            PREHEADER_LINE,
            "preheader",
            Severity.ERROR,
        )
        assert f"{length} characters" in problem.message
    else:
        assert found == []


def test_leftover_todo_is_an_error_at_its_field(settings: Settings, project: Path) -> None:
    path = edit_issue(project, STRATEGY_TITLE, 'title: "TODO: a better title"')

    problem = only(problems(settings, path))

    assert (problem.line, problem.field) == (line_of(path, "TODO: a better title"), "strategy.title")
    assert "TODO" in problem.message


def test_todo_in_a_list_item_names_its_index(settings: Settings, project: Path) -> None:
    path = edit_issue(project, "Say it out loud", "TODO say it out loud")

    problem = only(problems(settings, path))

    assert problem.field == "strategy.steps.1"
    assert problem.line == line_of(path, "TODO say it out loud")


def test_relative_link_in_markdown_body_is_an_error(settings: Settings, project: Path) -> None:
    path = edit_issue(project, BODY_END, "    care. Read [our method](/method) first.\n")

    problem = only(problems(settings, path))

    assert problem.field == "strategy.body"
    assert problem.line == line_of(path, "  body: |")
    assert "'/method'" in problem.message
    assert problem.severity is Severity.ERROR


def test_javascript_link_in_markdown_body_is_an_error(settings: Settings, project: Path) -> None:
    """Markdown refuses to make it a link, so readers would see the raw `[…](javascript:…)`: flag it."""
    path = edit_issue(project, BODY_END, "    care. [Click here](javascript:alert(1)) for more.\n")

    problem = only(problems(settings, path))

    assert problem.field == "strategy.body"
    assert "javascript:alert(1)" in problem.message


def test_link_in_next_step_text_is_located(settings: Settings, project: Path) -> None:
    path = edit_issue(
        project,
        'text: "Write down **one** guilty',
        'text: "See [the worksheet](worksheet.pdf). Write down **one** guilty',
    )

    problem = only(problems(settings, path))

    assert problem.field == "next_steps.0.text"
    assert problem.line == line_of(path, "worksheet.pdf")


def _huge_body(paragraphs: int) -> str:
    sentence = "Guilt loves to stay vague, and naming it gives you a little distance. " * 6
    return BODY_END + "".join(f"\n    {sentence}\n" for _ in range(paragraphs))


def test_html_over_102_kb_is_an_error(settings: Settings, project: Path) -> None:
    path = edit_issue(project, BODY_END, _huge_body(200))

    problem = only(problems(settings, path))

    assert problem.severity is Severity.ERROR
    assert (problem.path, problem.line) == (str(path), 1)
    assert "102 KB" in problem.message


def test_html_over_90_kb_is_a_warning(settings: Settings, project: Path) -> None:
    path = edit_issue(project, BODY_END, _huge_body(155))  # about 95 KB of HTML

    report = check_paths([path], settings)

    problem = only(report.problems)
    assert problem.severity is Severity.WARNING
    assert "102 KB" in problem.message
    size = float(problem.message.split(" KB")[0].rsplit(" ", 1)[1]) * 1024
    assert HTML_WARN < size < HTML_MAX
    assert not report.failed()


def test_html_under_90_kb_has_no_size_warning(settings: Settings, project: Path) -> None:
    path = edit_issue(project, BODY_END, _huge_body(120))  # about 80 KB of HTML

    assert problems(settings, path) == []


def test_footer_without_unsubscribe_link_is_an_error_in_both_parts(settings: Settings, project: Path) -> None:
    edit_template(
        project, "partials/footer.mjml.j2", "{{ recipient.unsubscribe_url }}", "https://example.org/"
    )
    edit_template(project, "partials/footer.txt.j2", "Unsubscribe:\n{{ recipient.unsubscribe_url }}\n", "")

    found = problems(settings, project / "issues" / FIRST)

    messages = sorted(p.message for p in found)
    assert messages == [
        "the HTML part has no unsubscribe link (check the template footer)",
        "the text part has no unsubscribe link (check the template footer)",
    ]
    assert all(p.severity is Severity.ERROR and p.line == 1 for p in found)


def test_footer_without_postal_address_is_an_error(settings: Settings, project: Path) -> None:
    edit_template(project, "partials/footer.mjml.j2", "{{ newsletter.postal_address }}", "")

    problem = only(problems(settings, project / "issues" / FIRST))

    assert problem.message == "the HTML part has no postal address (check the template footer)"


def test_empty_text_part_is_an_error(settings: Settings, project: Path) -> None:
    own_template(project, "weekly.txt.j2").write_text("{# nothing #}\n", encoding="utf-8")

    found = problems(settings, project / "issues" / FIRST)

    assert "the plain-text part is empty" in [p.message for p in found]
    assert all(p.severity is Severity.ERROR for p in found)


def test_image_without_alt_in_template_is_an_error(settings: Settings, project: Path) -> None:
    edit_template(
        project,
        "partials/masthead.mjml.j2",
        "<mj-column>\n    <mj-text align",
        '<mj-column>\n    <mj-image src="https://news.example.org/logo.png" alt="" />\n    <mj-text align',
    )

    problem = only(problems(settings, project / "issues" / FIRST))

    assert "has no alt text" in problem.message
    assert "logo.png" in problem.message


def test_schema_errors_stop_before_lint_and_other_files_are_still_checked(
    settings: Settings, project: Path
) -> None:
    broken = edit_issue(project, STRATEGY_TITLE, "titel: x")

    paths = sorted((project / "issues").glob("*.yaml"))
    report = check_paths(paths, settings)

    assert report.files == len(paths)
    assert {p.path for p in report.problems} == {str(broken)}
    assert {p.field for p in report.problems} == {"strategy.titel", "strategy.title"}
    assert report.errors == 2 and report.warnings == 0
    assert report.failed()


def test_problems_in_several_files_are_all_reported(settings: Settings, project: Path) -> None:
    first = with_subject(project, "S" * 80)
    second = project / "issues" / "2026-12-08-realistic-expectations.yaml"
    second.write_text(
        second.read_text(encoding="utf-8").replace("date: 2026-12-08", "date: 2026-12-09"), encoding="utf-8"
    )

    report = check_paths([first, second], settings)

    assert [(p.path, p.severity) for p in report.problems] == [
        (str(first), Severity.ERROR),
        (str(second), Severity.WARNING),
    ]
