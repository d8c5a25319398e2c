"""Pre-send checks: the issue's schema, then lint on the rendered result, the way a subscriber gets it.

Fast enough for a pre-commit hook: templates compile once per run, each issue renders once, and every
problem in every file is reported, located where the editor can fix it. With ``spam``, the messages as
sent also go through SpamAssassin (one run for all of them, about a second and a half for five
issues), and each rule that adds points is a warning at the field holding the text it matched.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from pipeline.content.issue import IssueFile, parse_issue, read_issue_text
from pipeline.content.yamlsource import Path as YamlPath
from pipeline.content.yamlsource import Position, load_located
from pipeline.errors import ContentError, Problem, Severity
from pipeline.recipient import PersonalFields, Recipient
from pipeline.render import markup, spamcheck
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import PersonalisedMessage, RenderedIssue, Renderer, personalise
from pipeline.settings import Settings
from pipeline.tokens import Signer

SUBJECT_MAX, SUBJECT_WARN = 70, 60
PREHEADER_MIN, PREHEADER_MAX = 40, 140
HTML_MAX, HTML_WARN = 102 * 1024, 90 * 1024
SAMPLE_RECIPIENT = Recipient(subscriber_id=1, email="reader@example.com", name="Alex Reader")
SAMPLE_CAMPAIGN = 0
"""The campaign id in the Feedback-ID of the messages the spam check scores (they belong to none)."""
SPAM_SKIPPED = (
    f"note: spam check skipped: SpamAssassin is not installed (`{spamcheck.INSTALL}`, or `make system-deps`)"
)


@dataclass
class CheckReport:
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the check could not do, said once (SpamAssassin missing); never a failure."""

    @property
    def errors(self) -> int:
        return sum(p.severity is Severity.ERROR for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity is Severity.WARNING for p in self.problems)

    def failed(self, strict: bool = False) -> bool:
        return bool(self.errors or (strict and self.warnings))


class _Elements(HTMLParser):
    """Collects every link target and every image of the rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "a" and attributes.get("href") is not None:
            self.links.append(attributes["href"] or "")
        elif tag == "img":
            self.images.append(attributes)


def _strings(data: Any, path: YamlPath = ()) -> Iterator[tuple[YamlPath, str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _strings(value, (*path, index))
    elif isinstance(data, str):
        yield path, data


_QUOTES = str.maketrans("\u2018\u2019\u201c\u201d", "''\"\"")


def _words(text: str) -> str:
    """Text compared the way a reader reads it: case, straight or curly quotes and line breaks aside."""
    return " ".join(text.translate(_QUOTES).casefold().split())


class _Locator:
    """Maps a rendered value back to the issue field it came from, for file:line messages."""

    def __init__(self, issue_file: IssueFile, text: str) -> None:
        self.source = str(issue_file.path)
        self.lines = text.translate(_QUOTES).splitlines(keepends=True)
        located, _ = load_located(text, self.source)
        self.located = located
        self.strings = list(_strings(located.data)) if located else []

    def at(self, path: YamlPath) -> Position:
        return self.located.position(path) if self.located else Position(1, 1)

    def problem(self, path: YamlPath, message: str, severity: Severity = Severity.ERROR) -> Problem:
        position = self.at(path)
        name = ".".join(map(str, path))
        return Problem(self.source, message, position.line, position.column, name, severity)

    def containing(self, needle: str) -> YamlPath:
        return next((path for path, value in self.strings if needle in value), ())

    def containing_words(self, words: str) -> YamlPath:
        """The field whose text, as a reader sees it (Markdown rendered, typographic quotes, any line
        breaks), holds ``words``; () when none does (the words come from a template)."""
        needle = _words(words)
        return next(
            (
                path
                for path, value in self.strings
                if needle in _words(value) or needle in _words(markup.to_text(value))
            ),
            (),
        )

    def warning_at_words(self, phrases: Iterable[str], message: str) -> Problem:
        """A warning at the first phrase an issue field holds; at the file when none does (the words
        come from a template)."""
        for phrase in filter(str.strip, phrases):
            path = self.containing_words(phrase)
            if path:
                return self._warning_at(path, phrase, message)
        return self.problem((), message, Severity.WARNING)

    def _warning_at(self, path: YamlPath, phrase: str, message: str) -> Problem:
        """At the phrase's very line and column when the file has it as written (over line breaks
        too) from the field on; else at the field."""
        at = self.problem(path, message, Severity.WARNING)
        start = at.line or 1
        rest = "".join(self.lines[start - 1 :])
        pattern = r"\s+".join(map(re.escape, phrase.translate(_QUOTES).split()))
        found = re.search(pattern, rest, re.IGNORECASE)
        if found is None:
            return at
        before = rest[: found.start()]
        return replace(at, line=start + before.count("\n"), column=found.start() - before.rfind("\n"))


def _is_absolute_link(link: str) -> bool:
    parts = urlsplit(link)
    return parts.scheme == "mailto" or (parts.scheme in {"http", "https"} and bool(parts.netloc))


def _subject_problems(subject: str, path: YamlPath, locator: _Locator) -> list[Problem]:
    if len(subject) > SUBJECT_MAX:
        return [locator.problem(path, f"{len(subject)} characters; at most {SUBJECT_MAX}")]
    if len(subject) > SUBJECT_WARN:
        message = f"{len(subject)} characters; phones cut it after about {SUBJECT_WARN}"
        return [locator.problem(path, message, Severity.WARNING)]
    return []


def lint_rendered(
    issue_file: IssueFile,
    copy: PersonalisedMessage,
    locator: _Locator,
    settings: Settings,
    unsubscribe_url: str,
) -> list[Problem]:
    """Everything a subscriber's copy must satisfy, with the field to fix where one is to blame."""
    issue = issue_file.issue
    problems = _subject_problems(issue.subject, ("subject",), locator)
    seen = {issue.subject.casefold()}
    for index, variant in enumerate(issue.subject_variants):
        path: YamlPath = ("subject_variants", index)
        problems += _subject_problems(variant, path, locator)
        if variant.casefold() in seen:
            problems.append(locator.problem(path, "the same subject twice: a test needs different ones"))
        seen.add(variant.casefold())
    if not PREHEADER_MIN <= len(issue.preheader) <= PREHEADER_MAX:
        problems.append(
            locator.problem(
                ("preheader",), f"{len(issue.preheader)} characters; write {PREHEADER_MIN} to {PREHEADER_MAX}"
            )
        )

    for path, value in locator.strings:
        if "TODO" in value:
            problems.append(locator.problem(path, "unfinished: replace the TODO"))
        for target in markup.link_targets(value):
            if not _is_absolute_link(target):
                problems.append(locator.problem(path, f"link '{target}' is not an absolute http(s) URL"))

    elements = _Elements()
    elements.feed(copy.html)
    for link in elements.links:
        if not _is_absolute_link(link) and not locator.containing(link):  # Markdown links are checked above
            problems.append(
                locator.problem((), f"link '{link}' in the template is not an absolute http(s) URL")
            )
    for image in elements.images:
        if not (image.get("alt") or "").strip():
            src = image.get("src") or ""
            problems.append(locator.problem(locator.containing(src), f"image '{src}' has no alt text"))

    size = len(copy.html.encode("utf-8"))
    if size >= HTML_MAX:
        problems.append(
            locator.problem((), f"HTML is {size / 1024:.1f} KB; Gmail clips messages over 102 KB")
        )
    elif size > HTML_WARN:
        problems.append(
            locator.problem(
                (), f"HTML is {size / 1024:.1f} KB; close to Gmail's 102 KB clipping", Severity.WARNING
            )
        )

    if not copy.text.strip():
        problems.append(locator.problem((), "the plain-text part is empty"))
    address = settings.newsletter.postal_address
    for part, body, needles in (
        (
            "HTML",
            copy.html,
            {"unsubscribe link": html.escape(unsubscribe_url), "postal address": html.escape(address)},
        ),
        ("text", copy.text, {"unsubscribe link": unsubscribe_url, "postal address": address}),
    ):
        for what, needle in needles.items():
            if needle not in body:
                problems.append(
                    locator.problem((), f"the {part} part has no {what} (check the template footer)")
                )
    return problems


class _Sample(NamedTuple):
    """A rendered issue's sample copy, for checks of the whole message (SpamAssassin)."""

    rendered: RenderedIssue
    fields: PersonalFields
    locator: _Locator


@dataclass
class CheckedIssue:
    """One file's check: every problem, and the issue as rendered (with the sample copy's links and
    the file's locator) when it got that far."""

    problems: list[Problem]
    issue_file: IssueFile | None = None
    rendered: RenderedIssue | None = None
    sample: _Sample | None = None


def check_issue(path: Path, renderer: Renderer, links: Links) -> CheckedIssue:
    """Every problem in one issue file: schema first, then lint on its rendered copy."""
    text, unread = read_issue_text(path)
    if text is None:
        return CheckedIssue(unread)
    issue, problems = parse_issue(text, path)
    if issue is None:
        return CheckedIssue(problems)
    issue_file = IssueFile(path, issue)
    try:
        rendered = renderer.render(issue_file)
    except ContentError as exc:
        return CheckedIssue(problems + exc.problems, issue_file)
    fields = links.personal_fields(SAMPLE_RECIPIENT)
    copy = personalise(rendered, fields)
    locator = _Locator(issue_file, text)
    problems += lint_rendered(issue_file, copy, locator, renderer.settings, fields.unsubscribe_url)
    return CheckedIssue(problems, issue_file, rendered, _Sample(rendered, fields, locator))


def spam_problems(samples: list[_Sample], settings: Settings, program: str) -> list[list[Problem]]:
    """SpamAssassin on each issue's message as a campaign sends it: a warning per rule that adds
    points, at the field holding the text it matched (else at the file). One run for all of them."""
    messages = []
    for rendered, fields, _ in samples:
        template = MessageTemplate(settings, rendered).for_campaign(SAMPLE_CAMPAIGN)
        messages.append(template.build(SAMPLE_RECIPIENT, fields, message_id=template.message_id()))
    found = []
    for sample, verdict in zip(samples, spamcheck.score(messages, program), strict=True):
        problems = []
        for hit in verdict.scored:
            quoted = "".join(f': "{text}"' for text in hit.matched[:1])
            message = f"spam score {hit.score:g}: {hit.rule} ({hit.description}){quoted}"
            problems.append(sample.locator.warning_at_words(hit.matched, message))
        found.append(problems)
    return found


def check_paths(paths: Iterable[Path], settings: Settings, *, spam: bool = False) -> CheckReport:
    """Check every file; never stops at the first bad one. ``spam``: SpamAssassin scores the rendered
    issues too, when it is installed (a note says so when it is not, or when it fails)."""
    renderer = Renderer(settings)
    links = Links(settings, Signer(b"newsletter-check: links are never sent"))
    report = CheckReport()
    checked = []
    for path in paths:
        report.files += 1
        checked.append(check_issue(path, renderer, links))
    if spam:
        report.notes += _spam_check(checked, settings)
    for item in checked:
        report.problems.extend(item.problems)
    return report


def _spam_check(checked: list[CheckedIssue], settings: Settings) -> list[str]:
    """Add SpamAssassin's warnings to the problems of the issues that rendered; the notes to show."""
    scored = [(item, item.sample) for item in checked if item.sample is not None]
    if not scored:
        return []
    program = spamcheck.installed()
    if program is None:
        return [SPAM_SKIPPED]
    try:
        found = spam_problems([sample for _, sample in scored], settings, program)
    except spamcheck.SpamAssassinError as exc:
        return [f"note: spam check skipped: {exc}"]
    for (item, _), problems in zip(scored, found, strict=True):
        item.problems += problems
    return []
