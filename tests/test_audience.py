"""The audience stream: only active, unsuppressed people, once each, in id order, page by page."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, insert, select

from pipeline.audience.selection import audience, count, segment_select
from pipeline.audience.subscribers import add_subscriber, erase, set_status, suppress
from pipeline.recipient import Recipient
from pipeline.store.engine import Store


@pytest.fixture
def project_segments(project: Path) -> None:
    """Two overlapping segments added to the test project's segments.toml."""
    with (project / "subscribers" / "segments.toml").open("a", encoding="utf-8") as handle:
        handle.write('\n[segments.evens]\ntags.any = ["even"]\n\n[segments.threes]\ntags.any = ["three"]\n')


def crowd(store: Store, size: int = 12) -> list[int]:
    """``size`` people p0…; even ones tagged even, multiples of three tagged three."""
    ids = []
    for i in range(size):
        tags = [t for t, on in (("even", i % 2 == 0), ("three", i % 3 == 0)) if on]
        ids.append(
            add_subscriber(store, f"p{i}@example.com", name=f"P {i}", tags=tags, timezone="Europe/Rome").id
        )
    return ids


def test_recipients_come_in_id_order_across_page_boundaries(store: Store) -> None:
    ids = crowd(store)
    for page_size in (1, 5, 6, 100):
        got = list(audience(store, "everyone", page_size=page_size))
        assert [r.subscriber_id for r in got] == ids
    assert got[3] == Recipient(ids[3], "p3@example.com", "P 3", "Europe/Rome")


def test_overlapping_segments_yield_each_person_once(store: Store, project_segments: None) -> None:
    ids = crowd(store)
    got = [r.subscriber_id for r in audience(store, ["evens", "threes"], page_size=4)]
    assert got == [ids[i] for i in (0, 2, 3, 4, 6, 8, 9, 10)]
    assert count(store, ["evens", "threes"]) == 8


def test_only_active_unsuppressed_people_are_sent_to(store: Store) -> None:
    ids = crowd(store, 6)
    set_status(store, ids[0], "unsubscribed", actor="unsubscribe-link")
    set_status(store, ids[1], "bounced", actor="webhook")
    set_status(store, ids[2], "complained", actor="webhook")
    suppress(store, "P3@example.com", "blocked elsewhere")  # still 'active', but suppressed
    erase(store, "p4@example.com")
    add_subscriber(store, "new@example.com", status="unconfirmed")
    assert [r.email for r in audience(store, "everyone")] == ["p5@example.com"]
    assert count(store, "everyone") == 1


def test_an_unsubscribe_during_the_stream_is_honoured(store: Store) -> None:
    ids = crowd(store, 10)
    stream = audience(store, "everyone", page_size=3)
    first = [next(stream).subscriber_id for _ in range(3)]
    set_status(store, ids[7], "unsubscribed", actor="unsubscribe-link")
    rest = [r.subscriber_id for r in stream]
    assert first + rest == [i for i in ids if i != ids[7]]


def test_segment_select_freezes_into_a_ledger_with_insert_select(store: Store) -> None:
    ids = crowd(store, 5)
    ledger = Table(
        "test_ledger",
        MetaData(),
        Column("subscriber_id", BigInteger, primary_key=True),
        Column("email", String(320)),
        Column("name", String(200)),
        Column("timezone", String(64)),
    )
    audience_query = segment_select(store, "everyone")
    with store.write() as conn:
        ledger.create(conn)
        conn.execute(
            insert(ledger).from_select(["subscriber_id", "email", "name", "timezone"], audience_query)
        )
    with store.read() as conn:
        frozen = conn.execute(select(ledger).order_by(ledger.c.subscriber_id)).all()
    assert [tuple(row) for row in frozen] == [
        (i, f"p{n}@example.com", f"P {n}", "Europe/Rome") for n, i in enumerate(ids)
    ]
    with store.write() as conn:
        ledger.drop(conn)
