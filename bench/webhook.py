"""Webhook ingest rate: `python -m bench.webhook [--events 50000] [--per-post 1000] [--pg]`.

A fresh store (SQLite in a temp folder; with ``--pg`` a throwaway PostgreSQL server) gets one
subscriber per five events and a running campaign recorded as sent to all of them and to as many
others as make ``--sent`` (a million by default, the size ``bench/dispatch.py`` sends: judging a
campaign's health reads its ledger, so a small one would hide what a real one costs). SendGrid's side
(``tests/emulators/sendgrid_events``: a generated P-256 key, events shaped like SendGrid's, custom
args and all) reports on those messages in phases, as SendGrid would over a day: processed, delivered
(1 % bounce instead), open, click, and a last open (0.5 % unsubscribe, 0.2 % group unsubscribe,
0.05 % spam report instead); one event in a hundred is a repeat of an earlier one (SendGrid retries).

Two real uvicorn servers in this process take the same signed posts from one HTTP client, taking
turns (ours, limit, limit, ours, …) so both see the same machine: ours is ``create_app``'s
``POST /webhooks/sendgrid`` on the store; the limit is a bare Starlette route that reads the body,
verifies the same ECDSA signature over ``timestamp + body`` and parses the JSON (``json.loads``),
and does nothing else. Signing happens before a post's clock starts. Printed: events/s of each, the
ratio, the load average. On SQLite, after them, the store's floor: the same posts' events as rows made
beforehand, inserted by the statement ours runs and committed, a transaction a post, through ``sqlite3``
alone on a copy of the store from before the first post; added to the bare route's time, it is the
most an ingest could reach that keeps each post in one durable, de-duplicating transaction and does
no other work (no parsing, no look-ups, no consent changes). The exit status is 1 if a response or the store is wrong (every event kept
once, every consent change made), never for the rate itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.feedback.events import SQLITE_INSERT_ROWS, _sqlite_insert
from pipeline.settings import Settings, load_settings
from pipeline.store import checkpoints
from pipeline.store.engine import Store, connect, create_store_engine
from pipeline.store.tables import deliveries, delivery_events, subscriber_events, subscribers
from pipeline.web import create_app, server
from pipeline.web.signature import load_public_key
from tests.emulators.sendgrid_events import SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_PATH, EventKey, event
from tests.fixtures.store import running_postgres
from tests.system import free_port
from tests.transport_helpers import new_campaign
from tests.web_support import mark_sent, readers, serving

ROOT = Path(__file__).resolve().parents[1]
KEY = b"bench-webhook-signing-key-0123456789abcdef"
EVENTS_PER_PERSON = 5
REPEAT_EVERY = 100
"""One event in this many is a repeat of an earlier one."""
CONSENT = {"bounce": 100, "unsubscribe": 200, "group_unsubscribe": 500, "spamreport": 2000}
"""One person in N gets this event (bounce instead of delivered, the others instead of the last open)."""


@dataclass
class Timings:
    """Seconds per post of one route, and the events those posts carried."""

    seconds: list[float] = field(default_factory=list)
    events: int = 0

    def rate(self) -> float:
        return self.events / sum(self.seconds)

    def median(self) -> float:
        return statistics.median(self.seconds)


def bare_app(public_key: str) -> Starlette:
    """The limit: what any webhook must do (read, verify, parse) and nothing it need not."""
    key = load_public_key(public_key)

    async def receive(request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        try:
            signature = base64.b64decode(request.headers.get(SIGNATURE_HEADER, ""), validate=True)
            key.verify(signature, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature):
            return PlainTextResponse("Forbidden", status_code=403)
        items = json.loads(body)
        return JSONResponse({"received": len(items)})

    return Starlette(routes=[Route(WEBHOOK_PATH, receive, methods=["POST"])])


def phases(recipients: list[tuple[int, int, str]], campaign_id: int) -> list[dict[str, Any]]:
    """Five events per recipient, phase after phase, with the consent events of ``CONSENT``."""
    found: list[dict[str, Any]] = []
    for phase in range(EVENTS_PER_PERSON):
        for index, (delivery_id, subscriber_id, email) in enumerate(recipients):
            kind, fields = ("processed", "delivered", "open", "click", "open")[phase], dict[str, Any]()
            if phase == 1 and index % CONSENT["bounce"] == 0:
                kind, fields = "bounce", {"type": "bounce", "reason": f"550 5.1.1 <{email}>: no such user"}
            elif phase == 3:
                fields = {"url": f"https://news.example.org/archive/?ref={index}"}
            elif phase == 4:
                for consent in ("unsubscribe", "group_unsubscribe", "spamreport"):
                    if index % CONSENT[consent] == 1:
                        kind, fields = consent, {"asm_group_id": 1} if consent == "group_unsubscribe" else {}
            found.append(
                event(
                    kind,
                    email,
                    campaign_id=campaign_id,
                    subscriber_id=subscriber_id,
                    delivery_id=delivery_id,
                    **fields,
                )
            )
    chance = random.Random(16)
    for index in range(REPEAT_EVERY - 1, len(found), REPEAT_EVERY):
        found[index] = found[chance.randrange(index)]
    return found


def bench_settings(store_url: str, key: EventKey) -> Settings:
    """The repository's settings (issues, segments) with the bench's store and webhook key."""
    base = load_settings(ROOT / "settings.toml")
    return base.model_copy(
        update={
            "store": base.store.model_copy(update={"url": store_url}),
            "web": base.web.model_copy(update={"webhook_public_key": key.public_key}),
        }
    )


@contextmanager
def store_at(pg: bool, folder: Path) -> Iterator[str]:
    """The URL of an empty, migrated store: SQLite in ``folder`` or a database of a fresh PostgreSQL."""
    if not pg:
        yield f"sqlite:///{folder / 'store.db'}"
        return
    with running_postgres() as postgres:
        yield postgres.url(postgres.create_database())


def post(client: httpx2.Client, url: str, body: bytes, key: EventKey) -> tuple[float, httpx2.Response]:
    """One signed post; seconds from the first byte sent to the whole answer read."""
    headers = key.headers(body)
    started = time.perf_counter()
    response = client.post(url, content=body, headers=headers)
    return time.perf_counter() - started, response


def check(store: Store, items: list[dict[str, Any]], answers: list[dict[str, int]]) -> list[str]:
    """What is wrong with the store after the posts (nothing, when every event was kept once and every
    consent change made)."""
    unique = {item["sg_event_id"]: item for item in items}
    consent = sum(item["event"] in CONSENT for item in unique.values())
    totals = {
        name: sum(answer[name] for answer in answers) for name in ("stored", "duplicates", "status_changes")
    }
    with store.read() as conn:
        kept = conn.execute(select(func.count()).select_from(delivery_events)).scalar_one()
        changes = conn.execute(
            select(func.count()).where(subscriber_events.c.actor == "webhook")
        ).scalar_one()
    expected = {"stored": len(unique), "duplicates": len(items) - len(unique), "status_changes": consent}
    wrong = [
        f"{name}: {totals[name]:,}, expected {expected[name]:,}"
        for name in expected
        if totals[name] != expected[name]
    ]
    if kept != len(unique):
        wrong.append(f"{kept:,} events in the store, expected {len(unique):,}")
    if changes != consent:
        wrong.append(f"{changes:,} consent changes logged, expected {consent:,}")
    return wrong


def copy_store(store: Store, path: Path) -> None:
    """The store's SQLite database copied to ``path`` (SQLite's backup), the file made private as the
    store makes its own."""
    engine = create_store_engine(f"sqlite:///{path}")
    with (
        contextlib.closing(store.engine.raw_connection()) as source,
        contextlib.closing(engine.raw_connection()) as copy,
    ):
        source.driver_connection.backup(copy.driver_connection)
    engine.dispose()


def store_floor(database: Path, posts: list[list[dict[str, Any]]]) -> list[float]:
    """Seconds per post of the store's part alone, the floor under ours on SQLite: each post's events as
    rows made beforehand (not timed), inserted by the statement ours runs (``INSERT … ON CONFLICT
    (sg_event_id) DO NOTHING RETURNING``, ``SQLITE_INSERT_ROWS`` a statement) and committed, one
    transaction a post, through ``sqlite3`` on a copy of the store taken before the first post."""
    received = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(" ")
    engine = create_store_engine(f"sqlite:///{database}")  # the store's own pragmas on its connection
    connection = engine.raw_connection()
    db = connection.driver_connection
    seconds = []
    for items in posts:
        rows = [
            (
                item["sg_event_id"],
                item["event"],
                int(item["campaign_id"]),
                int(item["subscriber_id"]),
                item.get("url"),
                item.get("reason"),
                dt.datetime.fromtimestamp(item["timestamp"], dt.UTC).replace(tzinfo=None).isoformat(" "),
                received,
            )
            for item in items
        ]
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for first in range(0, len(rows), SQLITE_INSERT_ROWS):
            some = rows[first : first + SQLITE_INSERT_ROWS]
            db.execute(_sqlite_insert(len(some)), [value for row in some for value in row]).fetchall()
        db.execute("COMMIT")
        seconds.append(time.perf_counter() - start)
    connection.close()
    engine.dispose()
    return seconds


def widen(store: Store, campaign_id: int, total: int) -> None:
    """Record the campaign as sent to people beyond the bench's readers too, up to ``total`` messages
    (they get no events: only the ledger's size matters)."""
    with store.write() as conn:
        already = conn.execute(
            select(func.count()).where(deliveries.c.campaign_id == campaign_id)
        ).scalar_one()
        conn.execute(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :more) "
                "INSERT INTO deliveries (campaign_id, subscriber_id, email, status, message_id) "
                "SELECT :campaign, 1000000000 + i, 'other' || i || '@example.org', 'sent', "
                "'<other' || i || '@bench>' FROM n"
            ),
            {"more": total - already, "campaign": campaign_id},
        )


def run(events: int, per_post: int, pg: bool, total_sent: int) -> list[str]:
    key = EventKey()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhook-")))
        url = stack.enter_context(store_at(pg, folder))
        settings = bench_settings(url, key)
        store = stack.enter_context(
            connect(url, KEY, segments_file=settings.path(settings.newsletter.segments_file))
        )
        people = -(-events // EVENTS_PER_PERSON)
        readers(store, folder, people)
        campaign = new_campaign(store, settings)
        sent = mark_sent(store, campaign.id, people)
        if total_sent > people:
            widen(store, campaign.id, total_sent)
        with store.read() as conn:
            email_of = dict(conn.execute(select(subscribers.c.id, subscribers.c.email)).all())
        items = phases([(d, s, email_of[s]) for d, s in sent], campaign.id)[:events]
        posts = [items[i : i + per_post] for i in range(0, len(items), per_post)]
        bodies = [json.dumps(post).encode() for post in posts]
        if not pg:  # a copy before the first post, for the store's floor
            copy_store(store, folder / "floor.db")

        ours_port, bare_port = free_port(), free_port()
        stack.enter_context(checkpoints.in_background(store))  # as `newsletter serve` runs it
        stack.enter_context(serving(server(create_app(settings, store), "127.0.0.1", ours_port)))
        stack.enter_context(serving(server(bare_app(key.public_key), "127.0.0.1", bare_port)))
        client = stack.enter_context(httpx2.Client(timeout=120))
        routes = {
            "ours": f"http://127.0.0.1:{ours_port}{WEBHOOK_PATH}",
            "limit": f"http://127.0.0.1:{bare_port}{WEBHOOK_PATH}",
        }
        timings = {name: Timings() for name in routes}
        answers: list[dict[str, int]] = []
        wrong: list[str] = []
        machine_before = machine()
        for index, body in enumerate(bodies):
            count = min(per_post, len(items) - index * per_post)
            order = ("ours", "limit") if index % 2 == 0 else ("limit", "ours")
            for name in order:
                seconds, response = post(client, routes[name], body, key)
                if response.status_code != 200:
                    wrong.append(
                        f"{name}: post {index} answered {response.status_code} {response.text[:200]}"
                    )
                    continue
                timings[name].seconds.append(seconds)
                timings[name].events += count
                if name == "ours":
                    answers.append(response.json())
        machine_after = machine()
        wrong += check(store, items, answers)
        floor = None if pg else store_floor(folder / "floor.db", posts)

    engine = "PostgreSQL" if pg else "SQLite"
    print(f"SendGrid Event Webhook, {engine}: {len(items):,} signed events in posts of {per_post:,}")
    print(
        f"  ({people:,} subscribers of a campaign sent to {max(people, total_sent):,}; "
        f"one event in {REPEAT_EVERY} a repeat)"
    )
    print(f"  {'':<36} {'events/s':>9}  {'median post':>11}")
    for name, label in (
        ("ours", "ours   POST /webhooks/sendgrid"),
        ("limit", "limit  bare route: verify + parse"),
    ):
        timing = timings[name]
        print(f"  {label:<36} {timing.rate():>9,.0f}  {timing.median() * 1000:>8,.1f} ms")
    ours, limit = timings["ours"], timings["limit"]
    by_rate, by_median = ours.rate() / limit.rate(), limit.median() / ours.median()
    print(
        f"  ratio ours / limit: {by_rate:.3f} (1/{1 / by_rate:.1f}) in events/s, "
        f"{by_median:.3f} (1/{1 / by_median:.1f}) by median post"
    )
    if floor is not None:
        per_post_floor = statistics.median(floor) + limit.median()
        print(
            f"  the store's floor: each post's INSERT … ON CONFLICT DO NOTHING and commit alone, through "
            f"sqlite3: {statistics.median(floor) * 1000:,.1f} ms a post; with the bare route's own "
            f"{limit.median() * 1000:,.1f} ms, {per_post / per_post_floor:,.0f} events/s, "
            f"{limit.median() / per_post_floor:.3f} (1/{per_post_floor / limit.median():.1f}) of the bare "
            f"route, with no parsing, look-ups or consent changes at all"
        )
    print(f"  machine before: {machine_before}")
    print(f"  machine after:  {machine_after}")
    stored = sum(answer["stored"] for answer in answers)
    changes = sum(answer["status_changes"] for answer in answers)
    print(
        f"  store: {stored:,} events kept, {len(items) - stored:,} repeats skipped, {changes:,} status changes"
    )
    return wrong


def machine() -> str:
    """The load average and, where Linux reports it, how much of the time work waited for a CPU (the
    other processes on the machine weigh on ours, with its database, more than on the bare route)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = f"load average {load} (1, 5, 15 min; {os.cpu_count()} cores)"
    try:
        some = Path("/proc/pressure/cpu").read_text().split()[1]  # some avg10=… avg60=…
    except (OSError, IndexError):
        return text
    return f"{text}, CPU pressure {some.replace('avg10=', '')} % (10 s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events posted to each route")
    parser.add_argument("--per-post", type=int, default=1_000, help="events in one post")
    parser.add_argument("--pg", action="store_true", help="store on a throwaway PostgreSQL server")
    parser.add_argument(
        "--sent",
        type=int,
        default=1_000_000,
        help="messages the campaign recorded as sent (its ledger's size)",
    )
    args = parser.parse_args()
    wrong = run(args.events, args.per_post, args.pg, args.sent)
    for problem in wrong:
        print(f"WRONG: {problem}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
