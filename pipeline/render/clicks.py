"""Click tracking of our own: the links of an issue's HTML rewritten once to redirects on the web service.

A campaign keeps the list of its links (``targets``) as it starts; a tracked copy links each one to
``BASE/c/CAMPAIGN.TOKEN/N``, where N is the link's place in that list and TOKEN the recipient's
(``Links.tracking``). The redirect (``pipeline.web.clicks``) sends a reader only to the URL at that
place, never to one the request names, so it is no open redirect; and the token opens no page, so a
forwarded link gives nobody anything but a click counted for the person it was sent to.

The rewrite is of the rendered issue, once per send: a recipient's copy is still a join of fixed
chunks and their few values, the click token one of them. Links to our own pages (unsubscribe,
preferences, the archive) stay as they are, and so does the text part unless ``tracking.text_clicks``:
a plain-text reader sees where a link goes.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Sequence

from pipeline.render.renderer import RenderedIssue, SplitTemplate, placeholder

CLICK_FIELD = "click_token"
_HREF = re.compile(r"""(<a\b[^>]*?\shref=)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_PLACEHOLDER_MARK = "[[nl:"


def _links_in(html_text: str) -> list[str]:
    """The web links of an HTML document in order, HTML entities decoded, each once."""
    found: dict[str, None] = {}
    for match in _HREF.finditer(html_text):
        url = html.unescape(match[3]).strip()
        if url.lower().startswith(("http://", "https://")) and _PLACEHOLDER_MARK not in url:
            found.setdefault(url, None)
    return list(found)


def targets(rendered: RenderedIssue, earlier: Sequence[str] = ()) -> list[str]:
    """The list a campaign keeps of its links: ``earlier`` (a welcome step's, as it was), then the
    links of ``rendered`` not in it. A link keeps its place for good, so a redirect in a mail sent
    before an edit still goes where it went."""
    have = list(earlier)
    known = set(have)
    have += [url for url in _links_in(rendered.html.with_tags(placeholder)) if url not in known]
    return have


def track(
    rendered: RenderedIssue, campaign_id: int, links: Sequence[str], base_url: str, *, text: bool = False
) -> RenderedIssue:
    """``rendered`` with each link in ``links`` (outside ``base_url``) pointing at its redirect, in the
    HTML part and, with ``text``, in the text part too."""
    place = {url: index for index, url in enumerate(links) if not _ours(url, base_url)}
    prefix = f"{base_url}/c/{campaign_id}.{placeholder(CLICK_FIELD)}/"

    def href(match: re.Match[str]) -> str:
        index = place.get(html.unescape(match[3]).strip())
        if index is None:
            return match[0]
        return f"{match[1]}{match[2]}{prefix}{index}{match[2]}"

    def bare(match: re.Match[str]) -> str:
        index = place.get(match[0])
        return match[0] if index is None else f"{prefix}{index}"

    html_part = _HREF.sub(href, rendered.html.with_tags(placeholder))
    text_part = rendered.text.with_tags(placeholder)
    if text:
        text_part = _TEXT_URL.sub(bare, text_part)
    return dataclasses.replace(
        rendered, html=SplitTemplate.parse(html_part), text=SplitTemplate.parse(text_part)
    )


def tracked(rendered: RenderedIssue) -> bool:
    """Whether ``rendered`` has tracked links (so its copies need a click token)."""
    return CLICK_FIELD in rendered.html.fields or CLICK_FIELD in rendered.text.fields


def _ours(url: str, base_url: str) -> bool:
    return url == base_url or url.startswith(base_url + "/")
