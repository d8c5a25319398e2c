"""Turn pydantic's validation errors into messages an editor or operator can act on.

Shared by settings and issue files: both reject unknown keys (with a "did you mean") and report every
problem at once, each with the dotted path of the field it concerns. Both also refuse characters nobody
can see (controls, separators): they break headers and MJML, and the writer would never find them.
"""

from __future__ import annotations

import difflib
import types
import typing
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is loaded by the models these functions read; errors.py must not need it
    from pydantic import BaseModel, ValidationError

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FieldError:
    path: Path
    message: str
    at_key: bool = False
    """Point at the key (unknown or missing keys) rather than at a value."""


def _submodels(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every BaseModel class reachable through Optional/list/Union in ``annotation``."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _submodels(arg)


def _model_at(model: type[BaseModel], path: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (list indexes are skipped)."""
    current: type[BaseModel] | None = model
    for part in path:
        if isinstance(part, int) or current is None:
            continue
        info = current.model_fields.get(part)
        current = next(_submodels(info.annotation), None) if info else None
    return current


def known_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def suggestion(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _message(error: Any, model: type[BaseModel]) -> FieldError:
    path: Path = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, path[:-1])
        known = known_keys(parent) if parent else []
        hint = suggestion(str(path[-1]), known)
        allowed = f"; allowed: {', '.join(known)}" if known and not hint else ""
        return FieldError(path, f"unknown key '{path[-1]}'{hint}{allowed}", at_key=True)
    if kind == "missing":
        return FieldError(path, "is required but missing", at_key=True)
    if kind in {"string_too_short", "too_short"} and error.get("ctx", {}).get("min_length") == 1:
        return FieldError(path, "must not be empty")
    if kind == "string_type" and isinstance(error.get("input"), bool | int | float):
        return FieldError(path, f"expected text, got {error['input']!r}: put the value in quotes")
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    else:
        message = message[:1].lower() + message[1:]
    return FieldError(path, message)


def field_errors(exc: ValidationError, model: type[BaseModel]) -> list[FieldError]:
    """Every error in ``exc`` as a path and a readable message."""
    return [_message(error, model) for error in exc.errors()]


LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
"""Every character ``str.splitlines()`` ends a line at: a single-line field allows none of them."""

_CONTROL_NAMES = {
    "\0": "NULL",
    "\a": "BELL",
    "\b": "BACKSPACE",
    "\t": "TAB",
    "\n": "LINE FEED",
    "\v": "VERTICAL TAB",
    "\f": "FORM FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x1c": "FILE SEPARATOR",
    "\x1d": "GROUP SEPARATOR",
    "\x1e": "RECORD SEPARATOR",
    "\x1f": "UNIT SEPARATOR",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


def char_name(char: str) -> str:
    """``U+001B (ESCAPE)``: a character nobody can see, named so the writer can find it."""
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def invisible_kind(char: str, allowed: str = "") -> str | None:
    """Why ``char`` has no place in text a person wrote (None when it is fine): controls, separators."""
    if char in allowed:
        return None
    category = unicodedata.category(char)
    if category == "Cc":
        return "an invisible control character"
    if category in {"Zl", "Zp"}:
        return "an invisible line break"
    if category == "Cs":
        return "half of a surrogate pair, not a character"
    if char in "\ufffe\uffff":
        return "a noncharacter"
    return None


def invisible_problem(value: str, allowed: str = "") -> str | None:
    """The first character of ``value`` that :func:`invisible_kind` refuses, described; None if none."""
    for index, char in enumerate(value):
        if kind := invisible_kind(char, allowed):
            return f"{char_name(char)} at character {index + 1} is {kind}; delete it"
    return None


def printable(text: str) -> str:
    """``text`` with every invisible character written as an escape, safe to echo to a terminal."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if invisible_kind(char) else char for char in text
    )
