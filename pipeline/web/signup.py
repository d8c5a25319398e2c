"""``/subscribe`` (form or JSON) and ``/confirm/{token}``: signup with double opt-in.

Every well-formed signup gets the same answer, whether the address was new, pending, subscribed or
suppressed, and gets it after the same work: before answering, only the address's syntax is checked.
The store is read and written and the confirmation mailed afterwards, by a job on the app's worker
(``WebContext.jobs``), so not even the response time tells whether an address is known. A form or
JSON post from another site's page is refused unless ``web.allowed_origins`` lists it (``Origins``).
Bots meet a honeypot field (filled in: the same answer, nothing done) and a per-address limit of
``web.signups_per_ip_per_hour`` posts, counted in this process's memory.

The confirmation link only asks: GET and HEAD change nothing, because mail scanners follow links.
Its button posts to the same URL, and that confirms. The signed token in the URL is the whole
authority, as for the one-click unsubscribe, so the post needs no CSRF token: the token reached only
the person's inbox, and a site able to forge the post would need it, and with it could confirm anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.audience import optin
from pipeline.audience.fields import Address
from pipeline.audience.profile import clean_name
from pipeline.audience.subscribers import find_subscriber
from pipeline.dispatch.single import send_confirmation
from pipeline.errors import AudienceError
from pipeline.render.addresses import AddressError, ascii_address
from pipeline.render.links import PREFERENCES
from pipeline.web.context import WebContext, web
from pipeline.web.pages import mask_email
from pipeline.web.security import FORM_LIMIT, BodyTooLarge, client_address, read_body, replayed

log = logging.getLogger(__name__)
HONEYPOT = "website"
ACCEPTED = "Check your inbox"
CROSS_SITE = "Please sign up on our own page"
BUSY_SECONDS = 60
TOKEN_IN_TEXT = re.compile(r"/(confirm|u|preferences)/[A-Za-z0-9_.~-]+")


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
    """The one answer every well-formed signup gets: it cannot say whether the mail went (that is
    decided after it), so it says how to ask again if nothing came."""
    hours = ctx.settings.web.confirm_hours
    if as_json:
        return JSONResponse({"status": "pending", "message": "check your inbox to confirm"}, status_code=202)
    return ctx.pages.message(
        ACCEPTED,
        f"If {email} can get {ctx.settings.newsletter.name}, a message with a link to confirm is on its way.",
        f"The link works for {hours} hours. Nothing arrived within a few minutes? Look in your spam "
        "folder, then sign up again: if the message could not be sent, a new one goes out at once.",
    )


def _refuse(
    ctx: WebContext, as_json: bool, status: int, message: str, links: tuple[tuple[str, str], ...] = ()
) -> Response:
    if as_json:
        return JSONResponse({"error": message}, status_code=status)
    return ctx.pages.message(message, status=status, links=links)


async def form(request: Request) -> Response:
    return _form(web(request))


async def submit(request: Request) -> Response:
    ctx = web(request)
    return ctx.origins.cors(request, await _submit(request, ctx))


async def preflight(request: Request) -> Response:
    """A script on an allowed site asks whether it may post JSON here."""
    return web(request).origins.preflight(request)


async def _submit(request: Request, ctx: WebContext) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    as_json = content_type == "application/json"
    if not ctx.origins.allows(request):
        return _refuse(ctx, as_json, 403, CROSS_SITE, (("Sign up here", f"{ctx.pages.root}/subscribe"),))
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
        address = optin.signup_address(signup.email)
    except AudienceError:
        message = "That does not look like an email address"
        return (
            JSONResponse({"error": message}, 400)
            if as_json
            else _form(ctx, status=400, signup=signup, error=message)
        )
    if ctx.jobs.full():
        response = _refuse(ctx, as_json, 503, "Too many signups right now; please try again in a minute")
        response.headers["Retry-After"] = str(BUSY_SECONDS)
        return response
    response = _answer(ctx, as_json, signup.email)
    response.background = BackgroundTask(_queue, ctx, partial(deliver, ctx, address, signup))
    return response


async def _queue(ctx: WebContext, job: Callable[[], None]) -> None:
    """Run once the answer is sent: only then may the job start."""
    ctx.jobs.put(job)


def deliver(ctx: WebContext, address: Address, signup: Signup) -> None:
    """The job after a signup's answer: record it, and mail the confirmation if one is due.

    If the mail does not go, whatever the reason, the hourly claim is given back (signing up again
    sends one at once) and the reason is logged by subscriber id, without the address or a token.
    """
    subscriber_id = None
    try:
        now = ctx.now()
        subscriber_id = optin.request_signup(
            ctx.store, address, name=signup.name, topics=signup.topics, now=now
        )
        if subscriber_id is None:
            return
        transport = ctx.transport()
        try:
            outcome = send_confirmation(ctx.settings, ctx.store, ctx.renderer, transport, subscriber_id, now)
        finally:
            transport.close()
        if outcome is None or outcome.status == "sent":
            return
        failure = f"{outcome.status}: {outcome.error}"
    except Exception as exc:  # the store's or a transport's, foreseen or not: the claim must go back
        failure = f"{type(exc).__name__}: {exc}"
    if subscriber_id is None:
        log.error("a signup was not recorded: %s", _loggable(failure, address))
        return
    log.error(
        "confirmation to subscriber %s not sent, so they may ask again at once: %s",
        subscriber_id,
        _loggable(failure, address),
    )
    optin.release_confirmation(ctx.store, subscriber_id)


def _loggable(text: str, address: Address) -> str:
    """``text`` fit for the log: the address masked wherever it appears (servers quote it back), and
    no link token (a token is a credential)."""
    forms = {address.email}
    with contextlib.suppress(AddressError):
        forms.add(ascii_address(address.email) or address.email)
    for written in forms:
        text = re.sub(re.escape(written), mask_email(address.email), text, flags=re.IGNORECASE)
    return TOKEN_IN_TEXT.sub(r"/\1/…", text)


def _link_broken(ctx: WebContext) -> Response:
    return ctx.pages.message(
        "This confirmation link does not work",
        f"It may have expired (links work for {ctx.settings.web.confirm_hours} hours) or been cut short.",
        status=400,
        links=(("Sign up again", f"{ctx.pages.root}/subscribe"),),
    )


def _outcome(ctx: WebContext, state: str, subscriber_id: int) -> Response:
    """The page for a link that needs no button (or had it pressed): what the person's standing is."""
    root = ctx.pages.root
    if state == "unknown":
        return ctx.pages.not_subscribed()
    if state == "refused":
        return ctx.pages.message(
            "We cannot subscribe this address", "Please write to us if you think this is a mistake."
        )
    preferences = f"{root}/preferences/{ctx.store.signer.sign(PREFERENCES, subscriber_id)}"
    weekday = ctx.settings.schedule.weekday.capitalize()
    title = "You are subscribed" if state == "confirmed" else "You were already subscribed"
    return ctx.pages.message(
        title,
        f"Thank you! {ctx.settings.newsletter.name} comes every {weekday}.",
        links=(("Read past issues", f"{root}/archive/"), ("Choose your topics", preferences)),
    )


async def ask(request: Request) -> Response:
    """GET (and HEAD): the button that confirms; nothing changes."""
    ctx = web(request)
    token = request.path_params["token"]
    subscriber_id = ctx.verify(optin.CONFIRM, token)
    if subscriber_id is None:
        return _link_broken(ctx)
    subscriber = await run_in_threadpool(find_subscriber, ctx.store, subscriber_id)
    state = optin.standing(subscriber)
    if subscriber is None or state != "pending":
        return _outcome(ctx, state, subscriber_id)
    return ctx.pages.render(
        "confirm.html.j2",
        title="Confirm your subscription",
        masked=mask_email(subscriber.email),
        action=f"{ctx.pages.root}/confirm/{token}",
    )


async def confirm(request: Request) -> Response:
    """POST: the person pressed the button."""
    ctx = web(request)
    subscriber_id = ctx.verify(optin.CONFIRM, request.path_params["token"])
    if subscriber_id is None:
        return _link_broken(ctx)
    state = await run_in_threadpool(optin.confirm, ctx.store, subscriber_id)
    return _outcome(ctx, state, subscriber_id)


routes = [
    Route("/subscribe", form, methods=["GET"]),
    Route("/subscribe", submit, methods=["POST"]),
    Route("/subscribe", preflight, methods=["OPTIONS"]),
    Route("/confirm/{token}", ask, methods=["GET"]),
    Route("/confirm/{token}", confirm, methods=["POST"]),
]
