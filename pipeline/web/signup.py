"""``/subscribe`` (form or JSON) and ``/confirm/{token}``: signup with double opt-in.

Every well-formed signup gets the same answer, whether the address was new, pending, subscribed or
suppressed, and the confirmation is sent after the response (a background task), so not even the
response time tells. Bots meet a honeypot field (filled in: the same answer, nothing done) and a
per-address limit of ``web.signups_per_ip_per_hour`` posts, counted in this process's memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.audience import optin
from pipeline.audience.profile import clean_name
from pipeline.dispatch.single import send_confirmation
from pipeline.errors import AudienceError, PipelineError
from pipeline.render.links import PREFERENCES
from pipeline.web.context import WebContext, web
from pipeline.web.security import FORM_LIMIT, BodyTooLarge, client_address, read_body, replayed

log = logging.getLogger(__name__)
HONEYPOT = "website"
ACCEPTED = "Check your inbox"


@dataclass(frozen=True, slots=True)
class Signup:
    email: str
    name: str | None
    topics: list[str]
    honeypot: bool


async def _signup(request: Request, ctx: WebContext, as_json: bool) -> Signup:
    """The posted fields; ``ValueError`` if the body is not a form or JSON object we can read."""
    body = await read_body(request, FORM_LIMIT)
    if as_json:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        topics = data.get("topics") or []
        email, name, trap = data.get("email"), data.get("name"), data.get(HONEYPOT)
    else:
        form = await replayed(request, body).form(max_files=0, max_fields=100)
        topics = form.getlist("topic")
        email, name, trap = form.get("email"), form.get("name"), form.get(HONEYPOT)
    offered = {topic.tag for topic in ctx.topics}
    chosen = [t for t in topics if isinstance(t, str) and t in offered] if isinstance(topics, list) else []
    return Signup(
        email=email.strip()[:400] if isinstance(email, str) else "",
        name=clean_name(name),
        topics=list(dict.fromkeys(chosen)),
        honeypot=bool(trap),
    )


def _form(ctx: WebContext, *, status: int = 200, signup: Signup | None = None, error: str = "") -> Response:
    return ctx.pages.render(
        "subscribe.html.j2",
        status=status,
        title="Subscribe",
        topics=ctx.topics,
        email=signup.email if signup else "",
        name=(signup.name or "") if signup else "",
        chosen=set(signup.topics) if signup else set(),
        error=error,
    )


def _answer(ctx: WebContext, as_json: bool, email: str) -> Response:
    """The one answer every well-formed signup gets."""
    hours = ctx.settings.web.confirm_hours
    if as_json:
        return JSONResponse({"status": "pending", "message": "check your inbox to confirm"}, status_code=202)
    return ctx.pages.message(
        ACCEPTED,
        f"If {email} can get {ctx.settings.newsletter.name}, a message with a link to confirm is on its way.",
        f"The link works for {hours} hours. Nothing arrived? Look in your spam folder.",
    )


def _refuse(ctx: WebContext, as_json: bool, status: int, message: str) -> Response:
    if as_json:
        return JSONResponse({"error": message}, status_code=status)
    return ctx.pages.message(message, status=status)


async def form(request: Request) -> Response:
    return _form(web(request))


async def submit(request: Request) -> Response:
    ctx = web(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    as_json = content_type == "application/json"
    if not ctx.signups.hit(client_address(request)):
        response = _refuse(ctx, as_json, 429, "Too many signups from your network; please try again later")
        response.headers["Retry-After"] = "3600"
        return response
    try:
        signup = await _signup(request, ctx, as_json)
    except BodyTooLarge:
        return _refuse(ctx, as_json, 413, "Too much data")
    except ValueError:
        return _refuse(ctx, as_json, 400, "Send a form or a JSON object with an email")
    if signup.honeypot:
        return _answer(ctx, as_json, signup.email)
    try:
        subscriber_id = await run_in_threadpool(
            optin.request_signup,
            ctx.store,
            signup.email,
            name=signup.name,
            topics=signup.topics,
            now=ctx.now(),
        )
    except AudienceError:
        message = "That does not look like an email address"
        return (
            JSONResponse({"error": message}, 400)
            if as_json
            else _form(ctx, status=400, signup=signup, error=message)
        )
    response = _answer(ctx, as_json, signup.email)
    if subscriber_id is not None:
        response.background = BackgroundTask(deliver, ctx, subscriber_id)
    return response


def deliver(ctx: WebContext, subscriber_id: int) -> None:
    """Send the confirmation (after the response); on failure give the hourly claim back and log it."""
    outcome = None
    try:
        transport = ctx.transport()
        try:
            outcome = send_confirmation(
                ctx.settings, ctx.store, ctx.renderer, transport, subscriber_id, ctx.now()
            )
        finally:
            transport.close()
    except (PipelineError, OSError) as exc:
        log.error("confirmation to subscriber %s not sent: %s", subscriber_id, exc)
        optin.release_confirmation(ctx.store, subscriber_id)
        return
    if outcome is not None and outcome.status != "sent":
        log.error("confirmation to subscriber %s %s: %s", subscriber_id, outcome.status, outcome.error)
        optin.release_confirmation(ctx.store, subscriber_id)


async def confirm(request: Request) -> Response:
    ctx = web(request)
    subscriber_id = ctx.verify(optin.CONFIRM, request.path_params["token"])
    root = ctx.pages.root
    if subscriber_id is None:
        return ctx.pages.message(
            "This confirmation link does not work",
            f"It may have expired (links work for {ctx.settings.web.confirm_hours} hours) or been cut short.",
            status=400,
            links=(("Sign up again", f"{root}/subscribe"),),
        )
    result = await run_in_threadpool(optin.confirm, ctx.store, subscriber_id)
    if result == "unknown":
        return ctx.pages.not_subscribed()
    if result == "refused":
        return ctx.pages.message(
            "We cannot subscribe this address", "Please write to us if you think this is a mistake."
        )
    preferences = f"{root}/preferences/{ctx.store.signer.sign(PREFERENCES, subscriber_id)}"
    weekday = ctx.settings.schedule.weekday.capitalize()
    title = "You are subscribed" if result == "confirmed" else "You were already subscribed"
    return ctx.pages.message(
        title,
        f"Thank you! {ctx.settings.newsletter.name} comes every {weekday}.",
        links=(("Read past issues", f"{root}/archive/"), ("Choose your topics", preferences)),
    )


routes = [
    Route("/subscribe", form, methods=["GET"]),
    Route("/subscribe", submit, methods=["POST"]),
    Route("/confirm/{token}", confirm, methods=["GET"]),
]
