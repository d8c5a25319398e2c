"""Which packaged templates a project overrides, and ejecting one: a copy in the project's own
templates folder to start from (the loader then reads it before the packaged one)."""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ContentError, Problem

PACKAGED_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
"""The templates that ship with the package: every newsletter starts from them (here, not in
renderer.py, so listing and ejecting them loads neither Jinja2 nor MJML)."""


@dataclass(frozen=True, slots=True)
class TemplateFile:
    """One template by its name under a templates folder (``partials/footer.mjml.j2``)."""

    name: str
    packaged: bool
    """The package ships it."""
    in_project: bool
    """The project's templates folder has its own: the one used."""


def _names(folder: Path) -> set[str]:
    """Every template (``*.j2``) below ``folder``, by its path from there."""
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*.j2") if path.is_file()}


def packaged_names() -> list[str]:
    return sorted(_names(PACKAGED_TEMPLATES))


def template_files(templates_dir: Path) -> list[TemplateFile]:
    """The packaged templates and the project's own, each saying which copy the renderer reads."""
    packaged, own = _names(PACKAGED_TEMPLATES), _names(templates_dir) if templates_dir.is_dir() else set()
    return [TemplateFile(name, name in packaged, name in own) for name in sorted(packaged | own)]


def _unknown(name: str, names: list[str]) -> ContentError:
    by_file = {Path(known).name: known for known in names}
    close = difflib.get_close_matches(name, names, n=1) or [
        by_file[match] for match in difflib.get_close_matches(Path(name).name, list(by_file), n=1)
    ]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ContentError(
        [Problem(name, f"no packaged template of that name{hint}; the packaged ones: {', '.join(names)}")]
    )


def eject(name: str, templates_dir: Path, *, force: bool = False) -> Path:
    """Copy the packaged template ``name`` to ``templates_dir/name`` and return that path; a copy the
    project already has is kept unless ``force``."""
    names = packaged_names()
    if name not in names:
        raise _unknown(name, names)
    target = templates_dir / name
    if target.exists() and not force:
        raise ContentError(
            [
                Problem(
                    str(target), "already exists; not overwritten (--force replaces it with the packaged one)"
                )
            ]
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGED_TEMPLATES / name, target)
    return target
