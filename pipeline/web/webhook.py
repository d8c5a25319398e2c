"""``POST /webhooks/sendgrid``: SendGrid's signed Event Webhook, verified, capped, de-duplicated.

The order of checks keeps work away from strangers: no key configured → 403; signed timestamp missing,
stale or from the future → 403 before the body is read; a body over ``webhook_max_body_bytes`` → 413
as soon as that is known; then the ECDSA signature over exactly the bytes received (403 if it fails,
and nothing is stored). Only then is the JSON parsed (400 if it is not an array, however deeply it
nests) and recorded (``pipeline.feedback.events``), and the campaigns it touched are checked against
the bounce and complaint limits (``pipeline.feedback.health.Watch``). A signed post that is an array is
always answered 200 with its counts: events that cannot be read are skipped and counted
(``ignored``), never a reason for SendGrid to retry the whole batch.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.feedback.events import load_post, record_events
from pipeline.web.context import WebContext, web
from pipeline.web.security import BodyTooLarge, read_body
from pipeline.web.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER

log = logging.getLogger(__name__)


def _refuse(status: int, why: str) -> Response:
    log.warning("SendGrid webhook post refused (%s): %s", status, why)
    text = {403: "Forbidden", 413: "Content Too Large", 400: "Bad Request"}[status]
    return PlainTextResponse(text, status_code=status)


def _record(ctx: WebContext, items: list[Any]) -> dict[str, int]:
    result = record_events(ctx.store, items, now=ctx.now())
    paused = ctx.health.enforce(ctx.store, result.reported)
    for campaign_id, reason in paused:
        log.warning("campaign %s %s", campaign_id, reason)
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "ignored": result.ignored,
        "status_changes": result.status_changes,
        "paused_campaigns": len(paused),
    }


async def sendgrid_events(request: Request) -> Response:
    ctx = web(request)
    verifier = ctx.verifier
    if verifier is None:
        return _refuse(403, "web.webhook_public_key is not set, so no post can be verified")
    timestamp = request.headers.get(TIMESTAMP_HEADER)
    stale = verifier.stale(timestamp, ctx.clock())
    if stale is not None or timestamp is None:
        return _refuse(403, stale or "no timestamp")
    try:
        body = await read_body(request, ctx.settings.web.webhook_max_body_bytes)
    except BodyTooLarge:
        return _refuse(413, "body larger than web.webhook_max_body_bytes")
    forged = verifier.forged(body, request.headers.get(SIGNATURE_HEADER), timestamp)
    if forged is not None:
        return _refuse(403, forged)
    try:
        items = load_post(body)
    except ValueError as exc:
        return _refuse(400, str(exc))
    return JSONResponse(await run_in_threadpool(_record, ctx, items))


routes = [Route("/webhooks/sendgrid", sendgrid_events, methods=["POST"])]
