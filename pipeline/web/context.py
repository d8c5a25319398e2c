"""What every route of the web service shares, built once by ``create_app`` and kept on ``app.state``."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from starlette.applications import Starlette
from starlette.requests import Request

from pipeline.audience.profile import Topic
from pipeline.errors import TokenError
from pipeline.feedback.health import Watch
from pipeline.render.links import Links
from pipeline.render.renderer import Renderer
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.transports.base import Transport
from pipeline.web.pages import Pages
from pipeline.web.security import FormGuard, Origins, SlidingWindow
from pipeline.web.signature import SignatureVerifier

if TYPE_CHECKING:
    from pipeline.web.clicks import ClickLog

log = logging.getLogger(__name__)


class Worker:
    """Runs jobs one at a time, in the order queued, on a thread the app owns: the work a response
    must not wait for, so that its timing tells nothing (a signup's store writes and its mail).

    Callers check ``full`` before they promise the work (``limit`` jobs waiting: the service is
    busy), and ``put`` the job once the response is sent, so not even its start competes with the
    answer. The thread starts with a job and ends once idle for ``idle_seconds``; it is not a
    daemon, so the jobs queued when the process is asked to stop still run.
    """

    def __init__(self, *, limit: int = 1000, idle_seconds: float = 2.0) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._jobs: deque[Callable[[], None]] = deque()
        self._unfinished = 0
        self._finished = 0
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()

    def full(self) -> bool:
        with self._changed:
            return len(self._jobs) >= self.limit

    def put(self, job: Callable[[], None]) -> None:
        with self._changed:
            self._jobs.append(job)
            self._unfinished += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="web-worker")
                self._thread.start()
            self._changed.notify_all()

    def join(self, timeout: float | None = None, *, at_least: int = 0) -> bool:
        """Wait until every job queued so far has run, and ``at_least`` jobs in all (one a caller
        knows is coming); False if ``timeout`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._unfinished == 0 and self._finished >= at_least, timeout
            )

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._changed.wait_for(lambda: bool(self._jobs), self.idle_seconds):
                    self._thread = None
                    return
                job = self._jobs.popleft()
            try:
                job()
            except Exception as exc:  # a job handles its own failures; this keeps the thread alive
                log.error("a queued job failed: %s", type(exc).__name__)
            finally:
                with self._changed:
                    self._unfinished -= 1
                    self._finished += 1
                    self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class WebContext:
    settings: Settings
    store: Store
    links: Links
    pages: Pages
    topics: tuple[Topic, ...]
    """The tags segments use, offered as topics on the signup and preferences forms."""
    guard: FormGuard
    signups: SlidingWindow
    origins: Origins
    """The sites whose pages may post to ``/subscribe``."""
    jobs: Worker
    """Signups are recorded and confirmations mailed here, after the answer."""
    verifier: SignatureVerifier | None
    """None when ``web.webhook_public_key`` is not set: every webhook post is then refused."""
    health: Watch
    """Judges the campaigns of each webhook post against the bounce and complaint limits."""
    renderer: Renderer
    """Renders the confirmation mail (its templates compiled once)."""
    transport: Callable[[], Transport]
    """Opens the transport confirmations go through (``delivery.transport`` unless a test says otherwise)."""
    clock: Callable[[], float]
    clicks: ClickLog
    """The campaigns' tracked links, and the clicks on them waiting to be stored (on ``jobs``)."""

    def verify(self, purpose: str, token: str) -> int | None:
        """The subscriber id a link's token was signed for, or None if we did not sign it (or it expired)."""
        try:
            return self.store.signer.verify(purpose, token, now=self.clock())
        except TokenError:
            return None

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    @property
    def base_url(self) -> str:
        return self.settings.newsletter.base_url


def web(request: Request) -> WebContext:
    """The context of the app serving ``request``."""
    return web_of(request.app)


def web_of(app: Starlette) -> WebContext:
    """The context ``create_app`` built for ``app``."""
    return cast(WebContext, app.state.web)
