"""Reading a subscriber CSV as people save it: UTF-8 with or without BOM, comma or semicolon, any size.

The file is streamed line by line, so a bad byte is reported with its line and a million rows never sit
in memory. The header decides the delimiter (whichever of ``,`` and ``;`` it has more of) and which
column is which; every problem with the header is an ``AudienceError`` naming the file and line 1.

Cells are guarded against spreadsheet formulas the way OWASP recommends for CSV files: our CSVs
(exports, rejects) prefix ``'`` to a cell that starts with ``= + - @``, a tab or a carriage return,
and reading takes exactly that prefix off again, so export → import is lossless.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.audience.fields import controls, visible
from pipeline.errors import AudienceError, Problem

CORE_COLUMNS = ("email", "name", "tags", "timezone", "status")
"""Columns with a meaning of their own; every other column becomes an attribute."""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets."""
GUARD = "'"
CSV_LINE_END = "\r\n"
"""Rows we write end as RFC 4180 says; Python's csv module then also quotes a value holding a lone
carriage return, which with a plain newline it would write bare, splitting the row on reading."""
_MAY_NEED_GUARD = frozenset([GUARD, *FORMULA_STARTS])


def guard_cell(value: str) -> str:
    """``value`` as a CSV cell no spreadsheet runs as a formula: ``=1+2`` → ``'=1+2``.

    A value that already starts with apostrophes before a formula character gets one more, so
    ``unguard_cell`` can always take exactly one off: ``'=x`` → ``''=x`` → ``'=x``.
    """
    if value[:1] not in _MAY_NEED_GUARD:  # nearly every cell: one set lookup
        return value
    return GUARD + value if value.lstrip(GUARD).startswith(FORMULA_STARTS) else value


def unguard_cell(cell: str) -> str:
    """The value ``guard_cell`` guarded; any other cell unchanged."""
    if cell.startswith(GUARD) and cell.lstrip(GUARD).startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each core column is in a row (None if absent), and the attribute columns by name."""

    header: list[str]
    delimiter: str
    email: int
    name: int | None
    tags: int | None
    timezone: int | None
    status: int | None
    attributes: list[tuple[int, str]] = field(default_factory=list)


def _columns(path: str, cells: list[str], delimiter: str) -> Columns:
    names = [unguard_cell(cell.strip()) for cell in cells]
    other = ";" if delimiter == "," else ","
    problem = None
    if len(names) == 1 and (other in names[0] or "\t" in names[0]):
        found = "tab" if "\t" in names[0] else f"'{other}'"
        problem = f"the header is one column '{visible(names[0], 60)}' with {found} in it: separate columns with ',' or ';'"
    elif any("@" in name for name in names):
        problem = (
            "the first line looks like data, not a header: add a first line such as email,name,tags,timezone"
        )
    elif "" in names:
        problem = f"column {names.index('') + 1} of the header has no name"
    elif any(controls(name) for name in names):
        bad = next(i for i, name in enumerate(names) if controls(name))
        problem = f"column {bad + 1} of the header ('{visible(names[bad])}') has control characters"
    elif len({n.lower() for n in names}) != len(names):
        twice = sorted({n for n in names if [m.lower() for m in names].count(n.lower()) > 1})
        problem = f"column(s) named more than once: {', '.join(twice)}"
    elif "email" not in {n.lower() for n in names}:
        problem = f"no 'email' column; the header has: {', '.join(names)}"
    if problem:
        raise AudienceError(str(Problem(path, problem, line=1)))
    index = {name.lower(): i for i, name in enumerate(names)}
    attributes = [(i, name) for i, name in enumerate(names) if name.lower() not in CORE_COLUMNS]
    return Columns(
        names,
        delimiter,
        index["email"],
        index.get("name"),
        index.get("tags"),
        index.get("timezone"),
        index.get("status"),
        attributes,
    )


class CsvSource:
    """Rows of one CSV file as ``(line, cells)``; ``columns`` describes the header once it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        try:
            self.total_bytes = path.stat().st_size
        except OSError as exc:
            raise AudienceError(f"{path}: error: cannot read: {exc.strerror or exc}") from None
        self.bytes_read = 0
        self.delimiter = ","
        self.columns: Columns | None = None

    def _lines(self, handle: BinaryIO) -> Iterator[str]:
        for number, raw in enumerate(handle, 1):
            self.bytes_read += len(raw)
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[: exc.start].decode("utf-8", "replace")) + 1
                message = (
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8 "
                    "(in Excel: CSV UTF-8), it may be Latin-1 or Windows-1252"
                )
                raise AudienceError(str(Problem(self.name, message, number, column))) from None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Every data row with the line it starts on; blank lines are skipped."""
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise AudienceError(f"{self.path}: error: cannot read: {exc.strerror or exc}") from None
        with handle:
            lines = self._lines(handle)
            first = next(lines, "")
            if not first.strip():
                if all(not line.strip() for line in lines):
                    raise AudienceError(
                        f"{self.name}: error: empty file: expected a header line such as email,name,tags,timezone"
                    )
                raise AudienceError(
                    str(Problem(self.name, "the first line must be the header, not blank", 1))
                )
            self.delimiter = ";" if first.count(";") > first.count(",") else ","
            reader = csv.reader(_prepend(first, lines), delimiter=self.delimiter, strict=True)
            end = 0
            try:
                self.columns = _columns(self.name, next(reader), self.delimiter)
                end = reader.line_num
                for cells in reader:
                    start, end = end + 1, reader.line_num
                    if cells:
                        yield start, cells
            except csv.Error as exc:
                hint = " (a quote opened here is never closed)" if "end of data" in str(exc) else ""
                problem = Problem(self.name, f"CSV syntax: {exc}{hint}", end + 1)
                raise AudienceError(str(problem)) from None


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
