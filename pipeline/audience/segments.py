"""Named audience segments from ``subscribers/segments.toml``, each compiled to one SQL WHERE clause.

A segment is a rule over status (``active`` unless it says otherwise), tags (``all`` / ``any`` /
``none``), attributes (``equals`` / ``in``), time zone and join date. Rules are validated with pydantic
(unknown keys rejected with a "did you mean"), and compiled to SQL so the database, not Python, filters
a million subscribers.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from sqlalchemy import ColumnElement, and_, exists, false, or_, select

from pipeline.audience.fields import is_timezone, is_timezone_region
from pipeline.content.newproject import DEFAULT_SEGMENTS
from pipeline.errors import AudienceError, Problem
from pipeline.store.statuses import SubscriberStatus
from pipeline.store.tables import subscriber_tags, subscribers
from pipeline.validation import field_errors

if TYPE_CHECKING:
    from pipeline.store.engine import Store

NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _timezone_pattern(value: str) -> str:
    if value.endswith("/*"):
        if not is_timezone_region(value[:-2]):
            raise ValueError(f"no IANA time zone starts with '{value[:-1]}'")
    elif not is_timezone(value):
        raise ValueError(f"unknown time zone '{value}' (use an IANA name such as Europe/Berlin, or Europe/*)")
    return value


def _as_text(value: Any) -> Any:
    """Attributes come from CSV columns, so they are text; ``children = 1`` means the text "1"."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Tag = Annotated[str, Field(min_length=1)]
Text = Annotated[str, BeforeValidator(_as_text)]
TimeZonePattern = Annotated[str, AfterValidator(_timezone_pattern)]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TagRule(_Rule):
    all: list[Tag] = Field([], description="The subscriber has every one of these tags.")
    any: list[Tag] = Field([], description="The subscriber has at least one of these tags.")
    none: list[Tag] = Field([], description="The subscriber has none of these tags.")


class AttributeRule(_Rule):
    equals: dict[str, Text] = Field({}, description="Attribute name → the exact text it must have.")
    in_: dict[str, list[Text]] = Field({}, alias="in", description="Attribute name → accepted texts.")


class SegmentRule(_Rule):
    """One segment as written in segments.toml; every condition given must hold (AND)."""

    description: str = Field("", description="What the segment is for, shown by `newsletter segments`.")
    status: list[SubscriberStatus] = Field(
        [SubscriberStatus.ACTIVE], min_length=1, description="Accepted subscription states."
    )
    tags: TagRule = TagRule()
    attributes: AttributeRule = AttributeRule()
    timezone: list[TimeZonePattern] = Field(
        [],
        description="IANA zones (Europe/Berlin) or regions (Europe/*); subscribers without one never match.",
    )
    joined_after: dt.date | None = Field(None, description="Joined after this day (UTC), not on it.")
    joined_before: dt.date | None = Field(None, description="Joined before this day (UTC), not on it.")

    @model_validator(mode="after")
    def _dates_in_order(self) -> SegmentRule:
        if self.joined_after and self.joined_before and self.joined_after >= self.joined_before:
            raise ValueError("joined_after must be earlier than joined_before, or no one can match")
        return self


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


IdRange = tuple[ColumnElement[int], ColumnElement[int]]
"""``(low, high)``: the subscriber ids above ``low`` up to ``high``, one page of a stream."""


def _tagged(tags: Iterable[str], *, paged: bool, within: IdRange | None = None) -> ColumnElement[bool]:
    """Has one of ``tags``: three SQL forms of one condition, each the fast one for its kind of query.

    For a whole-table statement (count, INSERT … SELECT), ``id IN (…)`` reads the range of the
    (tag, subscriber_id) index once. For keyset pages that subquery would be read again for every
    page, so pages use a correlated EXISTS: one key probe per row the page looks at. A page that is a
    range of ids (``within``) bounds the subquery by the same range: it reads just that slice of the
    index, and a stream of such pages costs what one whole-table statement does.
    """
    has = subscriber_tags.c.tag.in_(tags)
    if within is not None:
        low, high = within
        ids = subscriber_tags.c.subscriber_id
        return subscribers.c.id.in_(select(ids).where(has, ids > low, ids <= high))
    if paged:
        return exists().where(subscriber_tags.c.subscriber_id == subscribers.c.id, has)
    return subscribers.c.id.in_(select(subscriber_tags.c.subscriber_id).where(has))


def _untagged(tags: Iterable[str]) -> ColumnElement[bool]:
    """A correlated NOT EXISTS: an anti-join on PostgreSQL, one key probe per candidate on SQLite."""
    mine = subscriber_tags.c.subscriber_id == subscribers.c.id
    return ~exists().where(mine, subscriber_tags.c.tag.in_(tags))


def _conditions(rule: SegmentRule, paged: bool, within: IdRange | None) -> Iterator[ColumnElement[bool]]:
    c = subscribers.c
    yield c.status.in_(rule.status)
    yield from (_tagged([tag], paged=paged, within=within) for tag in rule.tags.all)
    if rule.tags.any:
        yield _tagged(rule.tags.any, paged=paged, within=within)
    if rule.tags.none:
        yield _untagged(rule.tags.none)
    for key, value in rule.attributes.equals.items():
        yield c.attributes[key].as_string() == value
    for key, values in rule.attributes.in_.items():
        yield c.attributes[key].as_string().in_(values)
    if rule.timezone:
        zones = [z for z in rule.timezone if not z.endswith("/*")]
        regions = [z[:-1] for z in rule.timezone if z.endswith("/*")]
        parts = [c.timezone.startswith(region, autoescape=True, escape="!") for region in regions]
        yield or_(c.timezone.in_(zones), *parts) if zones else or_(*parts)
    if rule.joined_after:
        yield c.created_at >= _midnight(rule.joined_after + dt.timedelta(days=1))
    if rule.joined_before:
        yield c.created_at < _midnight(rule.joined_before)


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    rule: SegmentRule

    def where(self, *, paged: bool = False, within: IdRange | None = None) -> ColumnElement[bool]:
        """The segment as one SQL condition over ``subscribers`` (``paged``, ``within``: see ``_tagged``)."""
        return and_(*_conditions(self.rule, paged, within))


class Segments(Mapping[str, Segment]):
    """Every segment of one file, by name; looking up an unknown name says which names exist."""

    def __init__(self, path: str, segments: dict[str, Segment]) -> None:
        self.path = path
        self._segments = segments

    def __getitem__(self, name: str) -> Segment:
        try:
            return self._segments[name]
        except KeyError:
            names = list(self._segments)
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; defined: {', '.join(names) or 'none'}"
            raise AudienceError(f"{self.path}: error: segments.{name}: no such segment{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._segments)

    def __len__(self) -> int:
        return len(self._segments)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it: shorter messages."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _line_of(lines: list[str], name: str, keys: tuple[str | int, ...]) -> int | None:
    """Best-effort line of ``keys`` inside segment ``name`` (tomllib keeps no positions)."""
    header = re.compile(rf"^\s*\[\s*segments\s*\.\s*\"?{re.escape(name)}\"?\s*[\].]")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return None
    words = [str(k) for k in keys if isinstance(k, str)]
    if words:
        key = re.compile(rf"(^|[\s.{{,]){re.escape(words[-1])}\s*[=.]")
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("[") and not header.match(lines[i]):
                break
            if key.search(lines[i]):
                return i + 1
    return start + 1


def parse_segments(text: str, path: str) -> Segments:
    """Validate segments.toml text; every problem is reported together, each naming segment and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AudienceError(f"{path}: error: TOML syntax: {exc}") from None
    problems = [
        Problem(path, f"unknown key '{key}'; allowed: segments", field=key)
        for key in raw
        if key != "segments"
    ]
    tables = raw.get("segments", {})
    if not isinstance(tables, dict):
        problems.append(Problem(path, "must be a table of named segments", field="segments"))
        tables = {}
    lines = text.splitlines()
    segments: dict[str, Segment] = {}
    for name, body in tables.items():
        prefix = f"segments.{name}"
        if not NAME.match(name):
            problems.append(Problem(path, "segment names are lower-case words joined by '-'", field=prefix))
            continue
        try:
            segments[name] = Segment(name, SegmentRule.model_validate(body))
        except ValidationError as exc:
            for error in field_errors(exc, SegmentRule):
                field = ".".join([prefix, *map(str, error.path)])
                problems.append(Problem(path, error.message, _line_of(lines, name, error.path), field=field))
    if problems:
        raise AudienceError("\n".join(map(str, problems)))
    return Segments(path, segments)


def load_segments(path: Path) -> Segments:
    """Read and validate the segments file; a project without one has the packaged default (everyone)."""
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = DEFAULT_SEGMENTS.read_text(encoding="utf-8")
        shown = f"{shown} (not found: the packaged default)"
    except (OSError, UnicodeDecodeError) as exc:
        raise AudienceError(f"{shown}: error: cannot read: {exc}") from None
    return parse_segments(text, shown)


SegmentSpec = str | Segment | Iterable[str | Segment]
"""A segment or several, by name (looked up in the store's segments file) or already loaded."""


def resolve(store: Store, spec: SegmentSpec) -> list[Segment]:
    """The segments ``spec`` names, loading the store's segments file only if a name needs it."""
    items: list[str | Segment] = [spec] if isinstance(spec, str | Segment) else list(spec)
    if not items:
        raise AudienceError("no segment given: name at least one")
    loaded: Segments | None = None
    result: list[Segment] = []
    for item in items:
        if isinstance(item, str):
            if loaded is None:
                if store.segments_file is None:
                    raise AudienceError(f"segment '{item}': this store was opened without a segments file")
                loaded = load_segments(store.segments_file)
            item = loaded[item]
        result.append(item)
    return result


def where(
    segments: Iterable[Segment], *, paged: bool = False, within: IdRange | None = None
) -> ColumnElement[bool]:
    """Anyone in any of ``segments`` (one OR of each segment's clause); no segment matches no one."""
    clauses = [segment.where(paged=paged, within=within) for segment in segments]
    return or_(*clauses) if clauses else false()
