"""The email as a reader sees it whose system is light, or dark, whatever the editor's own system is.

Inside an iframe, a browser answers ``prefers-color-scheme`` from the editor's system (the CSS
Working Group resolved that the iframe element's ``color-scheme`` should decide; Chromium 156 does
not yet do it), so each view gets a copy whose colour-scheme queries already answer: in the dark
copy ``(prefers-color-scheme: dark)`` holds, in the light copy it does not. Only stylesheets and
``media`` attributes (a ``<picture>``'s dark logo) are touched, never the text.
"""

from __future__ import annotations

import re
from typing import Literal

Scheme = Literal["light", "dark"]
_QUERY = re.compile(r"\(\s*prefers-color-scheme\s*:\s*(light|dark)\s*\)", re.IGNORECASE)
_CSS = re.compile(
    r"<style\b[^>]*>.*?</style\s*>|\bmedia\s*=\s*(?:\"[^\"]*\"|'[^']*')", re.IGNORECASE | re.DOTALL
)
HOLDS, FAILS = "(min-width: 0px)", "(max-width: 0px)"
"""Queries true and false in any view wider than nothing, valid wherever the scheme query stood."""


def as_seen_in(html: str, scheme: Scheme) -> str:
    """``html`` with every colour-scheme query answered for a reader whose system is ``scheme``."""

    def answer(query: re.Match[str]) -> str:
        return HOLDS if query[1].lower() == scheme else FAILS

    return _CSS.sub(lambda css: _QUERY.sub(answer, css[0]), html)
