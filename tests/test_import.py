"""CSV import on SQLite and PostgreSQL: every malformed file is a clear error that changes nothing."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.audience.exporter import export_subscribers
from pipeline.audience.fields import is_control
from pipeline.audience.importer import BATCH_ROWS, import_csv
from pipeline.audience.subscribers import erase, get_subscriber, list_subscribers, set_status, subscriber_log
from pipeline.errors import AudienceError, ImportRejected
from pipeline.store.engine import Store, connect
from tests.fixtures.store import TEST_KEY, snapshot

HEADER = "email,name,tags,timezone,city\n"


def write(tmp_path: Path, content: str | bytes, name: str = "people.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def rejected(store: Store, path: Path, error: type[BaseException] = AudienceError, **options: object) -> str:
    """The error message of an import that must fail, after checking the store did not change."""
    before = snapshot(store)
    with pytest.raises(error) as raised:
        import_csv(store, path, **options)  # type: ignore[arg-type]
    assert snapshot(store) == before
    return str(raised.value)


def test_the_sample_list_imports_cleanly(store: Store, project: Path) -> None:
    result = import_csv(store, project / "subscribers" / "sample.csv")
    assert (result.added, result.rejected, result.suppressed) == (50, 0, 0)
    zoe = get_subscriber(store, "zoe.martin@example.org")
    assert (zoe.name, zoe.tags, zoe.timezone) == (
        "Zoë Martin",
        ("new-parent", "working-mom"),
        "Europe/London",
    )
    assert zoe.attributes == {"city": "London", "children": "1"}
    assert zoe.status == "active" and zoe.source == "import:sample.csv"
    assert [(e.kind, e.detail) for e in subscriber_log(store, zoe.id)] == [("imported", {"line": 3})]
    again = import_csv(store, project / "subscribers" / "sample.csv")
    assert (again.added, again.unchanged) == (0, 50)


def test_bad_rows_are_all_listed_with_file_and_line_and_nothing_is_imported(
    store: Store, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        HEADER + "ok@example.com,Ok,,,\nnot-an-address,X,,,\nz@example.com,Z,,Mars/Base,\nq@,Q,a||b,,\n",
    )
    message = rejected(store, path, ImportRejected)
    lines = message.splitlines()
    assert lines[0].startswith(f"{path}:3: error: email: 'not-an-address' is not a valid email address")
    assert (
        lines[1]
        == f"{path}:4: error: timezone: unknown time zone 'Mars/Base' (use an IANA name such as Europe/London)"
    )
    assert lines[2].startswith(f"{path}:5: error: email: 'q@' is not a valid email address")
    assert len(lines) == 3


def test_duplicates_in_the_file_name_both_lines(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path, HEADER + "ana@example.com,Ana,,,\nb@example.com,B,,,\nANA@Example.com,Ana again,,,\n"
    )
    assert rejected(store, path, ImportRejected) == (
        f"{path}:4: error: email: 'ANA@example.com' is a duplicate of line 2 (letter case is ignored)"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "error: empty file"),
        (b"\n\n  \n", "error: empty file"),
        (b"name,city\nAna,Oslo\n", ":1: error: no 'email' column; the header has: name, city"),
        (b"ana@example.com,Ana\n", ":1: error: the first line looks like data, not a header"),
        (
            b"email\tname\na@example.com\tA\n",
            ":1: error: the header is one column 'email\\tname' with tab in it",
        ),
        (b"email,name,email\n", ":1: error: column(s) named more than once: email"),
        (b"email,,name\n", ":1: error: column 2 of the header has no name"),
        (b"email,name\nzo\xeb@example.com,Zo\xeb\n", ":2:3: error: not UTF-8 text (byte 0xeb)"),
        (b'email,name\n"a@example.com,A\n', "error: CSV syntax"),
    ],
    ids=["empty", "blank", "no-email", "no-header", "tabs", "twice", "unnamed", "latin-1", "quote"],
)
def test_malformed_files_are_clear_errors_that_change_nothing(
    store: Store, tmp_path: Path, content: bytes, expected: str
) -> None:
    path = write(tmp_path, content)
    message = rejected(store, path)
    assert message.startswith(str(path)) and expected in message


def test_a_row_with_the_other_delimiter_is_explained(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "email,name\na@example.com;Ann\n")
    assert "has 1 fields but the header has 2 (is this row separated by ';'?)" in rejected(
        store, path, ImportRejected
    )


def test_semicolons_bom_crlf_and_quoted_fields_are_read(store: Store, tmp_path: Path) -> None:
    content = '\ufeffEmail;Name;Tags;TimeZone;City\r\na@example.com;"Smith; Ann";x|y;Europe/Paris;"Saint-\r\nDenis"\r\n'
    path = write(tmp_path, content.encode("utf-8"))
    assert import_csv(store, path).added == 1
    ann = get_subscriber(store, "a@example.com")
    assert (ann.name, ann.tags, ann.timezone) == ("Smith; Ann", ("x", "y"), "Europe/Paris")
    assert ann.attributes == {"City": "Saint-\r\nDenis"}


def test_internationalised_addresses_are_accepted(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "email\n用户@例子.广告\nZoë@Bücher.DE\n")
    assert import_csv(store, path).added == 2
    assert get_subscriber(store, "zoë@bücher.de").email == "Zoë@bücher.de"


def test_a_huge_file_with_one_bad_row_imports_nothing(store: Store, tmp_path: Path) -> None:
    rows = [f"person{i}@example.com,Person {i},tag{i % 7},Europe/Berlin,Town\n" for i in range(25_000)]
    rows[21_345] = "person21345@example..com,Bad,,,\n"
    path = write(tmp_path, HEADER + "".join(rows))
    message = rejected(store, path, ImportRejected)
    assert message.startswith(f"{path}:21347: error: email: 'person21345@example..com'")
    assert len(message.splitlines()) == 1


def test_skip_invalid_imports_the_good_rows_and_writes_the_bad_ones(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "a@example.com,A,,,Oslo\nbad,B,,,Rome\nb@example.com,B,,Nowhere,\n")
    result = import_csv(store, path, skip_invalid=True, rejects=tmp_path / "rejects.csv")
    assert (result.added, result.rejected) == (1, 2)
    assert [str(p).split(": error: ")[0] for p in result.problems] == [f"{path}:3", f"{path}:4"]
    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [(row["email"], row["city"]) for row in written] == [("bad", "Rome"), ("b@example.com", "")]
    assert written[0]["reason"].startswith("'bad' is not a valid email address")
    assert written[1]["reason"].startswith("unknown time zone 'Nowhere'")


def test_a_crash_midway_leaves_the_store_as_it_was(store: Store, tmp_path: Path) -> None:
    rows = "".join(f"p{i}@example.com,P,,,\n" for i in range(BATCH_ROWS * 2 + 10))
    path = write(tmp_path, HEADER + rows)

    def crash(done: int, total: int) -> None:
        raise KeyboardInterrupt

    rejected(store, path, KeyboardInterrupt, progress=crash)


# --- consent ---------------------------------------------------------------------------------------------


def test_an_import_never_brings_back_people_who_left(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "".join(f"{who}@example.com,{who},,,\n" for who in ("u", "b", "c", "a")))
    import_csv(store, path)
    for who, status in (("u", "unsubscribed"), ("b", "bounced"), ("c", "complained")):
        set_status(store, f"{who}@example.com", status, actor="webhook")
    again = write(
        tmp_path, "email,name,status\nU@example.com,New U,active\nb@example.com,,active\nc@example.com,,\n"
    )
    result = import_csv(store, again, update=True, status="active")
    assert (result.suppressed, result.updated, result.added) == (3, 0, 0)
    assert "an import never resubscribes people who left" in str(result.skipped[0])
    assert [p.status for p in list_subscribers(store)] == ["unsubscribed", "bounced", "complained", "active"]
    assert get_subscriber(store, "u@example.com").name == "u"


def test_an_erased_address_is_never_imported_again(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "gone@example.com,Gone,,,Oslo\nstay@example.com,Stay,,,\n")
    import_csv(store, path)
    erase(store, "gone@example.com")
    result = import_csv(store, write(tmp_path, HEADER + "GONE@example.com,Gone,,,\n", "old.csv"))
    assert (result.added, result.suppressed) == (0, 1)
    assert str(result.skipped[0]).endswith(
        "old.csv:2: error: the address is on the suppression list (erased or blocked)"
    )
    assert [p.email for p in list_subscribers(store)] == ["stay@example.com"]


def test_a_file_can_withdraw_consent_but_confirms_only_with_update(store: Store, tmp_path: Path) -> None:
    import_csv(store, write(tmp_path, "email\nw@example.com\nu@example.com\n"), status="unconfirmed")
    withdraw = write(tmp_path, "email,status\nw@example.com,unsubscribed\nu@example.com,active\n", "2.csv")
    assert import_csv(store, withdraw).updated == 1
    assert get_subscriber(store, "w@example.com").status == "unsubscribed"
    assert get_subscriber(store, "u@example.com").status == "unconfirmed"
    assert import_csv(store, withdraw, update=True).updated == 1
    assert get_subscriber(store, "u@example.com").status == "active"


def test_update_refreshes_profile_fields_and_counts(store: Store, tmp_path: Path) -> None:
    import_csv(
        store, write(tmp_path, HEADER + "a@example.com,Ann,x|y,Europe/Oslo,Oslo\nb@example.com,Bo,,,\n")
    )
    changed = write(
        tmp_path, "email,name,tags,city,kids\nA@example.com,Ann B,y|z,,2\nb@example.com,Bo,,,\n", "2.csv"
    )
    assert (import_csv(store, changed).unchanged, get_subscriber(store, "a@example.com").name) == (2, "Ann")
    result = import_csv(store, changed, update=True, tags=["vip"])
    assert (result.updated, result.unchanged) == (2, 0)
    ann = get_subscriber(store, "a@example.com")
    assert (ann.name, ann.tags, ann.timezone, ann.attributes) == (
        "Ann B",
        ("vip", "y", "z"),
        "Europe/Oslo",
        {"kids": "2"},
    )
    assert subscriber_log(store, ann.id)[-1].detail == {"line": 2, "fields": ["attributes", "name", "tags"]}
    assert get_subscriber(store, "b@example.com").tags == ("vip",)


def test_bad_options_are_refused(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, HEADER)
    assert "not 'bounced'" in rejected(store, path, status="bounced")
    assert "--tag: tag 'a|b'" in rejected(store, path, tags=["a|b"])
    assert "cannot read" in rejected(store, tmp_path / "missing.csv")


# --- round trip ---------------------------------------------------------------------------------------------

# Characters an import takes (it refuses invisible ones, e.g. U+FFFE, which hypothesis found here).
_char = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")).filter(
    lambda char: not is_control(char)
)
_text = st.text(_char, max_size=12).map(str.strip)
_person = st.fixed_dictionaries(
    {
        "local": st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9+_-]{1,5})?", fullmatch=True),
        "domain": st.sampled_from(["example.com", "Example.ORG", "bücher.de"]),
        "name": _text,
        "tags": st.lists(st.sampled_from(["a", "b-c", "ü", "x y"]), unique=True, max_size=3),
        "timezone": st.sampled_from(["", "Europe/Berlin", "America/New_York"]),
        "status": st.sampled_from(["active", "unconfirmed", "unsubscribed", "complained"]),
        "attributes": st.dictionaries(
            st.sampled_from(["city", "kids", "Plan"]), _text.filter(bool), max_size=2
        ),
    }
)


def _people(store: Store) -> list[tuple[object, ...]]:
    return [
        (p.email, p.name, p.tags, p.timezone, p.status, p.attributes)
        for p in list_subscribers(store, limit=None)
    ]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_person, max_size=6, unique_by=lambda p: str(p["local"])))
def test_export_then_import_round_trips(people: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.csv"
        with source.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "name", "tags", "timezone", "status", "city", "kids", "Plan"])
            for p in people:
                attributes: dict[str, str] = p["attributes"]
                cells = [
                    f"{p['local']}@{p['domain']}",
                    p["name"],
                    "|".join(p["tags"]),
                    p["timezone"],
                    p["status"],
                ]
                writer.writerow(cells + [attributes.get(k, "") for k in ("city", "kids", "Plan")])
        with (
            connect(f"sqlite:///{folder}/a.db", TEST_KEY) as first,
            connect(f"sqlite:///{folder}/b.db", TEST_KEY) as second,
        ):
            assert import_csv(first, source).added == len(people)
            exported = Path(folder) / "out.csv"
            with exported.open("w", encoding="utf-8", newline="") as out:
                assert export_subscribers(first, out) == len(people)
            assert import_csv(second, exported).added == len(people)
            assert _people(second) == _people(first)
            json_out = io.StringIO()
            export_subscribers(second, json_out, format="json")
            assert len(json.loads(json_out.getvalue())) == len(people)
