"""The editor's live preview (``newsletter preview``): a local Starlette app over one ``Workspace``.

Routes:

    GET /                      every issue with what `newsletter check` says of it
    GET /issue/{name}          one issue: inbox line, problems, desktop / phone / dark phone, text part
    GET /state, /issue/{name}/state    the same pages' changing parts as JSON, for the page's script
    GET /issue/{name}/html     the reader's copy alone;  GET /issue/{name}/eml  the whole message
    GET /events                server-sent events: one per change the poll finds
    GET /live.js               the pages' script

It is not the subscriber web service (``pipeline.web``): it runs on the editor's machine, answers only
for its own host names (so a web page cannot reach it by rebinding a name to 127.0.0.1), and its
pages may run their one script. The poll runs while the server does; stopping the server ends every
event stream first, so Ctrl-C stops it at once even with pages open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.preview.watch import POLL_SECONDS, Changes
from pipeline.preview.workspace import READER, IssueView, Workspace

log = logging.getLogger(__name__)
PAGES = Path(__file__).parent / "templates"
"""The preview's own pages and script: the tool's, not the newsletter's, so no project overrides them
(and `newsletter templates` does not offer them)."""
HEARTBEAT_SECONDS = 15.0
"""A comment on each idle event stream this often: a closed tab's stream ends at the latest then, even
where the server does not report the disconnect."""
GRACE_SECONDS = 5
"""How long a stopping server waits for requests still rendering."""
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src * data:; base-uri 'none'; form-action 'none'"
)
"""The pages' own script only; the email inside (iframes inherit this) keeps its inline styles and
remote images, and runs no script."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
"""The Host names a browser on this machine reaches the preview by."""


class Hub:
    """Fans each change out to every open page's event stream; ``close`` ends them all."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.closed = False

    @property
    def listeners(self) -> int:
        """Open event streams: one per visible page."""
        return len(self._queues)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._queues:
            queue.put_nowait(event)

    def close(self) -> None:
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield "retry: 1000\n\n"
            while not self.closed:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": idle\n\n"
                    continue
                if event is None:
                    return
                yield f"data: {json.dumps(event)}\n\n"
        finally:
            self._queues.discard(queue)


def event_of(found: Changes) -> dict[str, Any]:
    """What a page needs to know of a change: which issues, or all of them."""
    return {"issues": sorted(path.stem for path in found.issues), "all": found.everything or found.segments}


class Preview:
    """The app's state: the workspace, the open pages' streams, the page templates."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.hub = Hub()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(PAGES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.script = self.env.loader.get_source(self.env, "live.js.j2")[0]  # type: ignore[union-attr]

    def render(self, template: str, **context: Any) -> str:
        settings = self.workspace.settings
        return self.env.get_template(template).render(
            newsletter=settings.newsletter, sender=settings.sender, reader=READER, **context
        )

    def index_context(self) -> dict[str, Any]:
        issues_dir = self.workspace.watched.issues_dir
        return {"views": self.workspace.views(), "issues_dir": issues_dir, "state_url": "/state"}

    def issue_context(self, name: str, view: IssueView | None) -> dict[str, Any]:
        segments, audience = self.workspace.audience(view) if view else ([], [])
        email = view.email if view else None
        parts = {"light": email.light, "dark": email.dark, "text": email.copy.text} if email else None
        return {
            "name": name,
            "view": view,
            "email": parts,
            "segments": segments,
            "audience": audience,
            "state_url": f"/issue/{quote(name)}/state",
            "title": f"{view.issue.subject if view and view.issue else name} · preview",
        }

    def state(self, context: dict[str, Any], parts: Sequence[str]) -> dict[str, Any]:
        """The page's changing parts, each rendered by the template the page includes it with."""
        rendered = {part: self.render(f"{part}.html.j2", **context) for part in parts}
        state = {"title": context.get("title", "Issues · preview"), "parts": rendered}
        return state | ({"email": context["email"]} if "email" in context else {})


ISSUE_PARTS = ("head", "inbox", "problems", "broken")


def preview_of(request: Request) -> Preview:
    preview: Preview = request.app.state.preview
    return preview


async def _index(request: Request) -> Response:
    preview = preview_of(request)
    context = await run_in_threadpool(preview.index_context)
    return HTMLResponse(preview.render("index.html.j2", title="Issues · preview", **context))


async def _index_state(request: Request) -> Response:
    preview = preview_of(request)
    context = await run_in_threadpool(preview.index_context)
    return JSONResponse(preview.state(context, ("issues",)))


async def _issue_context(request: Request) -> tuple[Preview, dict[str, Any]]:
    preview, name = preview_of(request), request.path_params["name"]
    view = await run_in_threadpool(preview.workspace.view, name)
    return preview, preview.issue_context(name, view)


async def _issue(request: Request) -> Response:
    preview, context = await _issue_context(request)
    status = 200 if context["view"] else 404
    return HTMLResponse(preview.render("issue.html.j2", **context), status_code=status)


async def _issue_state(request: Request) -> Response:
    preview, context = await _issue_context(request)
    return JSONResponse(preview.state(context, ISSUE_PARTS), status_code=200 if context["view"] else 404)


async def _issue_copy(request: Request) -> Response:
    preview = preview_of(request)
    view = await run_in_threadpool(preview.workspace.view, request.path_params["name"])
    if view is None or view.email is None:
        return Response("No rendered copy: see the issue's page for why.", 404, media_type="text/plain")
    copy = view.email.copy
    if request.url.path.endswith("/eml"):
        disposition = f'attachment; filename="{view.name}.eml"'
        return Response(copy.eml, media_type="message/rfc822", headers={"Content-Disposition": disposition})
    return HTMLResponse(copy.html)


async def _events(request: Request) -> Response:
    stream = preview_of(request).hub.stream()
    return StreamingResponse(stream, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def _script(request: Request) -> Response:
    return Response(preview_of(request).script, media_type="text/javascript")


async def _favicon(_request: Request) -> Response:
    """Browsers ask for it: an empty answer instead of a 404 in the console."""
    return Response(status_code=204)


async def _poll(preview: Preview) -> None:
    """Look at the files every ``POLL_SECONDS``; tell the open pages what changed."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        try:
            found = await run_in_threadpool(preview.workspace.poll)
        except Exception:  # a bug must not stop the preview: the next poll tries again
            log.exception("looking for changes failed")
            continue
        if found:
            preview.hub.publish(event_of(found))


@contextlib.asynccontextmanager
async def _polling(app: Starlette) -> AsyncIterator[None]:
    task = asyncio.create_task(_poll(app.state.preview))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _NoStore:
    """Every answer is a draft of the moment: never cached, and under the pages' CSP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"cache-control", b"no-store"),
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_hosts(host: str) -> list[str]:
    """The Host names to answer when listening on ``host``: the loopback names and ``host`` itself;
    any name on an address that listens on every interface (``0.0.0.0``, ``::``)."""
    if host in {"0.0.0.0", "::", ""}:
        return ["*"]
    return [*LOOPBACK_NAMES, f"[{host}]" if ":" in host else host]


def create_app(workspace: Workspace, *, hosts: Sequence[str] = LOOPBACK_NAMES) -> Starlette:
    """The preview of ``workspace``'s project, answering requests for ``hosts`` only."""
    routes = [
        Route("/", _index, methods=["GET"]),
        Route("/state", _index_state, methods=["GET"]),
        Route("/events", _events, methods=["GET"]),
        Route("/live.js", _script, methods=["GET"]),
        Route("/favicon.ico", _favicon, methods=["GET"]),
        Route("/issue/{name}", _issue, methods=["GET"]),
        Route("/issue/{name}/state", _issue_state, methods=["GET"]),
        Route("/issue/{name}/html", _issue_copy, methods=["GET"]),
        Route("/issue/{name}/eml", _issue_copy, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)), Middleware(_NoStore)],
        lifespan=_polling,
    )
    app.state.preview = Preview(workspace)
    return app


class _Server(uvicorn.Server):
    """Ends the event streams before the server waits for its connections to close."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.hub.close()
        await super().shutdown(sockets)


def server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server for ``app`` (``run()`` blocks until Ctrl-C, or ``should_exit`` is set)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        server_header=False,
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    return _Server(config, app.state.preview.hub)
