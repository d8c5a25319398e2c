"""Issue files: the samples load, and every malformed file reports all its problems, each located.

Each file in ``tests/data/malformed/`` declares the errors it must produce in leading comments::

    # expect: LINE:COL FIELD MESSAGE-SUBSTRING

(``-`` for FIELD when the problem concerns the file rather than one field). Add a case by adding a file.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.content.issue import IssueFile, issue_paths, load_issue, parse_issue
from pipeline.errors import ContentError, Problem, Severity
from tests.paths import REPO

SAMPLES = sorted((REPO / "issues").glob("*.yaml"))
MALFORMED = sorted((Path(__file__).parent / "data" / "malformed").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+) (\S+) (.+)$", re.MULTILINE)


@dataclass(frozen=True, order=True)
class Expected:
    line: int
    column: int
    field: str
    message: str

    def matches(self, problem: Problem) -> bool:
        return (problem.line, problem.column, problem.field or "-") == (
            self.line,
            self.column,
            self.field,
        ) and self.message in problem.message


def expectations(path: Path) -> list[Expected]:
    found = [
        Expected(int(line), int(column), field, message.strip())
        for line, column, field, message in EXPECT.findall(path.read_text(encoding="utf-8"))
    ]
    assert found, f"{path.name} declares no '# expect:' lines"
    return sorted(found)


def test_there_are_samples_and_malformed_cases() -> None:
    assert len(SAMPLES) >= 5
    assert len(MALFORMED) >= 15


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_issue_loads_without_problems(path: Path) -> None:
    issue_file = load_issue(path)

    assert isinstance(issue_file, IssueFile)
    assert issue_file.slug == path.stem
    assert str(issue_file.issue.date) == path.stem[:10]
    assert issue_file.issue.next_steps
    _, problems = parse_issue(path.read_text(encoding="utf-8"), path)
    assert problems == []


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.stem)
def test_malformed_issue_reports_every_declared_problem(path: Path) -> None:
    """All errors come at once, each with line, column and field (file-name warnings are not counted)."""
    expected = expectations(path)

    with pytest.raises(ContentError) as caught:
        load_issue(path)

    errors = [p for p in caught.value.problems if p.severity is Severity.ERROR]
    shown = "\n".join(str(p) for p in errors)
    assert len(errors) == len(expected), f"expected {len(expected)} problems, got:\n{shown}"
    actual = sorted(errors, key=lambda p: (p.line or 0, p.column or 0, p.field))
    for want, got in zip(expected, actual, strict=True):
        assert want.matches(got), f"expected {want}, got {got}\nall problems:\n{shown}"
    assert all(p.path == str(path) for p in errors)


def test_content_error_message_lists_every_problem_as_file_line_col_field(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-01-typos.yaml"
    shutil.copy(Path(__file__).parent / "data" / "malformed" / "unknown-keys.yaml", path)

    with pytest.raises(ContentError) as caught:
        load_issue(path)

    lines = str(caught.value).splitlines()
    assert lines == [str(p) for p in caught.value.problems]
    assert f"{path}:6:1: error: subjet: unknown key 'subjet' (did you mean 'subject'?)" in lines
    assert f"{path}:11:3: error: strategy.boddy: unknown key 'boddy' (did you mean 'body'?)" in lines


def test_zero_byte_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-01-empty.yaml"
    path.write_bytes(b"")

    with pytest.raises(ContentError) as caught:
        load_issue(path)

    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (1, 1)
    assert "must be a mapping" in problem.message


def test_file_that_is_not_utf8_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-01-latin1.yaml"
    path.write_bytes("subject: Caf\xe9\n".encode("latin-1"))

    with pytest.raises(ContentError) as caught:
        load_issue(path)

    [problem] = caught.value.problems
    assert problem.path == str(path)
    assert "cannot read" in problem.message


def test_missing_file_is_a_content_error(tmp_path: Path) -> None:
    with pytest.raises(ContentError, match="cannot read"):
        load_issue(tmp_path / "2026-12-01-nowhere.yaml")


def test_file_name_not_matching_convention_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "Name It To Tame It.yaml"
    shutil.copy(SAMPLES[0], path)

    issue, problems = parse_issue(path.read_text(encoding="utf-8"), path)

    assert issue is not None
    [warning] = problems
    assert warning.severity is Severity.WARNING
    assert (warning.line, warning.column) == (1, 1)
    assert "YYYY-MM-DD-slug.yaml" in warning.message
    assert str(warning).startswith(f"{path}:1:1: warning: ")
    assert load_issue(path).issue == issue, "warnings do not stop loading"


def test_file_name_date_differing_from_date_field_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-02-name-it-to-tame-it.yaml"  # the issue says date: 2026-12-01
    shutil.copy(SAMPLES[0], path)

    issue, problems = parse_issue(path.read_text(encoding="utf-8"), path)

    assert issue is not None
    [warning] = problems
    assert warning.severity is Severity.WARNING
    assert warning.field == "date"
    assert "2026-12-02" in warning.message
    assert "2026-12-01" in warning.message


def test_upper_case_slug_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-01-Name-It.yaml"
    shutil.copy(SAMPLES[0], path)

    _, problems = parse_issue(path.read_text(encoding="utf-8"), path)

    assert [p.severity for p in problems] == [Severity.WARNING]


def test_text_fields_are_stripped_and_dates_parsed(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-01-minimal.yaml"
    path.write_text(
        'subject: "  Guilt isn\'t a verdict  "\n'
        "preheader: More than half of working moms feel it.\n"
        "date: 2026-12-01\n"
        "strategy: {title: Name it, body: Put it into words.}\n"
        "story: {title: A note, body: I wrote it down.}\n"
        "next_steps: [{text: Write one thought down.}]\n",
        encoding="utf-8",
    )

    issue = load_issue(path).issue

    assert issue.subject == "Guilt isn't a verdict"
    assert str(issue.date) == "2026-12-01"
    assert issue.hero is None
    assert issue.resources == []


def test_issue_paths_expands_folders_sorted_and_defaults_to_issues_dir(tmp_path: Path) -> None:
    folder = tmp_path / "issues"
    folder.mkdir()
    for name in ("2026-12-08-b.yaml", "2026-12-01-a.yaml", "notes.txt"):
        (folder / name).write_text("x", encoding="utf-8")
    single = tmp_path / "other.yaml"

    assert issue_paths([], folder) == [folder / "2026-12-01-a.yaml", folder / "2026-12-08-b.yaml"]
    assert issue_paths([folder, single], folder) == [
        folder / "2026-12-01-a.yaml",
        folder / "2026-12-08-b.yaml",
        single,
    ]
