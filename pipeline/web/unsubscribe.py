"""``/u/{token}``: the unsubscribe link of every message, and its RFC 8058 one-click POST.

GET only asks (link scanners follow links; a GET must change nothing). POST with
``List-Unsubscribe=One-Click`` unsubscribes at once: mail providers send it without cookies or CSRF
tokens, so the signed token in the URL is the whole authority, and the page's button posts the same
form. Both are idempotent, and a token that does not verify gets a plain 400 and changes nothing.
A link opens only its own person's page (``pipeline.audience.linkowner``); a preview link says so.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.audience.linkowner import link_owner
from pipeline.audience.subscribers import Subscriber, find_subscriber, unsubscribe
from pipeline.errors import AudienceError
from pipeline.render.links import PREFERENCES, UNSUBSCRIBE
from pipeline.store.statuses import LEFT, SubscriberStatus
from pipeline.web.context import WebContext, web
from pipeline.web.pages import mask_email
from pipeline.web.security import BodyTooLarge, read_form

ACTOR = "unsubscribe-link"


def _page(ctx: WebContext, token: str, subscriber: Subscriber, *, just_left: bool = False) -> Response:
    state = (
        "complained"
        if subscriber.status == SubscriberStatus.COMPLAINED
        else "done"
        if just_left or subscriber.status in LEFT
        else "ask"
    )
    title = {"ask": "Unsubscribe?", "done": "You are unsubscribed", "complained": "You are unsubscribed"}
    preferences = ctx.store.signer.sign(PREFERENCES, subscriber.id, address=subscriber.email)
    return ctx.pages.render(
        "unsubscribe.html.j2",
        title=title[state],
        state=state,
        masked=mask_email(subscriber.email),
        action=f"{ctx.pages.root}/u/{token}",
        preferences=f"{ctx.pages.root}/preferences/{preferences}",
    )


async def ask(request: Request) -> Response:
    ctx = web(request)
    token = request.path_params["token"]
    owner = await run_in_threadpool(link_owner, ctx.store, UNSUBSCRIBE, token)
    if owner.subscriber is None:
        return ctx.pages.link_refused(owner.opens)
    return _page(ctx, token, owner.subscriber)


async def one_click(request: Request) -> Response:
    ctx = web(request)
    token = request.path_params["token"]
    owner = await run_in_threadpool(link_owner, ctx.store, UNSUBSCRIBE, token)
    if owner.subscriber is None:
        return ctx.pages.link_refused(owner.opens)
    subscriber_id = owner.subscriber.id
    try:
        form = await read_form(request, max_fields=20)
    except BodyTooLarge:
        return ctx.pages.message("Too much data", status=413)
    if form.get("List-Unsubscribe") != "One-Click":
        return ctx.pages.message(
            "Nothing changed",
            "An unsubscribe request must say List-Unsubscribe=One-Click (RFC 8058).",
            status=400,
        )

    def leave() -> Subscriber | None:
        try:
            unsubscribe(ctx.store, subscriber_id, actor=ACTOR)
        except AudienceError:
            return None  # erased: nobody to unsubscribe
        return find_subscriber(ctx.store, subscriber_id)

    subscriber = await run_in_threadpool(leave)
    if subscriber is None:
        return ctx.pages.not_subscribed()
    return _page(ctx, token, subscriber, just_left=True)


routes = [
    Route("/u/{token}", ask, methods=["GET"]),
    Route("/u/{token}", one_click, methods=["POST"]),
]
