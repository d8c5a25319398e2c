"""The batched import (issue 16) keeps every guarantee of the row-by-row one, on SQLite and PostgreSQL.

Files here are longer than one batch (``BATCH_ROWS``), so every rule is checked where a batch ends:
duplicates named with the line they repeat however far back it is, people who left never touched,
erased addresses kept out by their keyed hash, ``--update`` on people spread over batches, ids never
handed out twice, and a failure anywhere leaving the store (and the next import) as it was.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from pipeline.audience.bulk import IMPORT_CACHE_MB, Bulk
from pipeline.audience.importer import _EVENTS, BATCH_ROWS, _attributes_json, import_csv
from pipeline.audience.subscribers import (
    add_subscriber,
    erase,
    get_subscriber,
    list_subscribers,
    set_status,
    subscriber_log,
)
from pipeline.errors import ImportRejected, StoreError
from pipeline.store.engine import Store, utcnow
from pipeline.store.tables import subscriber_events, subscribers
from tests.fixtures.store import all_text, snapshot
from tests.test_import import rejected, write

HEADER = "email,name,tags,city\n"


def people(count: int, *, start: int = 0, name: str = "P") -> list[str]:
    """``count`` CSV rows of distinct people, line 2 onwards: person N is on line N + 2 - start."""
    return [f"p{i}@example.com,{name} {i},t{i % 3},Town\n" for i in range(start, start + count)]


def test_duplicates_within_a_batch_and_across_batches_name_the_first_line(
    store: Store, tmp_path: Path
) -> None:
    rows = people(BATCH_ROWS + 100)
    rows[8] = "P3@Example.com,Again,,\n"  # line 10 repeats line 5, in the same batch
    rows[BATCH_ROWS + 10] = "p1@EXAMPLE.com,Later,,\n"  # line 5012 repeats line 3, a batch earlier
    rows[BATCH_ROWS + 20] = "p1@example.com,Twice,,\n"  # and line 5022 too: named after line 3 again
    path = write(tmp_path, HEADER + "".join(rows))

    message = rejected(store, path, ImportRejected)

    assert message.splitlines() == [
        f"{path}:10: error: email: 'P3@example.com' is a duplicate of line 5 (letter case is ignored)",
        f"{path}:{BATCH_ROWS + 12}: error: email: 'p1@example.com' is a duplicate of line 3 (letter case "
        "is ignored)",
        f"{path}:{BATCH_ROWS + 22}: error: email: 'p1@example.com' is a duplicate of line 3 (letter case "
        "is ignored)",
    ]


def test_skip_invalid_imports_first_occurrences_and_writes_bad_rows_in_file_order(
    store: Store, tmp_path: Path
) -> None:
    rows = people(BATCH_ROWS + 10)
    rows[BATCH_ROWS - 1] = "not-an-address,Bad,,\n"  # line 5001: the last row of the first batch
    rows[BATCH_ROWS + 1] = "P0@example.com,Copy,,\n"  # line 5003 repeats line 2
    rows[BATCH_ROWS + 2] = "q@example.com,Q,a|b,\x1b[2J\n"  # line 5004: a control character
    path = write(tmp_path, HEADER + "".join(rows))

    result = import_csv(store, path, skip_invalid=True, rejects=tmp_path / "rejects.csv")

    assert (result.added, result.rejected) == (BATCH_ROWS + 7, 3)
    assert [p.line for p in result.problems] == [BATCH_ROWS + 1, BATCH_ROWS + 3, BATCH_ROWS + 4]
    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["email"] for row in written] == ["not-an-address", "P0@example.com", "q@example.com"]
    assert written[1]["reason"] == "'P0@example.com' is a duplicate of line 2 (letter case is ignored)"
    assert get_subscriber(store, "p0@example.com").name == "P 0"


def test_people_who_left_stay_as_they_are_wherever_they_are_in_the_file(store: Store, tmp_path: Path) -> None:
    import_csv(store, write(tmp_path, HEADER + "".join(people(BATCH_ROWS + 10)), "first.csv"))
    left = {"p7": "unsubscribed", f"p{BATCH_ROWS + 3}": "bounced", f"p{BATCH_ROWS + 4}": "complained"}
    for who, status in left.items():
        set_status(store, f"{who}@example.com", status, actor="webhook")
    before = [get_subscriber(store, f"{who}@example.com") for who in left]
    logs = [subscriber_log(store, person.id) for person in before]
    again = write(
        tmp_path,
        "email,name,tags,city,status\n"
        + "".join(f"{row.strip()},active\n" for row in people(BATCH_ROWS + 10, name="New")),
        "again.csv",
    )

    result = import_csv(store, again, update=True, status="active", tags=["vip"])

    assert (result.suppressed, result.updated, result.added) == (3, BATCH_ROWS + 7, 0)
    assert [(p.line, p.message) for p in result.skipped] == [
        (9, "unsubscribed: an import never resubscribes people who left"),
        (BATCH_ROWS + 5, "bounced: an import never resubscribes people who left"),
        (BATCH_ROWS + 6, "complained: an import never resubscribes people who left"),
    ]
    assert [get_subscriber(store, person.id) for person in before] == before
    assert [subscriber_log(store, person.id) for person in before] == logs
    assert get_subscriber(store, "p8@example.com").name == "New 8"


def test_an_erased_address_is_kept_out_by_its_keyed_hash_in_any_batch(store: Store, tmp_path: Path) -> None:
    add_subscriber(store, "gone@example.com", name="Gone")
    erase(store, "gone@example.com")
    erase(store, "never.here@example.com")  # suppressed without ever being a subscriber
    rows = people(BATCH_ROWS + 10)
    rows[3] = "Never.Here@example.com,Never,,\n"  # line 5, first batch
    rows[BATCH_ROWS + 5] = "GONE@Example.com,Gone,,Oslo\n"  # line 5007, second batch

    result = import_csv(store, write(tmp_path, HEADER + "".join(rows)))

    assert (result.added, result.suppressed) == (BATCH_ROWS + 8, 2)
    assert [p.line for p in result.skipped] == [5, BATCH_ROWS + 7]
    assert {p.message for p in result.skipped} == {
        "the address is on the suppression list (erased or blocked)"
    }
    assert "gone@example.com" not in all_text(store) and "never.here" not in all_text(store)


def test_update_over_several_batches_changes_only_what_the_file_changes(store: Store, tmp_path: Path) -> None:
    first = people(BATCH_ROWS + 10)
    import_csv(store, write(tmp_path, HEADER + "".join(first), "first.csv"))
    changed = list(first)
    changed[2] = "p2@example.com,Renamed,t2|extra,Town\n"  # line 4
    changed[BATCH_ROWS + 5] = f"p{BATCH_ROWS + 5}@example.com,P {BATCH_ROWS + 5},,Elsewhere\n"
    new = [f"n{i}@example.com,N {i},,\n" for i in range(3)]
    path = write(tmp_path, HEADER + "".join(changed + new), "changed.csv")

    assert import_csv(store, path).unchanged == BATCH_ROWS + 10  # without --update: nobody changes
    result = import_csv(store, path, update=True)

    assert (result.added, result.updated, result.unchanged) == (0, 2, BATCH_ROWS + 8 + 3)
    renamed = get_subscriber(store, "p2@example.com")
    assert (renamed.name, renamed.tags) == ("Renamed", ("extra", "t2"))
    assert subscriber_log(store, renamed.id)[-1].detail == {"line": 4, "fields": ["name", "tags"]}
    moved = get_subscriber(store, f"p{BATCH_ROWS + 5}@example.com")
    assert (moved.attributes, moved.tags) == ({"city": "Elsewhere"}, ())
    assert subscriber_log(store, moved.id)[-1].detail == {
        "line": BATCH_ROWS + 7,
        "fields": ["attributes", "tags"],
    }
    assert [e.detail for e in subscriber_log(store, get_subscriber(store, "n2@example.com").id)] == [
        {"line": BATCH_ROWS + 14}
    ]


def test_new_people_get_ids_in_file_order_never_one_used_before(store: Store, tmp_path: Path) -> None:
    import_csv(store, write(tmp_path, HEADER + "".join(people(3)), "a.csv"))
    newest = get_subscriber(store, "p2@example.com").id
    erase(store, "p2@example.com")

    import_csv(store, write(tmp_path, HEADER + "".join(people(BATCH_ROWS + 2, start=10)), "b.csv"))

    ids = [p.id for p in list_subscribers(store, limit=None)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == BATCH_ROWS + 4
    assert ids[2] > newest
    assert [p.email for p in list_subscribers(store, limit=4)][2:] == ["p10@example.com", "p11@example.com"]
    assert add_subscriber(store, "after@example.com").id == ids[-1] + 1


def test_after_a_crash_midway_the_next_import_runs_as_if_nothing_happened(
    store: Store, tmp_path: Path
) -> None:
    path = write(tmp_path, HEADER + "".join(people(BATCH_ROWS * 2 + 10)))

    def crash(done: int, total: int) -> None:
        raise KeyboardInterrupt

    rejected(store, path, KeyboardInterrupt, progress=crash)
    assert import_csv(store, path).added == BATCH_ROWS * 2 + 10
    assert import_csv(store, path).unchanged == BATCH_ROWS * 2 + 10


def test_a_database_error_in_a_bulk_write_is_a_store_error_and_changes_nothing(store: Store) -> None:
    add_subscriber(store, "ana@example.com")
    before = snapshot(store)
    now = utcnow()
    with pytest.raises(StoreError, match=r"ix_subscribers_email_key|UNIQUE"), store.write() as conn:
        bulk = Bulk(conn)
        stamp = bulk.value_of(subscribers.c.created_at)(now)
        columns = ("email", "email_key", "address_hash", "status", "attributes", "source", "created_at")
        row = ("ana@example.com", "ana@example.com", "h", "active", "{}", "import", stamp)
        bulk.insert(subscribers, (*columns, "updated_at"), [(*row, stamp)])
    assert snapshot(store) == before


def test_lookups_by_many_keys_find_exactly_those(store: Store) -> None:
    for who in ("a", "b", "c"):
        add_subscriber(store, f"{who}@example.com")
    keys = ["b@example.com", "zz@example.com", *(f"x{i}@example.com" for i in range(40_000)), "c@example.com"]
    with store.read() as conn:
        bulk = Bulk(conn)
        query = select(subscribers.c.email_key).where(bulk.among(subscribers.c.email_key, keys))
        assert sorted(conn.scalars(query)) == ["b@example.com", "c@example.com"]
        assert list(conn.scalars(select(subscribers.c.id).where(bulk.among(subscribers.c.id, [])))) == []


@pytest.mark.parametrize(
    ("engine_name", "variables"),
    [("sqlite", None), ("postgresql", None), ("sqlite", 999), ("sqlite", 10)],  # the limit is SQLite's
)
def test_bulk_inserts_write_every_row_in_order_whatever_a_statement_may_hold(
    store: Store, variables: int | None
) -> None:
    """1,234 rows are several statements of many rows plus a shorter one; an older SQLite allows 999
    parameters per statement, and at 10 a statement holds one row of seven columns."""
    rows = [
        (i, "2026-01-01 00:00:00.000000", "imported", None, "active", "test", f'{{"line": {i}}}')
        for i in range(1, 1235)
    ]
    with store.write() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        if variables is not None:  # on this test's own store: its connections end with it
            driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
        Bulk(conn).insert(subscriber_events, _EVENTS, rows)
    with store.read() as conn:
        query = select(subscriber_events.c.subscriber_id, subscriber_events.c.detail)
        written = conn.execute(query.order_by(subscriber_events.c.id)).all()
    assert [(i, detail["line"]) for i, detail in written] == [(i, i) for i in range(1, 1235)]


@pytest.mark.parametrize("engine_name", ["sqlite"])  # PostgreSQL sizes its buffers for the server
def test_the_import_page_cache_is_for_the_import_alone(store: Store, tmp_path: Path) -> None:
    with store.write() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        cache = driver.execute
        before = cache("PRAGMA cache_size").fetchone()
        with Bulk(conn).roomy_cache():
            assert cache("PRAGMA cache_size").fetchone() == (-1024 * IMPORT_CACHE_MB,)
        assert cache("PRAGMA cache_size").fetchone() == before
        with pytest.raises(KeyboardInterrupt), Bulk(conn).roomy_cache():
            raise KeyboardInterrupt
        assert cache("PRAGMA cache_size").fetchone() == before
    import_csv(store, write(tmp_path, HEADER + "".join(people(10))))
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").first() == before


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (f"a@example.com,{'n' * 200},,{'c' * 1000}", None),  # long, every value at its limit
        (f"a@example.com,{'n' * 201},,Oslo", "name: '"),
        (f"a@example.com,Ana,,{'c' * 1001}", "city: '"),
        ('a@example.com,Ana,,"Line\tbreaks\nallowed"', None),  # short, not printable, allowed
        ("a@example.com,A\x07na,,Oslo", "name: 'A\\x07na' contains invisible characters"),  # short
    ],
)
def test_names_and_attributes_are_checked_in_short_rows_and_long_ones(
    store: Store, tmp_path: Path, row: str, problem: str | None
) -> None:
    path = write(tmp_path, f"{HEADER}{row}\n")
    if problem is None:
        assert import_csv(store, path).added == 1
    else:
        assert problem in rejected(store, path, ImportRejected)


@given(st.dictionaries(st.text(), st.text()))
def test_attributes_are_written_as_json_dumps_writes_them(values: dict[str, str]) -> None:
    assert _attributes_json(values) == json.dumps(values)
