"""The issue file: its schema, and loading that reports every problem with file, line, column and field.

An editor writes one YAML file per issue (``issues/YYYY-MM-DD-slug.yaml``). Text fields are Markdown;
they are rendered later, by ``pipeline.render.renderer``. Unknown keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.content.yamlsource import dotted, load_located
from pipeline.errors import ContentError, Problem, Severity
from pipeline.validation import field_errors

FILE_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)$")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got '{value}'")
    return value


Text = Annotated[str, Field(min_length=1)]
"""Required text (Markdown where the field says so); surrounding whitespace is stripped."""


def _one_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("must be a single line (it becomes an email header or the inbox preview)")
    return value


Line = Annotated[str, Field(min_length=1), AfterValidator(_one_line)]
Url = Annotated[str, AfterValidator(_http_url)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=False)


class Strategy(Model):
    title: Text
    body: Text
    steps: list[Text] = []


class Story(Model):
    title: Text
    body: Text
    attribution: Text | None = None


class NextStep(Model):
    text: Text
    link: Url | None = None
    link_text: Annotated[str, Field(min_length=1, max_length=40)] | None = None

    @model_validator(mode="after")
    def _label_needs_link(self) -> NextStep:
        if self.link_text and not self.link:
            raise ValueError("link_text is set but there is no link for the button")
        return self


class Resource(Model):
    title: Text
    by: Text
    kind: Literal["book", "podcast", "article", "community", "service", "video"]
    url: Url


class Hero(Model):
    src: Url
    alt: Annotated[str, Field(min_length=1, description="Describe the image; it is read aloud.")]
    link: Url | None = None


class Issue(Model):
    """One newsletter issue, as the editor wrote it."""

    subject: Line
    preheader: Line
    date: dt.date
    intro: Text | None = None
    hero: Hero | None = None
    strategy: Strategy
    story: Story
    next_steps: list[NextStep] = Field(min_length=1)
    resources: list[Resource] = []
    segments: list[Text] | None = None
    template: Text | None = None


@dataclass(frozen=True, slots=True)
class IssueFile:
    """A validated issue and where it came from; ``slug`` names it in URLs, campaigns and the archive."""

    path: Path
    issue: Issue

    @property
    def slug(self) -> str:
        return self.path.stem


def _location_problems(path: Path, issue_date: dt.date | None) -> list[Problem]:
    """Warnings about the file name, which orders issues and names them in URLs."""
    match = FILE_NAME.match(path.stem)
    if not match:
        return [
            Problem(
                str(path),
                "file name should be YYYY-MM-DD-slug.yaml (lower-case slug)",
                1,
                1,
                severity=Severity.WARNING,
            )
        ]
    if issue_date is not None and match["date"] != issue_date.isoformat():
        return [
            Problem(
                str(path),
                f"file name says {match['date']} but date is {issue_date}",
                1,
                1,
                "date",
                Severity.WARNING,
            )
        ]
    return []


def parse_issue(text: str, path: Path) -> tuple[Issue | None, list[Problem]]:
    """Validate ``text`` as an issue; return it (or None) with every problem found."""
    source = str(path)
    located, problems = load_located(text, source)
    if located is None:
        return None, problems
    if not isinstance(located.data, dict):
        problems.append(Problem(source, "an issue file must be a mapping of keys (subject:, date:, …)", 1, 1))
        return None, problems
    try:
        issue = Issue.model_validate(located.data)
    except ValidationError as exc:
        for error in field_errors(exc, Issue):
            position = located.position(error.path, prefer_key=error.at_key)
            problems.append(
                Problem(source, error.message, position.line, position.column, dotted(error.path))
            )
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        return None, problems
    return issue, problems + _location_problems(path, issue.date)


def load_issue(path: str | Path) -> IssueFile:
    """Load one issue file; raise ``ContentError`` with every error in it (warnings don't stop it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentError([Problem(str(path), f"cannot read: {exc}")]) from None
    issue, problems = parse_issue(text, path)
    if issue is None or any(p.severity is Severity.ERROR for p in problems):
        raise ContentError(problems)
    return IssueFile(path, issue)


def issue_paths(paths: Iterable[str | Path], issues_dir: Path) -> list[Path]:
    """Expand folders to their ``*.yaml`` files, sorted; no paths means every file in ``issues_dir``."""
    expanded: list[Path] = []
    for entry in map(Path, list(paths) or [issues_dir]):
        expanded.extend(sorted(entry.glob("*.yaml")) if entry.is_dir() else [entry])
    return expanded
