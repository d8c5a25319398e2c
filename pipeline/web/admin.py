"""Operator pages behind a password: ``/admin/reports`` (every campaign) and ``/admin/reports/{id}``.

The password is ``NEWSLETTER_ADMIN_PASSWORD`` from the environment and nothing else (no user table,
nothing in a file); without it the routes do not exist and answer 404 like any unknown path. It is
asked for by HTTP Basic authentication rather than a login form: the pages only show (GET, nothing
changes), so there is no form to guard against cross-site posts, no session to store, expire or
steal, and no cookie. The browser sends the password with each request, over the TLS proxy's HTTPS,
and forgets it when it is closed. The access log holds method and path, never a header, so the
password never reaches a log.

Passwords are compared as SHA-256 digests with ``hmac.compare_digest``: in constant time, whatever
their length. Wrong passwords are counted per client address (``X-Forwarded-For`` through the trusted
proxy, as for signups): after ``FAILURES`` in ``FAILURE_WINDOW`` seconds, that address is answered
429 without its password being looked at until the window has passed, so guessing goes at ten tries
a quarter of an hour per address while the operator, who types it right, is never slowed. The count
is in this process's memory, like the signup limit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from pipeline.errors import DispatchError
from pipeline.feedback.reportpage import ReportPage
from pipeline.feedback.reports import campaign_stats
from pipeline.feedback.trends import trends
from pipeline.settings import Settings, secret
from pipeline.store.engine import Store
from pipeline.web.context import web
from pipeline.web.security import SlidingWindow, client_address

log = logging.getLogger(__name__)
PASSWORD_ENV = "NEWSLETTER_ADMIN_PASSWORD"
MIN_LENGTH = 12
"""A shorter password leaves the pages off: ten guesses a quarter of an hour would find it."""
FAILURES = 10
FAILURE_WINDOW = 15 * 60.0
REALM = 'Basic realm="newsletter reports", charset="UTF-8"'
PRIVATE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex, nofollow"}
LARGEST_ID = 2**63 - 1


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


def given_password(header: str | None) -> str | None:
    """The password of a Basic ``Authorization`` header; None without one, "" if it cannot be read."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64, or not UTF-8
        return ""
    return decoded.partition(":")[2]


class Admin:
    """The report pages and the check in front of them."""

    def __init__(self, settings: Settings, password: str, clock: Callable[[], float]) -> None:
        self._digest = _digest(password)
        self.page = ReportPage(settings)
        self.failures = SlidingWindow(FAILURES, FAILURE_WINDOW, clock)
        self.headers = {**PRIVATE, "Content-Security-Policy": f"{self.page.csp}; frame-ancestors 'none'"}

    def refused(self, request: Request) -> Response | None:
        """The answer to a request without the password (401) or from an address that guessed too
        often (429); None when it may see the page."""
        address = client_address(request)
        pages = web(request).pages
        if self.failures.exhausted(address):
            headers = {**PRIVATE, "Retry-After": str(int(FAILURE_WINDOW))}
            return pages.message("Too many wrong passwords; please try later", status=429, headers=headers)
        given = given_password(request.headers.get("authorization"))
        if given is not None and hmac.compare_digest(_digest(given), self._digest):
            return None
        if given is not None:
            self.failures.hit(address)
            if self.failures.exhausted(address):
                log.warning("admin: %d wrong passwords from %s; refused for a while", FAILURES, address)
        headers = {**PRIVATE, "WWW-Authenticate": REALM}
        return pages.message("Sign in to see the reports", status=401, headers=headers)

    def _answer(self, html: str) -> Response:
        return HTMLResponse(html, headers=self.headers)

    def _index(self, store: Store, links: str) -> str:
        return self.page.index(trends(store), links=links)

    def _campaign(self, store: Store, campaign_id: int, links: str) -> str:
        return self.page.campaign(campaign_stats(store, campaign_id), trends(store), links=links)

    async def index(self, request: Request) -> Response:
        if (refusal := self.refused(request)) is not None:
            return refusal
        ctx = web(request)
        return self._answer(
            await run_in_threadpool(self._index, ctx.store, f"{ctx.pages.root}/admin/reports/")
        )

    async def campaign(self, request: Request) -> Response:
        if (refusal := self.refused(request)) is not None:
            return refusal
        ctx, campaign_id = web(request), int(request.path_params["campaign_id"])
        if campaign_id > LARGEST_ID:
            raise HTTPException(404)
        links = f"{ctx.pages.root}/admin/reports/"
        try:
            html = await run_in_threadpool(self._campaign, ctx.store, campaign_id, links)
        except DispatchError:  # no such campaign
            raise HTTPException(404) from None
        return self._answer(html)


def routes(settings: Settings, clock: Callable[[], float]) -> list[Route]:
    """The admin routes, or none (every path of theirs a 404) without a usable password."""
    password = secret(PASSWORD_ENV)
    if password is None:
        return []
    if len(password) < MIN_LENGTH:
        log.error("%s is shorter than %d characters: the admin pages are off", PASSWORD_ENV, MIN_LENGTH)
        return []
    admin = Admin(settings, password, clock)
    return [
        Route("/admin/reports", admin.index, methods=["GET"]),
        Route("/admin/reports/{campaign_id:int}", admin.campaign, methods=["GET"]),
    ]
