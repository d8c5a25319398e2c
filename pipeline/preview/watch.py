"""What the preview watches, and what changed since it last looked: a poll of a few dozen files.

The set is small and explicit (the issue files, the project's own templates, the settings and the
segments file), so a stat of each every ``POLL_SECONDS`` costs well under a millisecond. A poll also
sees what an inotify watch would have to be re-armed for: a ``templates/`` folder that appears after
the preview started (an eject), and editors that save by writing a new file and renaming it over the
old one (the inode changes, so the stamp does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.content.issue import WELCOME_DIR, issue_paths
from pipeline.settings import Settings

POLL_SECONDS = 0.05
"""How often the files are looked at: a save shows within this, plus one render."""
TEMPLATE_SUFFIX = ".j2"

Stamp = tuple[int, int, int]
"""(modification time in ns, size, inode): any save changes at least one of them."""
Snapshot = dict[Path, Stamp]


@dataclass(frozen=True, slots=True)
class Watched:
    """The files one preview depends on, from the settings."""

    settings_file: Path
    segments_file: Path
    issues_dir: Path
    templates_dir: Path

    @classmethod
    def of(cls, settings_file: Path, settings: Settings) -> Watched:
        paths = settings.newsletter
        return cls(
            settings_file,
            settings.path(paths.segments_file),
            settings.path(paths.issues_dir),
            settings.path(paths.templates_dir),
        )

    def issue_files(self) -> list[Path]:
        """The issue files as ``newsletter check`` finds them (the welcome series' steps included)."""
        return issue_paths([], self.issues_dir)

    def template_files(self) -> list[Path]:
        """The project's own templates (a project without a ``templates/`` folder has none)."""
        if not self.templates_dir.is_dir():
            return []
        return sorted(p for p in self.templates_dir.rglob(f"*{TEMPLATE_SUFFIX}") if p.is_file())


def _stamp(path: Path) -> Stamp | None:
    try:
        stat = path.stat()
    except OSError:  # gone, or between an editor's unlink and rename
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def snapshot(watched: Watched) -> Snapshot:
    """The stamp of every watched file that exists now."""
    paths = [watched.settings_file, watched.segments_file, *watched.issue_files(), *watched.template_files()]
    return {path: stamp for path in paths if (stamp := _stamp(path)) is not None}


@dataclass(frozen=True, slots=True)
class Changes:
    """What differs between two snapshots, by what it means for the preview."""

    issues: frozenset[Path] = frozenset()
    """Issue files written, added or removed: only these are rendered again."""
    templates: bool = False
    settings: bool = False
    segments: bool = False

    def __bool__(self) -> bool:
        return bool(self.issues) or self.templates or self.settings or self.segments

    @property
    def everything(self) -> bool:
        """Every issue looks different: the templates or the settings changed."""
        return self.templates or self.settings


def changes(watched: Watched, before: Snapshot, after: Snapshot) -> Changes:
    differing = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    return Changes(
        issues=frozenset(
            path
            for path in differing
            if path.parent in (watched.issues_dir, watched.issues_dir / WELCOME_DIR)
        ),
        templates=any(path.is_relative_to(watched.templates_dir) for path in differing),
        settings=watched.settings_file in differing,
        segments=watched.segments_file in differing,
    )
