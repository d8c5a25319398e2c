"""Segments: the file is validated with located, suggestive errors; each rule selects exactly whom it says."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import update

from pipeline.audience.importer import import_csv
from pipeline.audience.segments import Segment, load_segments, parse_segments, resolve
from pipeline.audience.selection import count, explain, member_count
from pipeline.audience.subscribers import add_subscriber, list_subscribers, set_status
from pipeline.errors import AudienceError
from pipeline.store.engine import Store
from pipeline.store.tables import subscribers

PATH = "subscribers/segments.toml"


def names(store: Store, rule: str) -> set[str]:
    """Local parts of everyone the one-segment file ``rule`` matches."""
    segment = parse_segments(f"[segments.s]\n{rule}\n", PATH)["s"]
    return {p.email.split("@")[0] for p in list_subscribers(store, segments=segment, limit=None)}


@pytest.fixture
def people(store: Store) -> Store:
    def person(local: str, tags: list[str], zone: str | None = None, **attributes: str) -> None:
        add_subscriber(store, f"{local}@example.com", tags=tags, timezone=zone, attributes=attributes)

    person("ann", ["working-mom", "toddler"], "Europe/Berlin", city="Berlin", children="2")
    person("bea", ["working-mom", "new-parent", "toddler"], "Europe/London", city="London", children="1")
    person("cat", ["school-age"], "America/New_York", city="Boston", children="3")
    person("dee", [], None, city="Berlin")
    person("eve", ["toddler"], "America/Argentina/Salta")
    add_subscriber(store, "fay@example.com", tags=["toddler"], status="unconfirmed")
    return store


def test_the_shipped_segments_file_is_valid_and_matches_the_sample(store: Store, project: Path) -> None:
    defined = load_segments(project / PATH)
    for name in ("everyone", "working-moms", "new-parents", "toddlers", "school-age", "europe"):
        assert name in defined and defined[name].rule.description
    import_csv(store, project / "subscribers" / "sample.csv")
    counts = {name: count(store, name) for name in defined}
    assert counts["everyone"] == 50
    assert all(0 < n < 50 for name, n in counts.items() if name != "everyone"), counts


def test_tags_all_any_none(people: Store) -> None:
    assert names(people, 'tags.all = ["working-mom", "toddler"]') == {"ann", "bea"}
    assert names(people, 'tags.any = ["new-parent", "school-age"]') == {"bea", "cat"}
    assert names(people, 'tags.any = ["toddler"]\ntags.none = ["new-parent"]') == {"ann", "eve"}
    assert names(people, 'tags.none = ["toddler"]') == {"cat", "dee"}


def test_attributes_equals_and_in_compare_text(people: Store) -> None:
    assert names(people, 'attributes.equals = { city = "Berlin" }') == {"ann", "dee"}
    assert names(people, "attributes.in = { children = [2, 3] }") == {"ann", "cat"}
    assert names(people, 'attributes.equals = { city = "Berlin", children = "2" }') == {"ann"}
    assert names(people, 'attributes.equals = { nothing = "x" }') == set()


def test_timezones_by_name_or_region(people: Store) -> None:
    assert names(people, 'timezone = ["Europe/London"]') == {"bea"}
    assert names(people, 'timezone = ["Europe/*", "America/New_York"]') == {"ann", "bea", "cat"}
    assert names(people, 'timezone = ["America/Argentina/*"]') == {"eve"}


def test_join_dates_and_status(people: Store) -> None:
    old = dt.datetime(2024, 3, 10, 23, 30, tzinfo=dt.UTC)
    with people.write() as conn:
        conn.execute(
            update(subscribers).where(subscribers.c.email_key == "ann@example.com").values(created_at=old)
        )
    assert names(people, "joined_before = 2024-03-11") == {"ann"}
    assert names(people, "joined_before = 2024-03-10") == set()
    assert names(people, "joined_after = 2024-03-10") == {"bea", "cat", "dee", "eve"}
    assert names(people, "joined_after = 2024-03-09\njoined_before = 2024-03-11") == {"ann"}
    assert names(people, 'status = ["unconfirmed"]') == {"fay"}
    set_status(people, "cat@example.com", "unsubscribed", actor="test")
    assert "cat" not in names(people, "")
    assert names(people, 'status = ["active", "unsubscribed"]\ntags.any = ["school-age"]') == {"cat"}


def test_several_segments_are_a_union_counted_once(people: Store) -> None:
    segments = [parse_segments('[segments.a]\ntags.any = ["toddler"]\n', PATH)["a"]]
    segments.append(parse_segments('[segments.b]\ntimezone = ["Europe/*"]\n', PATH)["b"])
    assert member_count(people, segments) == 3  # ann, bea, eve: ann and bea are in both
    assert count(people, segments) == 3


def test_explain_shows_one_where_clause_with_the_values(people: Store, project: Path) -> None:
    sql = explain(people, "toddlers")
    assert sql.startswith("SELECT count(*)") and "'toddler'" in sql and "'new-parent'" in sql
    assert sql.count("WHERE") == 4  # the audience's, and EXISTS for suppression and each tag condition


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[segments.toddlers]\ntags.al = ["toddler"]\n',
            f"{PATH}:2: error: segments.toddlers.tags.al: unknown key 'al' (did you mean 'all'?)",
        ),
        (
            "[segments.x]\ndescription = 'x'\n\n[segments.x.attributes]\nequal = {a = 'b'}\n",
            f"{PATH}:5: error: segments.x.attributes.equal: unknown key 'equal' (did you mean 'equals'?)",
        ),
        (
            '[segments.x]\ntimezone = ["Europe/Berln"]\n',
            "segments.x.timezone.0: unknown time zone 'Europe/Berln'",
        ),
        (
            '[segments.x]\ntimezone = ["Mars/*"]\n',
            "segments.x.timezone.0: no IANA time zone starts with 'Mars/'",
        ),
        ('[segments.x]\nstatus = ["gone"]\n', "segments.x.status.0: input should be 'unconfirmed', 'active'"),
        (
            "[segments.x]\njoined_after = 2025-01-02\njoined_before = 2025-01-01\n",
            "joined_after must be earlier",
        ),
        (
            "[segments.x]\njoined_after = 'last week'\n",
            "segments.x.joined_after: input should be a valid date",
        ),
        ("[segments.Bad_Name]\n", "segments.Bad_Name: segment names are lower-case words joined by '-'"),
        ("[segment.x]\n", f"{PATH}: error: segment: unknown key 'segment'; allowed: segments"),
        ("[segments.x\n", f"{PATH}: error: TOML syntax"),
    ],
)
def test_mistakes_in_the_file_name_the_segment_and_key(toml: str, expected: str) -> None:
    with pytest.raises(AudienceError) as raised:
        parse_segments(toml, PATH)
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(AudienceError) as raised:
        parse_segments("[segments.a]\ntags.al = []\n[segments.b]\nstatuses = []\n", PATH)
    assert str(raised.value).splitlines() == [
        f"{PATH}:2: error: segments.a.tags.al: unknown key 'al' (did you mean 'all'?)",
        f"{PATH}:4: error: segments.b.statuses: unknown key 'statuses' (did you mean 'status'?)",
    ]


def test_an_undefined_segment_names_the_closest_one(store: Store) -> None:
    with pytest.raises(
        AudienceError, match=r"segments.todlers: no such segment \(did you mean 'toddlers'\?\)"
    ):
        resolve(store, "todlers")
    with pytest.raises(AudienceError, match="no such segment; defined: everyone, working-moms"):
        count(store, ["everyone", "zzz"])


def test_without_a_segments_file_the_packaged_default_is_everyone(tmp_path: Path) -> None:
    segments = load_segments(tmp_path / "segments.toml")

    assert list(segments) == ["everyone"]
    with pytest.raises(AudienceError, match=r"segments\.toml \(not found: the packaged default\): error: "):
        segments["toddlers"]


def test_segment_objects_need_no_file(people: Store) -> None:
    people.segments_file = None
    rule = parse_segments('[segments.t]\ntags.any = ["toddler"]\n', PATH)["t"]
    assert isinstance(rule, Segment) and count(people, rule) == 3
    with pytest.raises(AudienceError, match="opened without a segments file"):
        count(people, "everyone")
