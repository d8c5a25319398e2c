"""Click tracking's cost: `python -m bench.clicks [--recipients 20000] [--requests 5000] [--rounds 5]`.

Per recipient: the first sample issue is rendered once and its links rewritten once
(``pipeline.render.clicks``); then, in alternating rounds, each of N recipients gets (a) the fields a
SendGrid personalization carries (``Links.personal_fields``: signed links, and with tracking a third
token) and (b) a whole copy as SMTP and the outbox build it (those fields substituted into the HTML
and text), untracked and tracked on the same recipients. Printed: µs per recipient of each, the
difference tracking makes, and the one-off rewrite.

The redirect: two uvicorn servers in this process answer the same GETs from one keep-alive client,
taking turns in blocks of 100: ours is ``create_app``'s ``/c/CAMPAIGN.TOKEN/N`` on a SQLite store
holding a tracked campaign sent to 1,000 people (each request a real reader's link, so every click is
verified and stored after its answer, a second of clicks at a time); the limit a bare Starlette route on the same path
answering the same 302 with nothing else. Printed: requests/s of each and the ratio. The exit status is
1 if an answer is wrong, or the store did not count every reader who clicked, never for a figure.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx2
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.webhook import machine
from pipeline.content.issue import load_issue
from pipeline.dispatch.campaigns import load_links
from pipeline.feedback.reports import campaign_stats
from pipeline.recipient import Recipient
from pipeline.render import clicks
from pipeline.render.links import Links
from pipeline.render.renderer import RenderedIssue, personalise, render
from pipeline.settings import Settings, TrackingSettings, load_settings
from pipeline.store.engine import Store, connect
from pipeline.store.tables import subscribers
from pipeline.tokens import Signer
from pipeline.web import create_app, server
from pipeline.web.context import web_of
from tests.system import free_port
from tests.transport_helpers import ISSUE, new_campaign
from tests.web_support import mark_sent, readers, serving

ROOT = Path(__file__).resolve().parents[1]
KEY = b"bench-clicks-signing-key-0123456789abcdef"
READERS = 1_000
BLOCK = 100
"""Requests in a row to one server before the other takes its turn."""


def tracked_settings(store_url: str = "sqlite://") -> Settings:
    base = load_settings(ROOT / "settings.toml")
    return base.model_copy(
        update={
            "tracking": TrackingSettings(clicks=True),
            "store": base.store.model_copy(update={"url": store_url}),
        }
    )


def per_recipient(count: int, rounds: int) -> None:
    settings = tracked_settings()
    rendered = render(load_issue(settings.path(settings.newsletter.issues_dir) / ISSUE), settings)
    base_url = settings.newsletter.base_url
    started = time.perf_counter()
    links = clicks.targets(rendered)
    tracked = clicks.track(rendered, 1, links, base_url)
    rewrite_ms = (time.perf_counter() - started) * 1000
    plain_links = Links(settings, Signer(KEY))
    tracked_links = plain_links.tracking(1)
    people = [Recipient(1000 + i, f"reader{i:06d}@example.com", f"Reader {i}") for i in range(count)]

    def fields_only(links_of: Links) -> Callable[[], None]:
        def run() -> None:
            for person in people:
                links_of.personal_fields(person)

        return run

    def whole_copy(links_of: Links, issue: RenderedIssue) -> Callable[[], None]:
        def run() -> None:
            for person in people:
                personalise(issue, links_of.personal_fields(person))

        return run

    variants = {
        "fields, untracked": fields_only(plain_links),
        "fields, tracked": fields_only(tracked_links),
        "whole copy, untracked": whole_copy(plain_links, rendered),
        "whole copy, tracked": whole_copy(tracked_links, tracked),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(rounds):
        order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
        for name in order:
            started = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - started)
    micro = {name: statistics.median(times) / count * 1e6 for name, times in seconds.items()}
    print(f"Per recipient, {count:,} recipients, median of {rounds} alternating rounds:")
    print(f"  one-off: {len(links)} links kept and the issue rewritten in {rewrite_ms:.1f} ms")
    for name, value in micro.items():
        print(f"  {name:<24} {value:7.2f} µs")
    for what in ("fields", "whole copy"):
        plain, tracked_cost = micro[f"{what}, untracked"], micro[f"{what}, tracked"]
        print(
            f"  {what}: tracking adds {tracked_cost - plain:+.2f} µs a recipient "
            f"(tracked / untracked {tracked_cost / plain:.2f})"
        )


def bare_app(target: str) -> Starlette:
    """The limit: a route on the same path that answers the same redirect and does nothing else."""

    async def follow(_request: Request) -> Response:
        return Response(status_code=302, headers={"Location": target, "Cache-Control": "no-store"})

    return Starlette(routes=[Route("/c/{token}/{link:int}", follow, methods=["GET"])])


def redirects(requests: int) -> list[str]:
    wrong: list[str] = []
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-clicks-")))
        settings = tracked_settings(f"sqlite:///{folder / 'store.db'}")
        store = stack.enter_context(
            connect(settings.store.url, KEY, segments_file=settings.path(settings.newsletter.segments_file))
        )
        readers(store, folder, READERS)
        campaign = new_campaign(store, settings)
        mark_sent(store, campaign.id, READERS)
        links = load_links(store, campaign.id)
        assert links
        index = next(i for i, url in enumerate(links) if not url.startswith(settings.newsletter.base_url))
        tokens = personal_tokens(store, settings, campaign.id)
        paths = [f"/c/{campaign.id}.{tokens[i % len(tokens)]}/{index}" for i in range(requests)]

        logging.getLogger("pipeline.web.app").setLevel(logging.ERROR)  # no webhook key: not measured here
        app = create_app(settings, store)
        ours_port, bare_port = free_port(), free_port()
        stack.enter_context(serving(server(app, "127.0.0.1", ours_port, access_log=False)))
        stack.enter_context(serving(server(bare_app(links[index]), "127.0.0.1", bare_port, access_log=False)))
        client = stack.enter_context(httpx2.Client(timeout=60, follow_redirects=False))
        roots = {"ours": f"http://127.0.0.1:{ours_port}", "limit": f"http://127.0.0.1:{bare_port}"}
        seconds = {name: 0.0 for name in roots}
        before = machine()
        for start in range(0, requests, BLOCK):
            order = ("ours", "limit") if start // BLOCK % 2 == 0 else ("limit", "ours")
            for name in order:
                wrong += timed_block(
                    client, roots[name], paths[start : start + BLOCK], links[index], seconds, name
                )
        after = machine()
        context = web_of(app)
        context.clicks.flush(context)  # the last second's clicks, without waiting for the timer
        assert context.jobs.join(60)
        clickers = campaign_stats(store, campaign.id).whole.clicked.unique
        expected = min(requests, len(tokens))
        if clickers != expected:
            wrong.append(f"{clickers:,} readers counted as clicking, expected {expected:,}")
        dropped = web_of(app).clicks.dropped

    print(f"Redirect GET /c/…, {requests:,} requests to each (keep-alive, blocks of {BLOCK}, taking turns):")
    rates = {name: requests / value for name, value in seconds.items()}
    print(
        f"  ours   create_app, click verified and stored after the answer  {rates['ours']:>8,.0f} requests/s"
    )
    print(
        f"  limit  bare Starlette route, the same 302                     {rates['limit']:>8,.0f} requests/s"
    )
    ratio = rates["ours"] / rates["limit"]
    print(f"  ratio ours / limit: {ratio:.3f} (1/{1 / ratio:.1f})")
    print(f"  store: {clickers:,} readers counted as clicking; {dropped:,} clicks dropped")
    print(f"  machine before: {before}")
    print(f"  machine after:  {after}")
    return wrong


def personal_tokens(store: Store, settings: Settings, campaign_id: int) -> list[str]:
    """Each reader's click token for the campaign, as their copy carries it."""
    links = Links(settings, store.signer).tracking(campaign_id)
    with store.read() as conn:
        people = conn.execute(select(subscribers.c.id, subscribers.c.email)).all()
    return [links.personal_fields(Recipient(sid, email)).click_token for sid, email in people]


def timed_block(
    client: httpx2.Client, root: str, paths: Sequence[str], target: str, seconds: dict[str, float], name: str
) -> list[str]:
    wrong = []
    started = time.perf_counter()
    answers = [client.get(root + path) for path in paths]
    seconds[name] += time.perf_counter() - started
    for answer in answers:
        if answer.status_code != 302 or answer.headers.get("location") != target:
            wrong.append(f"{name}: answered {answer.status_code} to {answer.headers.get('location')}")
    return wrong[:5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000, help="recipients per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of each variant")
    parser.add_argument("--requests", type=int, default=5_000, help="redirect requests to each server")
    args = parser.parse_args()
    per_recipient(args.recipients, args.rounds)
    wrong = redirects(args.requests)
    for problem in wrong:
        print(f"WRONG: {problem}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
