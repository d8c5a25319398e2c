"""The access log without credentials: uvicorn logs each request's path, and a link's token is one.

Unsubscribe and preferences tokens never expire, so a log (journald keeps it for months) must not hold
them: on every route with a ``{token}`` in its path, the logged path keeps the route and shows the
token as ``…`` (``POST /u/… HTTP/1.1 200``).
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.routing import Route

ACCESS_LOGGER = "uvicorn.access"
HIDDEN = "…"
_PATH_ARG = 2
"""uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with (client, method, path and query, version, status)."""


class HideTokens(logging.Filter):
    """Rewrites the path of each access-log record whose route carries a token."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > _PATH_ARG:
            target = args[_PATH_ARG]
            if isinstance(target, str):
                record.args = (*args[:_PATH_ARG], self.hidden(target), *args[_PATH_ARG + 1 :])
        return True

    def hidden(self, target: str) -> str:
        """``/u/TOKEN?x=1`` → ``/u/…?x=1``; paths of other routes unchanged. Everything after a token
        route's prefix is hidden (the raw path may be percent-encoded, or have more after the token)."""
        path, question, query = target.partition("?")
        decoded = unquote(path)
        for prefix in self.prefixes:
            if decoded.startswith(prefix) and len(decoded) > len(prefix):
                return f"{prefix}{HIDDEN}{question}{query}"
        return target


def token_prefixes(app: Starlette) -> tuple[str, ...]:
    """``("/u/", "/preferences/", …)``: the literal start of every route whose path has a ``{token}``."""
    prefixes = {
        route.path.partition("{token")[0]
        for route in app.routes
        if isinstance(route, Route) and "{token" in route.path
    }
    return tuple(sorted(prefixes))


def hide_tokens(app: Starlette) -> None:
    """Install (or replace) the filter on uvicorn's access logger for ``app``'s token routes."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, HideTokens)]:
        logger.removeFilter(old)
    logger.addFilter(HideTokens(token_prefixes(app)))
