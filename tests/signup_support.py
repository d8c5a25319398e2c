"""What the signup tests share: waiting for the jobs a signup leaves to the app's worker, the app under
uvicorn on a free port (what a browser or a stranger's script talks to), and pages of another site."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.web import create_app, server
from pipeline.web.context import web_of
from tests.system import free_port
from tests.web_support import serving

WAIT = 15.0
"""Seconds a test waits for the worker or a server (never asserted as a duration)."""


def settle(client: TestClient) -> None:
    """Wait until the worker of the client's app has run every job queued so far: the signups' store
    writes and confirmation mail, which happen after each answer."""
    app = client.app
    assert isinstance(app, Starlette)
    settle_app(app)


def settle_app(app: Starlette, jobs: int = 0) -> None:
    """Wait for the app's worker; over HTTP, the job of an answer a client has may not be queued yet
    (it is queued once the answer is sent), so say how many ``jobs`` have to have run by now."""
    assert web_of(app).jobs.join(WAIT, at_least=jobs), "the signup jobs did not finish"


@dataclass(frozen=True)
class Live:
    app: Starlette
    settings: Settings
    """The app's settings: ``newsletter.base_url`` is the address it listens on."""

    @property
    def base_url(self) -> str:
        return self.settings.newsletter.base_url


@contextmanager
def live_app(settings: Settings, store: Store, **options: Any) -> Iterator[Live]:
    """``create_app(settings, store, **options)`` under uvicorn on a free localhost port, its
    ``base_url`` that address, until the block ends."""
    port = free_port()
    newsletter = settings.newsletter.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    configured = settings.model_copy(update={"newsletter": newsletter})
    app = create_app(configured, store, **options)
    with serving(server(app, "127.0.0.1", port, access_log=False)):
        yield Live(app, configured)
        settle_app(app)


@contextmanager
def another_site(pages: dict[str, str]) -> Iterator[str]:
    """A plain web server on another localhost port (so another origin) serving ``pages`` (path → HTML);
    yields its origin, ``http://127.0.0.1:PORT``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads the store, not this server's log."""

    site = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=site.serve_forever, name="another-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()
        thread.join(WAIT)
