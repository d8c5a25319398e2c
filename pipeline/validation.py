"""Turn pydantic's validation errors into messages an editor or operator can act on.

Shared by settings and issue files: both reject unknown keys (with a "did you mean") and report every
problem at once, each with the dotted path of the field it concerns.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
