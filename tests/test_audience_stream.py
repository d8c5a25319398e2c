"""The audience stream's pages are ranges of ids: every rule reads the same people as one statement."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.audience.selection import audience, segment_select
from pipeline.audience.subscribers import add_subscriber, erase
from pipeline.store.engine import Store
from pipeline.store.tables import subscribers

RULES = """
[segments.any-two]
tags.any = ["two", "three"]

[segments.all-two]
tags.all = ["two", "three"]

[segments.none-two]
tags.none = ["two"]

[segments.mixed]
tags.any = ["three"]
tags.none = ["five"]
"""


@pytest.fixture
def tag_rules(project: Path) -> None:
    """Segments of every kind of tag rule, added to the test project's segments.toml."""
    with (project / "subscribers" / "segments.toml").open("a", encoding="utf-8") as handle:
        handle.write(RULES)


def people(store: Store, size: int) -> list[int]:
    """``size`` people q0…, tagged two / three / five by what divides their number."""
    ids = []
    for i in range(size):
        tags = [name for name, n in (("two", 2), ("three", 3), ("five", 5)) if i % n == 0]
        ids.append(add_subscriber(store, f"q{i}@example.com", tags=tags).id)
    return ids


def one_statement(store: Store, segments: str | list[str]) -> list[int]:
    """The audience as the whole-table statement (count, freeze) reads it."""
    with store.read() as conn:
        return list(conn.execute(segment_select(store, segments).order_by(subscribers.c.id)).scalars())


@pytest.mark.parametrize("segments", ["any-two", "all-two", "none-two", "mixed", ["all-two", "mixed"]])
def test_every_page_size_streams_what_one_statement_selects(
    store: Store, tag_rules: None, segments: str | list[str]
) -> None:
    people(store, 31)
    expected = one_statement(store, segments)
    assert expected  # each rule matches somebody, so the comparison can fail
    for page_size in (1, 2, 3, 7, 30, 31, 1000):
        assert [r.subscriber_id for r in audience(store, segments, page_size=page_size)] == expected


def test_a_gap_in_the_ids_wider_than_a_page_is_crossed(store: Store) -> None:
    ids = people(store, 20)
    for i in range(4, 15):  # ids 4..14 gone: a gap of eleven, pages of three
        erase(store, f"q{i}@example.com")
    got = [r.subscriber_id for r in audience(store, "everyone", page_size=3)]
    assert got == ids[:4] + ids[15:]


def test_someone_who_joins_during_the_stream_is_in_it(store: Store) -> None:
    ids = people(store, 5)
    stream = audience(store, "everyone", page_size=2)
    first = next(stream)
    late = add_subscriber(store, "late@example.com").id
    assert [first.subscriber_id, *(r.subscriber_id for r in stream)] == [*ids, late]


def test_an_empty_audience_streams_nothing(store: Store) -> None:
    assert list(audience(store, "everyone")) == []
