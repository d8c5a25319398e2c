"""``/preferences/{token}``: a subscriber's own page: name, topics, unsubscribe, or subscribe again.

The signed token decides whose page it is; every form also carries a CSRF token bound to that same
subscriber (``FormGuard``), and a post without a valid one is a 403 that changes nothing. After a
change the browser is sent back to the page (303, our own path only) so a reload never posts twice.
A preview link's page says it is one and changes nothing (``pipeline.audience.linkowner``).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pipeline.audience.linkowner import link_owner
from pipeline.audience.profile import clean_name, update_profile
from pipeline.audience.subscribers import Subscriber, find_subscriber, set_status, unsubscribe
from pipeline.errors import AudienceError
from pipeline.render.links import PREFERENCES
from pipeline.store.statuses import SubscriberStatus
from pipeline.web.context import WebContext, web
from pipeline.web.pages import mask_email
from pipeline.web.security import BodyTooLarge, read_form

ACTOR = "preferences-page"
NOTICES = {
    "saved": "Saved. Thank you!",
    "unsubscribed": "You are unsubscribed from everything. We will not email you again.",
    "resubscribed": "Welcome back! You will get the next issue.",
    "unchanged": "Nothing needed changing.",
}
STATUS_TEXT = {
    "active": "subscribed",
    "unconfirmed": "waiting for you to confirm your address",
    "unsubscribed": "unsubscribed",
    "bounced": "not subscribed (our emails to you bounced)",
    "complained": "not subscribed",
}


def _page(
    ctx: WebContext,
    token: str,
    subscriber: Subscriber,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    return ctx.pages.render(
        "preferences.html.j2",
        status=status,
        title="Your preferences",
        masked=mask_email(subscriber.email),
        standing=subscriber.status,
        status_text=STATUS_TEXT.get(subscriber.status, subscriber.status),
        name=subscriber.name or "",
        topics=ctx.topics,
        chosen=set(subscriber.tags),
        csrf=ctx.guard.issue(subscriber.id),
        action=f"{ctx.pages.root}/preferences/{token}",
        notice=notice,
        error=error,
    )


async def show(request: Request) -> Response:
    ctx = web(request)
    token = request.path_params["token"]
    owner = await run_in_threadpool(link_owner, ctx.store, PREFERENCES, token)
    if owner.subscriber is None:
        return ctx.pages.link_refused(owner.opens)
    return _page(ctx, token, owner.subscriber, notice=NOTICES.get(request.query_params.get("done", ""), ""))


def _apply(ctx: WebContext, subscriber_id: int, form: FormData) -> str:
    """Do what the form asks; returns the notice to show, or raises ``AudienceError`` (refused)."""
    action = form.get("action")
    if action == "save":
        topics = [value for value in form.getlist("topic") if isinstance(value, str)]
        changed = update_profile(
            ctx.store,
            subscriber_id,
            name=clean_name(form.get("name")),
            chosen=topics,
            offered=[topic.tag for topic in ctx.topics],
            actor=ACTOR,
        )
        return "saved" if changed else "unchanged"
    if action == "unsubscribe":
        return "unsubscribed" if unsubscribe(ctx.store, subscriber_id, actor=ACTOR) else "unchanged"
    if action == "resubscribe":
        current = find_subscriber(ctx.store, subscriber_id)
        if current is None or current.status not in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED):
            raise AudienceError("only someone who unsubscribed or bounced can subscribe again here")
        set_status(ctx.store, subscriber_id, SubscriberStatus.ACTIVE, actor=ACTOR, resubscribe=True)
        return "resubscribed"
    raise AudienceError("unknown action")


async def change(request: Request) -> Response:
    ctx = web(request)
    token = request.path_params["token"]
    owner = await run_in_threadpool(link_owner, ctx.store, PREFERENCES, token)
    if owner.subscriber is None:
        return ctx.pages.link_refused(owner.opens)
    subscriber = owner.subscriber
    try:
        form = await read_form(request, max_fields=100)
    except BodyTooLarge:
        return ctx.pages.message("Too much data", status=413)
    if not ctx.guard.check(subscriber.id, form.get("csrf")):
        return ctx.pages.message(
            "This form has expired",
            "Nothing was changed. Please open your preferences page again and resubmit.",
            status=403,
            links=(("Open your preferences", f"{ctx.pages.root}/preferences/{token}"),),
        )
    try:
        done = await run_in_threadpool(_apply, ctx, subscriber.id, form)
    except AudienceError:
        return _page(ctx, token, subscriber, error="That change is not possible.", status=409)
    return RedirectResponse(f"{ctx.pages.root}/preferences/{token}?done={done}", status_code=303)


routes = [
    Route("/preferences/{token}", show, methods=["GET"]),
    Route("/preferences/{token}", change, methods=["POST"]),
]
