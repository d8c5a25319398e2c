"""The subscriber-facing web service: one Starlette app, built from the settings and an open store.

Routes (each area in its own module):

    GET  /u/{token}              unsubscribe page          POST /u/{token}   RFC 8058 one-click
    GET  /preferences/{token}    name, topics, status      POST              (CSRF-checked)
    GET  /subscribe              signup form               POST              form or JSON (OPTIONS: CORS)
    GET  /confirm/{token}        double opt-in: a button   POST              confirms
    POST /webhooks/sendgrid      signed Event Webhook
    GET  /c/{campaign.token}/{n} a tracked link: 302 to the campaign's n-th link, the click recorded
    GET  /archive/, /archive/{slug}, /archive/feed.xml     issues that went out, and their feed
    GET  /admin/reports, /admin/reports/{id}               the reports, behind the operator's password
    GET  /site.css               the pages' one stylesheet;  GET /  → /subscribe;  GET /favicon.ico

Every response, errors included, carries the security headers of ``pipeline.web.security``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pipeline.audience.profile import topics
from pipeline.audience.segments import load_segments
from pipeline.feedback.health import Watch
from pipeline.render.links import Links
from pipeline.render.renderer import Renderer
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.transports import open_transport
from pipeline.transports.base import Transport
from pipeline.web import admin, archive, clicks, preferences, signup, unsubscribe, webhook
from pipeline.web.accesslog import hide_tokens
from pipeline.web.context import WebContext, Worker, web, web_of
from pipeline.web.pages import Pages
from pipeline.web.security import FormGuard, Origins, SecureHeaders, SlidingWindow, security_headers
from pipeline.web.signature import SignatureVerifier

log = logging.getLogger(__name__)
HOUR = 3600.0
JOBS_STOP_SECONDS = 60.0
"""How long a stopping app waits for the signups it answered (their mail) before it goes."""
ERROR_TITLES = {
    404: "Page not found",
    405: "That does not work here",
    400: "Bad request",
    413: "Too much data",
}


async def _home(request: Request) -> Response:
    return RedirectResponse(f"{web(request).pages.root}/subscribe", status_code=307)


async def _favicon(_request: Request) -> Response:
    """Browsers ask for it on every site: an empty answer instead of a 404 in every console."""
    return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = ERROR_TITLES.get(exc.status_code, "Something is not right")
    return web(request).pages.message(title, status=exc.status_code, headers=dict(exc.headers or {}))


def _server_error(hsts: bool) -> Callable[[Request, Exception], Response]:
    def handler(request: Request, exc: Exception) -> Response:
        # Outside the middleware stack: the security headers are added here, by hand.
        response = web(request).pages.message(
            "Something went wrong on our side",
            "Nothing was changed. Please try again in a while.",
            status=500,
        )
        response.headers.update(security_headers(request.url.path, hsts=hsts))
        return response

    return handler


@contextlib.asynccontextmanager
async def _finishing_jobs(app: Starlette) -> AsyncIterator[None]:
    """When the app stops, the signups it has answered are recorded and their mail sent first."""
    yield
    await run_in_threadpool(web_of(app).jobs.join, JOBS_STOP_SECONDS)


def create_app(
    settings: Settings,
    store: Store,
    *,
    transport: Callable[[], Transport] | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The app for ``newsletter serve`` (and tests). ``transport`` opens the transport confirmations use
    (default: ``delivery.transport``); ``clock`` is Unix time (tests move it)."""
    key = settings.web.webhook_public_key
    segments = load_segments(settings.path(settings.newsletter.segments_file))
    context = WebContext(
        settings=settings,
        store=store,
        links=Links(settings, store.signer),
        pages=Pages(settings),
        topics=topics(segments),
        guard=FormGuard(store.signer, clock),
        signups=SlidingWindow(settings.web.signups_per_ip_per_hour, HOUR, clock),
        verifier=SignatureVerifier(key, max_age_seconds=settings.web.webhook_max_age_seconds)
        if key
        else None,
        health=Watch(settings.web),
        renderer=Renderer(settings),
        transport=transport or (lambda: open_transport(settings)),
        clock=clock,
        origins=Origins(settings.newsletter.base_url, settings.web.allowed_origins),
        jobs=Worker(),
        clicks=clicks.ClickLog(),
    )
    if context.verifier is None:
        log.warning("web.webhook_public_key is not set: SendGrid webhook posts will be refused")
    hsts = settings.newsletter.base_url.startswith("https://")
    routes = [
        Route("/", _home, methods=["GET"]),
        Route("/site.css", context.pages.stylesheet, methods=["GET"]),
        Route("/favicon.ico", _favicon, methods=["GET"]),
        *unsubscribe.routes,
        *preferences.routes,
        *signup.routes,
        *webhook.routes,
        *clicks.routes,
        *archive.routes,
        *admin.routes(settings, clock),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecureHeaders, hsts=hsts)],
        exception_handlers={HTTPException: _http_error, 500: _server_error(hsts)},
        lifespan=_finishing_jobs,
    )
    app.router.redirect_slashes = False  # no redirect is ever built from a path a stranger sent
    app.state.web = context
    return app


def server(
    app: Starlette,
    host: str,
    port: int,
    *,
    forwarded_allow_ips: str = "127.0.0.1",
    access_log: bool = True,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` (``run()`` blocks; set ``should_exit`` to stop it from another thread).

    Client addresses come from X-Forwarded-For only when the connection is from ``forwarded_allow_ips``
    (the TLS proxy), so the signup rate limit counts real clients, not the proxy. The access log shows
    token routes without their token (``/u/…``): a link's token is a credential.
    """
    hide_tokens(app)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=access_log,
    )
    return uvicorn.Server(config)
