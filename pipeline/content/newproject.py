"""``newsletter init``: a complete newsletter project in an empty folder, from the files in ``starter/``.

Those files are the project as written, with three conventions: a name part ``dot-X`` is written ``.X``
(so the starter's ``.gitignore`` is neither read by git here nor missed by the packaging globs), a
``.in`` file is a ``string.Template`` filled with the project's values and written without the suffix,
and ``settings.toml.in`` takes them TOML-quoted. The repository's own ``settings.toml`` is that
template filled with The Juggle's values (a test holds it), so the settings are documented once.
"""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from zoneinfo import ZoneInfo

from pipeline import __version__
from pipeline.content.issue import NextStep, Resource, Story, Strategy
from pipeline.content.scaffold import Draft, issue_name, write_issue
from pipeline.errors import ContentError, Problem, SettingsError
from pipeline.settings import Settings

STARTER = Path(__file__).resolve().parent / "starter"
"""The starter project's files (package data)."""
DEFAULT_SEGMENTS = STARTER / "subscribers" / "segments.toml"
"""The segments a project without a segments file has, and the file `init` gives it to edit."""
SETTINGS_TEMPLATE = STARTER / "settings.toml.in"
IGNORED = frozenset({".git"})
"""What a folder may hold and still count as empty: a clone of an empty repository holds ``.git``."""


@dataclass(frozen=True, slots=True)
class NewProject:
    """What a new newsletter's settings.toml says about it; every other key keeps its documented default."""

    name: str
    base_url: str
    from_email: str
    postal_address: str
    timezone: str = "UTC"
    description: str = "a weekly newsletter"
    from_name: str | None = None
    """Defaults to ``name``."""
    reply_to: str | None = None
    unsubscribe_mailto: str | None = None


REQUIRED = ("name", "base_url", "from_email", "postal_address")
"""The values settings.toml cannot do without (``NewProject``'s fields without a default)."""
_FIELDS = {
    ("newsletter", "name"): "name",
    ("newsletter", "base_url"): "base_url",
    ("newsletter", "postal_address"): "postal_address",
    ("newsletter", "timezone"): "timezone",
    ("newsletter", "description"): "description",
    ("sender", "from_email"): "from_email",
    ("sender", "from_name"): "from_name",
    ("sender", "reply_to"): "reply_to",
    ("sender", "unsubscribe_mailto"): "unsubscribe_mailto",
}
"""Which key of settings.toml each ``NewProject`` value is written to."""


def _toml(value: str) -> str:
    """``value`` as a TOML basic string: JSON's escapes are TOML's, and TOML also refuses a raw DEL."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _optional(key: str, value: str | None, example: str) -> str:
    """The line setting ``key``, or the line commented out with an example when there is no value."""
    return f"{key} = {_toml(value)}" if value is not None else f"# {key} = {_toml(example)}"


def settings_text(project: NewProject) -> str:
    """settings.toml of ``project``: the starter's template, every key with its comment."""
    domain = project.from_email.rpartition("@")[2] or "example.org"
    return Template(SETTINGS_TEMPLATE.read_text(encoding="utf-8")).substitute(
        name=_toml(project.name),
        description=_toml(project.description),
        base_url=_toml(project.base_url),
        postal_address=_toml(project.postal_address),
        timezone=_toml(project.timezone),
        from_email=_toml(project.from_email),
        from_name=_toml(project.from_name or project.name),
        reply_to=_optional("reply_to", project.reply_to, f"editors@{domain}"),
        unsubscribe_mailto=_optional(
            "unsubscribe_mailto", project.unsubscribe_mailto, f"unsubscribe@{domain}"
        ),
        mail_domain=domain,
    )


def _validated(project: NewProject, root: Path) -> tuple[Settings | None, list[Problem]]:
    """The settings ``project`` makes, or every problem with them, each naming the value to change."""
    from pydantic import ValidationError

    from pipeline.validation import field_errors

    try:
        return Settings.model_validate({**tomllib.loads(settings_text(project)), "root": root}), []
    except ValidationError as exc:
        problems = []
        for error in field_errors(exc, Settings):
            key = tuple(map(str, error.path[:2]))
            if key not in _FIELDS:  # the template itself is wrong: a bug, not the user's input
                raise
            problems.append(Problem("settings.toml", error.message, field=_FIELDS[key]))
        return None, problems


def problems(project: NewProject) -> list[Problem]:
    """What is wrong with ``project``'s values, each problem's ``field`` naming the value; none: fine."""
    return _validated(project, Path("."))[1]


FIRST_ISSUE = Draft(
    subject="Your first issue, section by section",
    preheader="A sample to read and then replace: what each part of an issue is for, and how it shows in the inbox.",
    intro=(
        "This is the sample issue that `newsletter init` wrote. Each part of this email is one section\n"
        "of its YAML file, and each section there has a comment saying what goes in it. This opener is\n"
        "the `intro`: a few friendly lines after the greeting."
    ),
    strategy=Strategy(
        title="Start with one idea",
        body=(
            "This part is the `strategy`, the heart of every issue: one idea a reader can use this week,\n"
            "why it helps, and what it looks like on an ordinary day.\n"
            "\n"
            "Two or three short paragraphs are plenty. Every text field takes Markdown: **bold** for\n"
            "the phrase to remember, *emphasis*, and [links](https://commonmark.org/help/) that\n"
            "`newsletter check` makes sure are absolute."
        ),
        steps=[
            "Steps are optional: three or four, each small enough to try today.",
            "Start each one with a verb, so it reads as something to do.",
            "They show as a numbered list under the idea.",
        ],
    ),
    story=Story(
        title="In a reader's own words",
        body=(
            "The `story` is where a reader speaks: something that happened to them, in the first person,\n"
            "shown as a quote. Ask before you print it, keep to first names, and keep the details that\n"
            "make it ring true. One or two paragraphs are enough."
        ),
        attribution="The attribution: a first name, and a few words about the person",
    ),
    next_steps=[
        NextStep(
            text='Write your own first issue: `newsletter new "A title"` makes the file with every section, '
            "and `newsletter check` lists what is left to fill in."
        ),
        NextStep(
            text="A next step with a link shows as a button. This one opens a ten-minute guide to Markdown.",
            link="https://commonmark.org/help/",
            link_text="Learn Markdown",
        ),
    ],
    resources=[
        Resource(
            title="Markdown reference", by="CommonMark", kind="article", url="https://commonmark.org/help/"
        ),
        Resource(
            title="Markdown tutorial",
            by="CommonMark",
            kind="article",
            url="https://commonmark.org/help/tutorial/",
        ),
    ],
)
"""The sample issue of a new project: it passes `newsletter check --strict` and explains itself."""


def first_issue_date(settings: Settings, today: dt.date | None = None) -> dt.date:
    """The sample issue's date: the newest ``schedule.weekday`` at least a week before today (in the
    newsletter's time zone), so it orders first and the scheduler never sends it by surprise."""
    today = today or dt.datetime.now(ZoneInfo(settings.newsletter.timezone)).date()
    weekday = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday").index(
        settings.schedule.weekday
    )
    return today - dt.timedelta(days=7 + (today.weekday() - weekday) % 7)


@dataclass
class Created:
    """What `init` wrote, and what it found already there and left alone (only with ``force``)."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def _starter_files() -> Iterator[tuple[Path, Path]]:
    """(starter file, where it goes in the project, relative) for every file but the settings template."""
    for source in sorted(STARTER.rglob("*")):
        if source.is_file() and source != SETTINGS_TEMPLATE:
            parts = [part.replace("dot-", ".", 1) if part.startswith("dot-") else part
                     for part in source.relative_to(STARTER).parts]  # fmt: skip
            yield source, Path(*parts)


def _write(path: Path, text: str, created: Created) -> None:
    """Write a new file; one already there is kept as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        created.kept.append(path)
    else:
        created.written.append(path)


def check_folder(directory: Path, *, force: bool = False) -> None:
    """Stop before anything is written (or asked) when ``directory`` is a file or, unless ``force``,
    holds anything."""
    if directory.exists() and not directory.is_dir():
        raise ContentError([Problem(str(directory), "is a file, not a folder")])
    present = (
        sorted(p.name for p in directory.iterdir() if p.name not in IGNORED) if directory.exists() else []
    )
    if present and not force:
        listed = ", ".join(present[:3]) + (", …" if len(present) > 3 else "")
        raise ContentError(
            [
                Problem(
                    str(directory),
                    f"is not empty ({listed}); choose a new folder, or pass --force to add the project's "
                    "files beside these (none of them is overwritten)",
                )
            ]
        )


def create_project(
    directory: Path, project: NewProject, *, force: bool = False, today: dt.date | None = None
) -> Created:
    """Write a new newsletter project into ``directory``; nothing is written when a value is wrong or,
    without ``force``, when the folder holds anything. With ``force``, files already there are kept."""
    settings, wrong = _validated(project, directory.resolve())
    if settings is None:
        raise SettingsError("\n".join(map(str, wrong)))
    check_folder(directory, force=force)
    try:
        return _write_project(directory, project, first_issue_date(settings, today), settings)
    except OSError as exc:  # a folder that cannot be written, a full disk
        raise ContentError(
            [Problem(str(exc.filename or directory), f"cannot write: {exc.strerror}")]
        ) from None


def _write_project(directory: Path, project: NewProject, date: dt.date, settings: Settings) -> Created:
    created = Created()
    issues_dir = directory / settings.newsletter.issues_dir
    sample = issues_dir / issue_name(FIRST_ISSUE, date)
    _write(directory / "settings.toml", settings_text(project), created)
    try:
        created.written.append(write_issue(FIRST_ISSUE, issues_dir, date))
    except ContentError:  # --force, and the folder already has this very file
        created.kept.append(sample)
    values = {
        "name": project.name,
        "version": __version__,
        "first_issue": sample.relative_to(directory).as_posix(),
    }
    for source, relative in _starter_files():
        text = source.read_text(encoding="utf-8")
        if relative.suffix == ".in":
            text, relative = Template(text).substitute(values), relative.with_suffix("")
        _write(directory / relative, text, created)
    return created
