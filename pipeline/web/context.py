"""What every route of the web service shares, built once by ``create_app`` and kept on ``app.state``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from starlette.requests import Request

from pipeline.audience.profile import Topic
from pipeline.errors import TokenError
from pipeline.render.links import Links
from pipeline.render.renderer import Renderer
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.transports.base import Transport
from pipeline.web.pages import Pages
from pipeline.web.security import FormGuard, SlidingWindow
from pipeline.web.signature import SignatureVerifier


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
    verifier: SignatureVerifier | None
    """None when ``web.webhook_public_key`` is not set: every webhook post is then refused."""
    renderer: Renderer
    """Renders the confirmation mail (its templates compiled once)."""
    transport: Callable[[], Transport]
    """Opens the transport confirmations go through (``delivery.transport`` unless a test says otherwise)."""
    clock: Callable[[], float]

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
    return cast(WebContext, request.app.state.web)
