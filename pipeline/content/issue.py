"""The issue file: its schema, and loading that reports every problem with file, line, column and field.

An editor writes one YAML file per issue (``issues/YYYY-MM-DD-slug.yaml``). Text fields are Markdown;
they are rendered later, by ``pipeline.render.renderer``. Unknown keys are errors, so a typo never passes silently.

A welcome step (``issues/welcome/NN-slug.yaml``) is an issue file too, with the same fields, but no
``date``: it goes out ``after`` a wait (``0d``, ``3d``, ``12h``) from the moment each reader joined the
welcome series. Where a file lies decides which it is, so a ``date`` in a step or an ``after`` in an
issue is an error at its line rather than a second meaning.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from pipeline.content.yamlsource import LocatedData, dotted, load_located
from pipeline.errors import ContentError, Problem, Severity
from pipeline.validation import LINE_BREAKS, char_name, field_errors, invisible_kind, invisible_problem

MAX_BYTES = 1_000_000
"""Largest issue file read: a weekly issue is a few KB, and parsing 20 MB of YAML takes minutes."""
FILE_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)$")
WELCOME_DIR = "welcome"
"""The folder, inside the issues folder, of the welcome series' steps."""
WELCOME_NAME = re.compile(r"^(?P<step>\d{2})-(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)$")
AFTER = re.compile(r"^(?P<amount>\d{1,4})(?P<unit>[dh])$")
AFTER_MAX = dt.timedelta(days=365)
"""The longest wait a welcome step may have: a series that runs for more than a year is no welcome."""
AFTER_HINT = "write the wait as whole days or hours: 0d (at once), 3d, 12h"


def _http_url(value: str) -> str:
    if any(char.isspace() or invisible_kind(char) for char in value):
        raise ValueError("must not contain spaces or invisible characters (write a space as %20)")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got '{value}'")
    return value


def _text(value: str) -> str:
    if problem := invisible_problem(value, allowed="\n\t"):
        raise ValueError(problem)
    return value


def _one_line(value: str) -> str:
    for index, char in enumerate(value):
        if char in LINE_BREAKS:
            raise ValueError(f"must be a single line: {char_name(char)} at character {index + 1} breaks it")
    return _text(value)


Text = Annotated[str, Field(min_length=1), AfterValidator(_text)]
"""Required text (Markdown where the field says so); surrounding whitespace is stripped. Line breaks and
tabs are allowed, other control characters are not."""
Line = Annotated[str, Field(min_length=1), AfterValidator(_one_line)]
"""Text that must stay on one line: it becomes a header, the inbox preview, a heading or a label."""
Url = Annotated[str, AfterValidator(_http_url)]


def _after(value: object) -> dt.timedelta:
    """``3d`` or ``12h`` as a wait; YAML numbers and other spellings are refused (``3`` says no unit)."""
    match = AFTER.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"'{value}' is not a wait; {AFTER_HINT}")
    amount = int(match["amount"])
    wait = dt.timedelta(days=amount) if match["unit"] == "d" else dt.timedelta(hours=amount)
    if wait > AFTER_MAX:
        raise ValueError(f"'{value}' is longer than {AFTER_MAX.days}d; a welcome series is its first weeks")
    return wait


After = Annotated[dt.timedelta, BeforeValidator(_after)]
"""How long after a reader joined the welcome series a step goes out."""


def after_text(wait: dt.timedelta) -> str:
    """A wait as the editor writes it: ``3d``, ``12h``."""
    hours = int(wait.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=False)


class Strategy(Model):
    title: Line
    body: Text
    steps: list[Text] = []


class Story(Model):
    title: Line
    body: Text
    attribution: Line | None = None


class NextStep(Model):
    text: Text
    link: Url | None = None
    link_text: Annotated[Line, Field(max_length=40)] | None = None

    @model_validator(mode="after")
    def _label_needs_link(self) -> NextStep:
        if self.link_text and not self.link:
            raise ValueError("link_text is set but there is no link for the button")
        return self


class Resource(Model):
    title: Line
    by: Line
    kind: Literal["book", "podcast", "article", "community", "service", "video"]
    url: Url


class Hero(Model):
    src: Url
    alt: Annotated[Line, Field(description="Describe the image; it is read aloud.")]
    link: Url | None = None


class Issue(Model):
    """One newsletter issue, or one step of the welcome series, as the editor wrote it.

    An issue has a ``date``; a welcome step has an ``after`` instead (``parse_issue`` holds each file
    to the fields of its kind, by where it lies)."""

    subject: Line
    subject_variants: Annotated[
        list[Line], Field(max_length=2, description="Other subjects to test against `subject`.")
    ] = []
    """Other subject lines to test against ``subject`` (``pipeline.dispatch.subjects``): each goes to
    an equal sample, and the one that gets more readers clicking goes to everyone else."""
    preheader: Line
    date: dt.date | None = None
    after: After | None = None
    intro: Text | None = None
    hero: Hero | None = None
    strategy: Strategy
    story: Story
    next_steps: list[NextStep] = Field(min_length=1)
    resources: list[Resource] = []
    segments: list[Line] | None = None
    template: Line | None = None


@dataclass(frozen=True, slots=True)
class IssueFile:
    """A validated issue and where it came from; ``slug`` names it in URLs, campaigns and the archive."""

    path: Path
    issue: Issue

    @property
    def slug(self) -> str:
        """The file name without ``.yaml``; a welcome step's starts with ``welcome/``, so it can never
        be an issue's."""
        return f"{WELCOME_DIR}/{self.path.stem}" if self.welcome else self.path.stem

    @property
    def welcome(self) -> bool:
        """A step of the welcome series: sent ``after`` a wait from each reader's joining."""
        return is_welcome_step(self.path)


def is_welcome_step(path: Path) -> bool:
    """Whether the file at ``path`` is a welcome step (it lies in a ``welcome/`` folder)."""
    return path.parent.name == WELCOME_DIR


def _location_problems(path: Path, issue_date: dt.date | None) -> list[Problem]:
    """Warnings about the file name, which orders issues and names them in URLs."""
    if is_welcome_step(path):
        if WELCOME_NAME.match(path.stem):
            return []
        message = "file name should be NN-slug.yaml (two digits that order the steps, a lower-case slug)"
        return [Problem(str(path), message, 1, 1, severity=Severity.WARNING)]
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


def _holds(text: str, data: object) -> str:
    """What a file that is not a mapping holds instead, so "empty" is said only of an empty file."""
    if isinstance(data, list):
        return "this one holds a list"
    if data is not None and any(char.isprintable() and not char.isspace() for char in str(data)):
        return f"this one holds only the value '{str(data)[:40]}'"
    if not text:
        return "this one is empty"
    unseen = Counter(char for char in text if not (char.isprintable() or char in " \t\r\n"))
    if unseen:
        listed = ", ".join(
            f"{char_name(char)} {count} time{'s' * (count > 1)}" for char, count in unseen.most_common(3)
        )
        return f"this one holds no keys, only invisible characters: {listed}"
    return "this one holds no keys, only comments and blank lines"


MISPLACED: dict[bool, dict[str, str]] = {
    False: {
        "after": f"only welcome steps ({WELCOME_DIR}/NN-slug.yaml) go out `after` a wait; an issue goes out "
        "on its date",
    },
    True: {
        "date": "a welcome step has no date: it goes out `after` a wait from each reader's joining",
        "segments": "a welcome step goes to everyone in the welcome series; remove segments",
        "subject_variants": "a welcome step goes to each reader alone, so no subject test can compare "
        "it; remove subject_variants",
    },
}
"""Keys of ``Issue`` that one kind of file must not have (False: an issue; True: a welcome step)."""


def _keys_model(welcome: bool) -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in Issue.model_fields.items()
        if name not in MISPLACED[welcome]
    }
    return create_model("WelcomeStep" if welcome else "WeeklyIssue", __base__=Model, **fields)


_KEYS = {welcome: _keys_model(welcome) for welcome in MISPLACED}
"""``Issue`` as each kind of file sees it: the keys an unknown key's message lists as allowed."""


def _kind_problems(located: LocatedData, source: str, welcome: bool) -> list[Problem]:
    """The keys that belong to the other kind of file (``MISPLACED``), and the one this kind requires:
    an issue's ``date``, a welcome step's ``after``."""
    problems = []
    for key, message in MISPLACED[welcome].items():
        if key in located.data:
            at = located.position((key,), prefer_key=True)
            problems.append(Problem(source, message, at.line, at.column, key))
    required = "after" if welcome else "date"
    if required not in located.data:
        hint = f" ({AFTER_HINT})" if welcome else ""
        problems.append(Problem(source, f"is required but missing{hint}", 1, 1, required))
    return problems


def parse_issue(text: str, path: Path) -> tuple[Issue | None, list[Problem]]:
    """Validate ``text`` as an issue (or a welcome step, by its folder); return it (or None) with
    every problem found."""
    source = str(path)
    located, problems = load_located(text, source)
    if located is None:
        return None, problems
    if not isinstance(located.data, dict):
        first = "after" if is_welcome_step(path) else "date"
        message = (
            f"an issue file must be a mapping of keys (subject:, {first}:, …); {_holds(text, located.data)}"
        )
        problems.append(Problem(source, message, 1, 1))
        return None, problems
    welcome = is_welcome_step(path)
    misfits = _kind_problems(located, source, welcome)
    issue = None
    try:
        issue = Issue.model_validate(located.data)
    except ValidationError as exc:
        for error in field_errors(exc, _KEYS[welcome]):
            position = located.position(error.path, prefer_key=error.at_key)
            misfits.append(Problem(source, error.message, position.line, position.column, dotted(error.path)))
    if issue is None or misfits:
        problems = sorted(problems + misfits, key=lambda p: (p.line or 0, p.column or 0))
        return None, problems
    return issue, problems + _location_problems(path, issue.date)


def read_issue_text(path: Path) -> tuple[str | None, list[Problem]]:
    """The file's text, or None and why not; a file over ``MAX_BYTES`` is refused before it is read."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        return None, [Problem(str(path), f"cannot read: {exc}")]
    if len(data) > MAX_BYTES:
        message = f"larger than {MAX_BYTES // 1_000_000} MB; an issue file is a few KB, so it is not read"
        return None, [Problem(str(path), message, 1, 1)]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [Problem(str(path), f"cannot read: {exc}")]


def load_issue(path: str | Path) -> IssueFile:
    """Load one issue file; raise ``ContentError`` with every error in it (warnings don't stop it)."""
    path = Path(path)
    text, unread = read_issue_text(path)
    if text is None:
        raise ContentError(unread)
    issue, problems = parse_issue(text, path)
    if issue is None or any(p.severity is Severity.ERROR for p in problems):
        raise ContentError(problems)
    return IssueFile(path, issue)


def issue_paths(paths: Iterable[str | Path], issues_dir: Path) -> list[Path]:
    """Expand folders to their ``*.yaml`` files, then those of their ``welcome/`` folder, each sorted;
    no paths means every file in ``issues_dir`` (and its welcome series)."""
    expanded: list[Path] = []
    for entry in map(Path, list(paths) or [issues_dir]):
        if not entry.is_dir():
            expanded.append(entry)
            continue
        expanded.extend(sorted(entry.glob("*.yaml")))
        if entry.name != WELCOME_DIR:
            expanded.extend(sorted((entry / WELCOME_DIR).glob("*.yaml")))
    return expanded
