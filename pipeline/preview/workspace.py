"""The project as the preview sees it: the settings, one renderer, the segments, and each issue checked
and rendered at most once per change.

An issue's view is what `newsletter check` finds in it plus the copy a made-up reader would get (the
one `newsletter render` writes: preview links, which act for nobody). Views are kept until a poll sees
their file change; a template or settings change rebuilds the renderer, so templates compile once
per change, and drops every view; a segments change only changes whom an issue is said to go to.
An invalid settings file keeps the last valid settings for finding files, and shows its errors in
place of every email until it is fixed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline.audience.segments import Segments, load_segments
from pipeline.content.issue import Issue, after_text
from pipeline.errors import AudienceError, PipelineError, Problem, Severity
from pipeline.preview.schemes import as_seen_in
from pipeline.preview.watch import Changes, Snapshot, Watched, changes, snapshot
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.lint import SAMPLE_RECIPIENT, check_issue
from pipeline.render.renderer import Renderer
from pipeline.render.single import Preview, preview
from pipeline.settings import Settings, load_settings
from pipeline.tokens import PREVIEW_ID, Signer, load_secret_key

log = logging.getLogger(__name__)
READER = Recipient(PREVIEW_ID, SAMPLE_RECIPIENT.email, SAMPLE_RECIPIENT.name)
"""The made-up reader every preview is personalised for, as `newsletter render` does by default."""


@dataclass(frozen=True, slots=True)
class Line:
    """One problem as the page shows it: ``FILE:LINE:COL: severity: FIELD: message``."""

    text: str
    severity: Severity = Severity.ERROR


@dataclass(frozen=True, slots=True)
class Email:
    """The reader's copy (``newsletter render``'s preview), and its HTML as light and dark systems show it."""

    copy: Preview
    light: str
    dark: str

    @classmethod
    def of(cls, copy: Preview) -> Email:
        return cls(copy, as_seen_in(copy.html, "light"), as_seen_in(copy.html, "dark"))


@dataclass(frozen=True, slots=True)
class IssueView:
    """One issue file: every problem found in it, and the reader's copy when it rendered."""

    name: str
    path: Path
    problems: tuple[Line, ...]
    issue: Issue | None = None
    email: Email | None = None

    @property
    def errors(self) -> int:
        return sum(line.severity is Severity.ERROR for line in self.problems)

    @property
    def warnings(self) -> int:
        return sum(line.severity is Severity.WARNING for line in self.problems)

    @property
    def when(self) -> str:
        """When it goes out: an issue's date, or a welcome step's wait (``3d after joining``)."""
        if self.issue is None:
            return ""
        if self.issue.date is not None:
            return self.issue.date.isoformat()
        after = self.issue.after
        return f"{after_text(after)} after joining" if after else "on joining"

    @property
    def status(self) -> str:
        """``ok``, ``2 warnings`` or ``1 error`` (errors first: they stop a send)."""
        for count, word in ((self.errors, "error"), (self.warnings, "warning")):
            if count:
                return f"{count} {word}{'s' * (count != 1)}"
        return "ok"


@dataclass(frozen=True, slots=True)
class _Build:
    """What the settings and templates make: rebuilt when either changes."""

    settings: Settings
    renderer: Renderer
    links: Links


class Workspace:
    """Thread-safe: pages ask for views from worker threads while the poll runs in another."""

    def __init__(self, settings_file: Path) -> None:
        """Raises ``PipelineError`` when the settings (or the signing key) are wrong at the start."""
        self.settings_file = settings_file.resolve()
        self._lock = threading.Lock()
        self._build = self._make_build(load_settings(self.settings_file))
        self._settings_errors: tuple[Line, ...] = ()
        self._segments: Segments | AudienceError = self._load_segments()
        self._views: dict[Path, IssueView] = {}
        self.renders = 0
        """How many issues were rendered so far (what "only what changed" is measured by)."""
        self._snapshot: Snapshot = snapshot(self.watched)

    @property
    def settings(self) -> Settings:
        """The last valid settings."""
        return self._build.settings

    @property
    def watched(self) -> Watched:
        return Watched.of(self.settings_file, self.settings)

    def _make_build(self, settings: Settings) -> _Build:
        return _Build(settings, Renderer(settings), Links(settings, Signer(load_secret_key(settings))))

    def _load_segments(self) -> Segments | AudienceError:
        try:
            return load_segments(self.watched.segments_file)
        except AudienceError as exc:
            return exc

    def _shown(self, text: str) -> str:
        """Paths below the project written from it (``issues/…``), as an editor reads them."""
        return text.replace(f"{self.settings.root}/", "")

    def poll(self) -> Changes:
        """Look at the files once; forget what they change and return it."""
        with self._lock:
            watched = self.watched
            after = snapshot(watched)
            found = changes(watched, self._snapshot, after)
            if found.settings:
                self._reload_settings()
            elif found.templates:
                self._build = dataclasses.replace(self._build, renderer=Renderer(self.settings))
            if found.settings or found.segments:
                self._segments = self._load_segments()
            if found.everything:
                self._views.clear()
            for path in found.issues:
                self._views.pop(path, None)
            # New settings may name other folders: look at those from now on.
            self._snapshot = snapshot(self.watched) if self.watched != watched else after
            return found

    def _reload_settings(self) -> None:
        try:
            self._build = self._make_build(load_settings(self.settings_file))
        except PipelineError as exc:
            self._settings_errors = tuple(Line(self._shown(line)) for line in str(exc).splitlines())
        else:
            self._settings_errors = ()

    def names(self) -> dict[str, Path]:
        """Every issue by name (its file name without ``.yaml``), in file order."""
        with self._lock:
            return {path.stem: path for path in self.watched.issue_files()}

    def view(self, name: str) -> IssueView | None:
        """The issue called ``name`` (None when there is no such file), rendered if it is not yet."""
        path = self.names().get(name)
        return None if path is None else self._view(path)

    def views(self) -> list[IssueView]:
        return [self._view(path) for path in self.names().values()]

    def _view(self, path: Path) -> IssueView:
        with self._lock:
            if self._settings_errors:
                return IssueView(path.stem, path, self._settings_errors)
            if path not in self._views:
                self._views[path] = self._render(path)
            return self._views[path]

    def _render(self, path: Path) -> IssueView:
        """``check`` of the file, and the reader's copy when it rendered; never raises."""
        self.renders += 1
        build = self._build
        try:
            checked = check_issue(path, build.renderer, build.links)
            email = None
            if checked.rendered is not None:
                email = Email.of(preview(build.settings, checked.rendered, READER, build.links))
        except Exception as exc:  # a bug or a template that raises: a line on the page, the trace in the log
            log.exception("preview of %s failed", path)
            problem = Problem(str(path), f"could not be rendered: {type(exc).__name__}: {exc}")
            return IssueView(path.stem, path, (self._line(problem),))
        issue = checked.issue_file.issue if checked.issue_file else None
        return IssueView(path.stem, path, tuple(map(self._line, checked.problems)), issue, email)

    def _line(self, problem: Problem) -> Line:
        return Line(self._shown(str(problem)), problem.severity)

    def audience(self, view: IssueView) -> tuple[list[str], list[Line]]:
        """The segments ``view``'s issue goes to, and what is wrong with them (a name that is not in
        the segments file, or the segments file itself)."""
        if view.issue is None or view.issue.date is None:  # a welcome step goes to the whole series
            return [], []
        names = list(view.issue.segments or self.settings.newsletter.default_segments)
        segments = self._segments
        if isinstance(segments, AudienceError):
            return names, [Line(self._shown(line)) for line in str(segments).splitlines()]
        return names, [Line(self._shown(message)) for message in _unknown(segments, names)]


def _unknown(segments: Segments, names: list[str]) -> list[str]:
    """The lookup error (with its "did you mean") of each name ``segments`` does not define."""
    found = []
    for name in names:
        try:
            segments.__getitem__(name)
        except AudienceError as exc:
            found.append(str(exc))
    return found
