"""``GET /c/CAMPAIGN.TOKEN/N``: a tracked link (``pipeline.render.clicks``), answered 302 to the
campaign's N-th link and recorded after the answer.

The target is only ever the URL the campaign keeps at that place, so no request can send a reader
anywhere else (no open redirect); an unknown campaign or place is a 404. The token does not change
the answer, valid or not: it opens no page, and a forwarded link still takes its reader where the
editor meant. Whether it counts is checked later, in a batch (``pipeline.feedback.clicks``), so the
redirect costs one dictionary lookup once the campaign's links are cached; when clicks come faster
than the store takes them, the excess is dropped from the count, never from the reader's way. Clicks
wait in memory for at most a second (``ClickLog``): a crash loses that second's count, never a reader.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.dispatch.campaigns import load_links
from pipeline.feedback.clicks import Click, record_clicks
from pipeline.web.context import WebContext, web

log = logging.getLogger(__name__)
MAX_PENDING = 50_000
"""Clicks waiting to be stored at most; more are not counted (the store is far behind)."""
MAX_CAMPAIGN_ID = 2**63 - 1
FLUSH_SECONDS = 1.0
"""How long clicks gather before they are stored together."""


class ClickLog:
    """The campaigns' links as read once, and the clicks not yet stored.

    The first click after a flush starts a timer; when it fires (``delay`` seconds later) a flush
    job goes to the app's worker and stores every click that came meanwhile in one transaction. A
    burst of clicks after a send so costs the store one write a second, not one a click, beside a
    dispatcher that writes the ledger. The timer is no daemon: a stopping process stores its last
    clicks before it exits.
    """

    def __init__(self, *, delay: float = FLUSH_SECONDS) -> None:
        self.links: dict[int, tuple[str, ...]] = {}
        self.delay = delay
        self._pending: list[Click] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, ctx: WebContext, click: Click) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                return
            self._pending.append(click)
            first = len(self._pending) == 1
        if first:
            timer = threading.Timer(self.delay, ctx.jobs.put, args=(partial(self.flush, ctx),))
            timer.name = "click-flush"
            timer.start()

    def flush(self, ctx: WebContext) -> None:
        """Store the clicks waiting now (the timer's job; tests and benches call it to not wait)."""
        with self._lock:
            clicks, self._pending = self._pending, []
        if not clicks:
            return
        try:
            record_clicks(ctx.store, clicks, now=ctx.now())
        except Exception as exc:  # the store is away: these clicks go uncounted, the next flush tries
            log.error("%d clicks not stored: %s", len(clicks), type(exc).__name__)


async def _target(ctx: WebContext, campaign_id: int, link: int) -> str | None:
    """The campaign's link at ``link``, read from the store when not cached (or cached before a
    welcome step's edit added links)."""
    cached = ctx.clicks.links.get(campaign_id)
    if cached is None or link >= len(cached):
        links = await run_in_threadpool(load_links, ctx.store, campaign_id)
        if links is None:
            return None
        ctx.clicks.links[campaign_id] = cached = links
    return cached[link] if link < len(cached) else None


async def follow(request: Request) -> Response:
    ctx = web(request)
    token: str = request.path_params["token"]
    link: int = request.path_params["link"]
    campaign, _, personal = token.partition(".")
    if not campaign.isascii() or not campaign.isdigit() or int(campaign) > MAX_CAMPAIGN_ID:
        raise HTTPException(404)
    url = await _target(ctx, int(campaign), link)
    if url is None:
        raise HTTPException(404)
    if request.method == "GET":  # link checkers ask with HEAD: they are no reader
        ctx.clicks.add(ctx, Click(int(campaign), personal, link, url, ctx.now()))
    return Response(status_code=302, headers={"Location": url, "Cache-Control": "no-store"})


routes = [Route("/c/{token}/{link:int}", follow, methods=["GET"])]  # and HEAD
