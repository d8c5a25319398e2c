"""Defences every route relies on: secure headers, CSRF tokens, a per-address rate limit, a body cap.

The headers go on every response (errors included): a CSP that allows no script at all, no framing,
no referrer (a token in our URLs must never leak to a linked site), no MIME sniffing, and no caching
or indexing of pages whose URL carries a token. CSRF tokens are HMACs by the store's signing key over
the subscriber id, a random nonce and an expiry, so a form of subscriber A can never be posted as B.
A form without a subscriber (signup) is guarded by where it comes from instead (``Origins``).
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable

from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.errors import TokenError
from pipeline.settings import origin_of
from pipeline.tokens import Signer

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""Our own pages: one stylesheet from us, forms posting to us, and not one script."""
ARCHIVE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""An archived issue is email HTML: inline styles and remote images, still no script."""
PUBLIC_PREFIXES = ("/archive", "/site.css", "/subscribe")


def security_headers(path: str, *, hsts: bool) -> dict[str, str]:
    """The headers every response of ours carries (a response may set its own CSP or caching first)."""
    headers = {
        "Content-Security-Policy": PAGE_CSP,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
        "Cache-Control": "no-store",
    }
    if not path.startswith(PUBLIC_PREFIXES):
        headers["X-Robots-Tag"] = "noindex, nofollow"
    if hsts:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


class SecureHeaders:
    """ASGI middleware adding ``security_headers`` to every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in security_headers(path, hsts=self.hsts).items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_secured)


class FormGuard:
    """CSRF tokens bound to one subscriber: ``nonce.token`` where the token signs id and expiry for
    the purpose ``csrf:<nonce>`` (so every form gets a fresh value, and none is valid for another id)."""

    PURPOSE = "csrf"
    MAX_LENGTH = 200

    def __init__(self, signer: Signer, clock: Callable[[], float], *, ttl_seconds: int = 4 * 3600) -> None:
        self.signer = signer
        self.clock = clock
        self.ttl_seconds = ttl_seconds

    def issue(self, subscriber_id: int) -> str:
        nonce = secrets.token_urlsafe(12)
        expires_at = int(self.clock()) + self.ttl_seconds
        return f"{nonce}.{self.signer.sign(f'{self.PURPOSE}:{nonce}', subscriber_id, expires_at=expires_at)}"

    def check(self, subscriber_id: int, value: object) -> bool:
        if not isinstance(value, str) or len(value) > self.MAX_LENGTH:
            return False
        nonce, _, token = value.partition(".")
        if not nonce or not token:
            return False
        try:
            signed_for = self.signer.verify(f"{self.PURPOSE}:{nonce}", token, now=self.clock())
        except TokenError:
            return False
        return signed_for == subscriber_id


class Origins:
    """The sites whose pages may post to a route: ``base_url``'s origin and ``web.allowed_origins``.

    A browser names the page a post comes from in ``Origin`` (every cross-site POST carries it, as
    ``null`` when the page hides where it is), or failing that in ``Referer``. A post that names
    neither did not come from a page on another site (curl, a server, a test), so it is let through:
    what it could do, anyone can do from their own machine. A post from another site is let through
    only when that site is allowed, and only then does it get the CORS answers a script needs.
    """

    METHODS = "POST"
    HEADERS = "Content-Type"
    MAX_AGE = "600"

    def __init__(self, base_url: str, allowed: Iterable[str]) -> None:
        own = origin_of(base_url)
        self.others = frozenset(allowed) - {own}
        self.trusted = self.others | ({own} if own else set())

    def page_of(self, request: Request) -> str | None:
        """The origin of the page that sent ``request`` ("null" if hidden or garbled); None if unnamed."""
        named = request.headers.get("origin")
        if named is None and (named := request.headers.get("referer")) is None:
            return None
        return origin_of(named) or "null"

    def allows(self, request: Request) -> bool:
        page = self.page_of(request)
        return page is None or page in self.trusted

    def cors(self, request: Request, response: Response) -> Response:
        """``response`` readable by a script on an allowed other site (it is sent as is otherwise)."""
        response.headers["Vary"] = "Origin"
        page = self.page_of(request)
        if page is not None and page in self.others:
            response.headers["Access-Control-Allow-Origin"] = page
        return response

    def preflight(self, request: Request) -> Response:
        """The answer to a browser asking whether a script may post JSON here (CORS ``OPTIONS``)."""
        asks = request.headers.get("access-control-request-method")
        if self.page_of(request) not in self.others or asks != self.METHODS:
            return Response(status_code=403, headers={"Vary": "Origin"})
        return self.cors(
            request,
            Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Methods": self.METHODS,
                    "Access-Control-Allow-Headers": self.HEADERS,
                    "Access-Control-Max-Age": self.MAX_AGE,
                },
            ),
        )


class SlidingWindow:
    """At most ``limit`` hits per key in any ``window`` seconds, kept in this process's memory.

    Per process: several workers each allow ``limit``. Enough to stop a simple bot; keys are dropped
    once idle for a window, and the map never holds more than ``max_keys`` (oldest dropped first).
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float], *, max_keys: int = 100_000
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        """Count one hit for ``key``; False if it is over the limit (the hit is not counted then)."""
        now = self.clock()
        with self._lock:
            hits = self._hits.pop(key, None) or deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            allowed = len(hits) < self.limit
            if allowed:
                hits.append(now)
            self._hits[key] = hits  # re-inserted: the dict stays ordered by last use
            if len(self._hits) > self.max_keys:
                self._forget(now)
            return allowed

    def exhausted(self, key: str) -> bool:
        """Whether ``key`` has no hit left in the current window (nothing is counted)."""
        now = self.clock()
        with self._lock:
            return sum(1 for t in self._hits.get(key, ()) if t > now - self.window) >= self.limit

    def _forget(self, now: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]:
            del self._hits[key]
        while len(self._hits) > self.max_keys:
            del self._hits[next(iter(self._hits))]


def client_address(request: Request) -> str:
    """The client's address; behind a proxy uvicorn takes it from X-Forwarded-For (trusted proxies only)."""
    return request.client.host if request.client else "unknown"


FORM_LIMIT = 16 * 1024
"""The largest form or JSON post a subscriber-facing page accepts."""


class BodyTooLarge(Exception):
    """The request body is bigger than the route accepts."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to pass ``limit``: by Content-Length before reading,
    or while streaming a body that came without one."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def replayed(request: Request, body: bytes) -> Request:
    """A copy of ``request`` whose body is ``body`` (already read and capped), for ``form()``/``json()``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_form(request: Request, *, max_fields: int) -> FormData:
    """A posted form no larger than ``FORM_LIMIT`` (``BodyTooLarge`` otherwise), without files."""
    body = await read_body(request, FORM_LIMIT)
    return await replayed(request, body).form(max_files=0, max_fields=max_fields)
