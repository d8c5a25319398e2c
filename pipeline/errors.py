"""The errors a user can cause, in one small family the CLI turns into clean exits.

    PipelineError                   anything the user can fix; the CLI prints it and exits 1
    ├── SettingsError               settings.toml or an environment variable is wrong
    ├── ContentError                one or more problems in issue files (carries every Problem found)
    ├── StoreError                  the database cannot be opened, migrated or used as asked
    ├── AudienceError               a subscriber, CSV import or segment is wrong
    │   └── ImportRejected          a CSV had invalid rows; nothing was imported
    ├── TokenError                  a signed token is forged, truncated, tampered or expired
    └── DispatchError               a campaign cannot be started, resumed or sent as asked

Where the input has a place, the message names it as ``FILE:LINE:COL: FIELD: message``; invisible
characters from the input are shown as escapes (``\\x1b``), never sent to the terminal as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.validation import printable


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, located as precisely as the input allows."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None
    field: str = ""
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f"{self.field}: " if self.field else ""
        return printable(f"{where}: {self.severity.value}: {field}{self.message}")


class PipelineError(Exception):
    """Base of every error a user can cause and fix."""


class SettingsError(PipelineError):
    """The settings file or a secret from the environment is missing or invalid."""


class ContentError(PipelineError):
    """Issue files have problems; ``problems`` holds every one found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(PipelineError):
    """The store cannot be reached, migrated or used as asked."""


class AudienceError(PipelineError):
    """A subscriber, segment or import request is invalid."""


class ImportRejected(AudienceError):
    """A CSV import found invalid rows and imported nothing."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class TokenError(PipelineError):
    """A signed token failed verification."""


class DispatchError(PipelineError):
    """A campaign cannot be created, resumed or sent as asked."""
