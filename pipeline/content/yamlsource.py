"""YAML loading that remembers where every key and value stood, so errors can name line and column.

PyYAML's node graph carries marks; this module constructs plain Python data from it and keeps a map
from each path (``("strategy", "steps", 2)``) to the position of its key and of its value. Timestamps are
left as strings so a bad date becomes a validation error with a location, not a constructor crash.

Issue files come from people and from other people's clipboards, so loading is guarded: libyaml parses
(ten times faster than PyYAML's Python parser, which stands in where libyaml is missing) and a Python
composer refuses nesting deeper than ``MAX_DEPTH`` and aliases that repeat more than ``MAX_ALIASED``
values (a "billion laughs" file), each before it costs memory or recursion. Characters nobody can see
(controls, U+2028) are reported where they stand, under the field they are in, and read as spaces so
the rest of the file is still checked and its line numbers stay the editor's.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, Event, ScalarEvent
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from pipeline.errors import Problem
from pipeline.validation import char_name, invisible_kind

Path = tuple[str | int, ...]


class Mark(Protocol):
    """A place in the text, as PyYAML's parser and libyaml's both mark it (0-based)."""

    index: int
    line: int
    column: int


MAX_DEPTH = 20
"""Deepest nesting of mappings and lists accepted; an issue needs four levels."""
MAX_ALIASED = 1000
"""Most values aliases (``*name``) may repeat in one file; an issue needs none."""


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


class _Refused(Exception):
    """Well-formed YAML this loader will not build: too deep, or aliases that multiply."""

    def __init__(self, message: str, event: Event) -> None:
        super().__init__(message)
        self.message = message
        self.position = _pos(event.start_mark) if event.start_mark else Position(1, 1)


class _Guarded(Composer, SafeConstructor, Resolver):
    """The safe loader's composer and constructor, with the limits checked as each node is composed."""

    def _start_guard(self) -> None:
        self.depth = 0
        self.aliased = 0
        self.sizes: dict[str, int] = {}
        """Values each finished anchor stands for, counting what its own aliases repeat."""
        self.composed = 0
        self.last_event: Event | None = None

    def get_event(self) -> Event:
        event: Event = super().get_event()  # type: ignore[misc]
        self.last_event = event
        return event

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: Event = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, AliasEvent):
            return self._alias(event, parent, index)
        nested = isinstance(event, CollectionStartEvent)
        if nested and self.depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep; an issue needs four", event)
        before = self.composed
        self.depth += nested
        node = super().compose_node(parent, index)
        self.depth -= nested
        self.composed += 1
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self.sizes[anchor] = self.composed - before
        return node

    def _alias(self, event: AliasEvent, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        anchor = str(event.anchor)
        if anchor in self.anchors and anchor not in self.sizes:
            raise _Refused(f"alias '*{anchor}' is inside the value it names", event)
        self.aliased += self.sizes.get(anchor, 0)
        self.composed += self.sizes.get(anchor, 0)
        if self.aliased > MAX_ALIASED:
            raise _Refused(
                f"aliases repeat more than {MAX_ALIASED} values (alias '*{anchor}' here); "
                "write the values out instead",
                event,
            )
        return super().compose_node(parent, index)


class _PyLoader(_Guarded, Reader, Scanner, Parser):
    """PyYAML's own parser, where libyaml is missing."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._start_guard()


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_Guarded, CParser):
        """libyaml's parser feeding the guarded composer."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_guard()

    _Loader: type[_CLoader] | type[_PyLoader] = _CLoader
else:
    _Loader = _PyLoader

_Guarded.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
"""No implicit timestamps: dates are validated later, with a location."""


def _pos(mark: Mark) -> Position:
    return Position(mark.line + 1, mark.column + 1)


@dataclass(frozen=True, slots=True)
class _Scalar:
    """Where one key or value stood, to find which field an invisible character sits in."""

    start: int
    end: int
    end_line: int
    path: Path


def _walk(
    node: yaml.Node,
    path: Path,
    located: LocatedData,
    problems: list[Problem],
    source: str,
    scalars: list[_Scalar],
) -> None:
    located.values[path] = _pos(node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        scalars.append(_Scalar(node.start_mark.index, node.end_mark.index, node.end_mark.line, path))
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, Position] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            key_pos = _pos(key_node.start_mark)
            scalars.append(
                _Scalar(
                    key_node.start_mark.index, key_node.end_mark.index, key_node.end_mark.line, (*path, key)
                )
            )
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
            _walk(value_node, (*path, key), located, problems, source, scalars)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            located.keys[(*path, index)] = _pos(item.start_mark)
            _walk(item, (*path, index), located, problems, source, scalars)


def dotted(path: Path) -> str:
    return ".".join(str(part) for part in path)


_BREAK = re.compile(r"\r\n|\r|\n")
UNSEEN = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]|(?!\\A)\ufeff"
)
"""What ``invisible_kind`` refuses but tab, LF and CR, plus a byte order mark past the start: as a
pattern, since every character of the file is looked at (a test keeps the two in step)."""


class _Invisible:
    """The characters of a text that no editor shows (and YAML refuses or reads as line breaks)."""

    def __init__(self, text: str) -> None:
        self.found = [(match.start(), match.group()) for match in UNSEEN.finditer(text)]
        self.line_starts = [0, *(match.end() for match in _BREAK.finditer(text))]

    def blanked(self, text: str) -> str:
        """``text`` with each of them read as a space: same length, same lines."""
        chars = list(text)
        for index, _ in self.found:
            chars[index] = " "
        return "".join(chars)

    def position(self, index: int) -> Position:
        line = bisect.bisect_right(self.line_starts, index)
        return Position(line, index - self.line_starts[line - 1] + 1)

    def problems(self, scalars: list[_Scalar], source: str) -> list[Problem]:
        """One problem per field (or per file, outside every field), at the first such character."""
        by_field: dict[Path | None, list[tuple[int, str]]] = defaultdict(list)
        scalars = sorted(scalars, key=lambda s: s.start)
        for index, char in self.found:
            by_field[self._field(index, scalars)].append((index, char))
        problems = []
        for path, found in by_field.items():
            index, char = found[0]
            kind = invisible_kind(char) or "a byte order mark inside the file"
            more = f" (and {len(found) - 1} more like it)" if len(found) > 1 else ""
            where = self.position(index)
            message = f"{char_name(char)} is {kind}{more}; delete it"
            problems.append(Problem(source, message, where.line, where.column, dotted(path or ())))
        return problems

    def _field(self, index: int, scalars: list[_Scalar]) -> Path | None:
        """The key or value holding ``index``, or the one that ends just before it on its line."""
        at = bisect.bisect_right(scalars, index, key=lambda s: s.start) - 1
        if at < 0:
            return None
        scalar = scalars[at]
        if index <= scalar.end or scalar.end_line == self.position(index).line - 1:
            return scalar.path
        return None


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str, source: str, last: Event | None) -> Problem:
    """Where the editor should look: the opening of what never closed, not where YAML gave up."""
    mark: Mark | None = exc.problem_mark or exc.context_mark
    at_end = mark is not None and mark.index >= len(text.rstrip())
    quote = _runaway_quote(last, mark)
    if at_end and exc.context_mark is not None:
        mark = exc.context_mark
        message = f"YAML syntax: {exc.context} was never closed ({exc.problem})"
    elif quote is not None:
        style, mark, closed = quote
        message = (
            f"YAML syntax: the {style} opened here is closed only on line {closed.line + 1}, "
            f"where YAML stops ({exc.problem}); is a closing {style} missing?"
        )
    else:
        message = f"YAML syntax: {exc.problem or exc.context}"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(source, message, line, column)


def _runaway_quote(last: Event | None, mark: Mark | None) -> tuple[str, Mark, Mark] | None:
    """The quote, opening and close of a quoted value that ran over lines to just before the error
    (so its closing quote is missing), or None."""
    if not isinstance(last, ScalarEvent) or last.style not in {'"', "'"} or mark is None:
        return None
    opened, closed = last.start_mark, last.end_mark
    if opened is None or closed is None or not opened.line < closed.line == mark.line:
        return None
    return str(last.style), opened, closed


def load_located(text: str, source: str) -> tuple[LocatedData | None, list[Problem]]:
    """Parse ``text``; return the data with positions, or ``None`` and the syntax problems."""
    invisible = _Invisible(text)
    loader = _Loader(invisible.blanked(text))
    problems: list[Problem] = []
    scalars: list[_Scalar] = []
    try:
        node = loader.get_single_node()
        located = LocatedData(None)
        if node is not None:
            _walk(node, (), located, problems, source, scalars)
            located.data = loader.construct_document(node)
        return located, invisible.problems(scalars, source) + problems
    except _Refused as exc:
        refused = Problem(source, f"YAML refused: {exc.message}", exc.position.line, exc.position.column)
        return None, [*invisible.problems(scalars, source), refused]
    except yaml.MarkedYAMLError as exc:
        return None, [
            *invisible.problems(scalars, source),
            _syntax_problem(exc, text, source, loader.last_event),
        ]
    except yaml.YAMLError as exc:
        return None, [*invisible.problems(scalars, source), Problem(source, f"YAML syntax: {exc}")]
    finally:
        loader.dispose()
