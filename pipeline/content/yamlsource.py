"""YAML loading that remembers where every key and value stood, so errors can name line and column.

PyYAML's node graph carries marks; this module constructs plain Python data from it and keeps a map
from each path (``("strategy", "steps", 2)``) to the position of its key and of its value. Timestamps are
left as strings so a bad date becomes a validation error with a location, not a constructor crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.errors import Problem

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    line: int
    column: int


@dataclass(slots=True)
class LocatedData:
    """Parsed YAML plus where each path's key (``keys``) and value (``values``) stood, 1-based."""

    data: Any
    keys: dict[Path, Position] = field(default_factory=dict)
    values: dict[Path, Position] = field(default_factory=dict)

    def position(self, path: Path, *, prefer_key: bool = False) -> Position:
        """The closest known position for ``path``, walking up to a parent when it is absent."""
        first, second = (self.keys, self.values) if prefer_key else (self.values, self.keys)
        for depth in range(len(path), 0, -1):
            prefix = path[:depth]
            if prefix in first:
                return first[prefix]
            if prefix in second:
                return second[prefix]
        return Position(1, 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps: dates are validated later, with a location."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _pos(mark: yaml.Mark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _walk(node: yaml.Node, path: Path, located: LocatedData, problems: list[Problem], source: str) -> None:
    located.values[path] = _pos(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, Position] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            key_pos = _pos(key_node.start_mark)
            if key in seen:
                problems.append(
                    Problem(
                        source,
                        f"duplicate key '{key}' (first defined on line {seen[key].line})",
                        key_pos.line,
                        key_pos.column,
                        dotted((*path, key)),
                    )
                )
                continue
            seen[key] = key_pos
            located.keys[(*path, key)] = key_pos
            _walk(value_node, (*path, key), located, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            located.keys[(*path, index)] = _pos(item.start_mark)
            _walk(item, (*path, index), located, problems, source)


def dotted(path: Path) -> str:
    return ".".join(str(part) for part in path)


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str, source: str) -> Problem:
    """Where the editor should look: the opening of what never closed, when YAML ran off the end."""
    mark = exc.problem_mark or exc.context_mark
    at_end = mark is not None and mark.index >= len(text.rstrip())
    if at_end and exc.context_mark is not None:
        mark = exc.context_mark
        message = f"YAML syntax: {exc.context} was never closed ({exc.problem})"
    else:
        message = f"YAML syntax: {exc.problem or exc.context}"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(source, message, line, column)


def load_located(text: str, source: str) -> tuple[LocatedData | None, list[Problem]]:
    """Parse ``text``; return the data with positions, or ``None`` and the syntax problems."""
    loader = _Loader(text)
    problems: list[Problem] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return LocatedData(None), problems
        located = LocatedData(None)
        _walk(node, (), located, problems, source)
        located.data = loader.construct_document(node)
        return located, problems
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_problem(exc, text, source)]
    except yaml.YAMLError as exc:
        return None, [Problem(source, f"YAML syntax: {exc}")]
    finally:
        loader.dispose()
