"""``/archive/``: every issue that has gone out, as a web page, without anyone's personal data; its Atom feed.

An issue is public once a campaign of it has started (running, paused or finished). Its page is made
for the web from the content that campaign stored when it was created (``RenderedIssue.web``), so it
shows the issue as it was sent, whatever became of the YAML file, and the web host needs no
``issues/`` folder: the date, the content, a signup box and the way to the other issues, with none of
what the email says to one reader. A campaign created before the store kept that content (revision
0007) shows its stored email instead: the greeting gets the fallback name, the address a neutral
"you", and the unsubscribe and preferences links point to the signup form.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.dispatch import campaigns
from pipeline.dispatch.campaigns import PublishedIssue
from pipeline.render.links import archive_url
from pipeline.render.renderer import SplitTemplate
from pipeline.web.context import WebContext, web
from pipeline.web.security import ARCHIVE_CSP

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
REMOTE_CSS = re.compile(
    r"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*>|@import\s+url\(\s*[\"']?https?://[^)]*\)\s*;?", re.I
)
"""MJML links web fonts (Google Fonts); the archive does not make every reader's browser call Google."""
ISSUE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' https: data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""An issue's page: the policy of our other pages (``PAGE_CSP``), plus the issue's own images (its
hero, a Markdown image), which live on other https sites."""
ATOM = "http://www.w3.org/2005/Atom"
FEED_ENTRIES = 20
"""Issues the feed carries, newest first, each in full: a feed reader polls it and keeps what it saw;
the archive page lists them all."""
MAX_AGE = 300


def neutral_fields(ctx: WebContext) -> dict[str, str]:
    """What stands in for one person's values on the public page (HTML-escaped)."""
    signup = f"{ctx.base_url}/subscribe"
    values = {
        "first_name": ctx.settings.newsletter.first_name_fallback,
        "email": "you",
        "unsubscribe_url": signup,
        "preferences_url": signup,
    }
    return {name: html.escape(value) for name, value in values.items()}


def neutral(ctx: WebContext, stored: str) -> str:
    """Stored HTML with nobody's values in it (the packaged content template has no placeholder; a
    project's own may greet the reader)."""
    return SplitTemplate.parse(stored).fill(neutral_fields(ctx))


def _public(response: Response) -> Response:
    response.headers["Cache-Control"] = f"public, max-age={MAX_AGE}"
    return response


async def index(request: Request) -> Response:
    ctx = web(request)
    entries = await run_in_threadpool(campaigns.published, ctx.store)
    return _public(ctx.pages.render("archive.html.j2", title="Past issues", entries=entries))


@dataclass(frozen=True, slots=True)
class IssuePage:
    """What an issue's page shows: the issue, its web content with neutral values, and the issues
    either side of it; or, for a campaign from before revision 0007, its email with neutral values."""

    entry: PublishedIssue
    content: str | None
    email: str | None
    older: PublishedIssue | None
    newer: PublishedIssue | None


def issue_page(ctx: WebContext, slug: str) -> IssuePage | None:
    """The page of the issue ``slug``, or None if it has not gone out."""
    entries = campaigns.published(ctx.store)  # newest first
    position = next((i for i, entry in enumerate(entries) if entry.slug == slug), None)
    if position is None:
        return None
    content = campaigns.published_content(ctx.store, [slug]).get(slug)
    email = campaigns.published_html(ctx.store, slug) if content is None else None
    return IssuePage(
        entries[position],
        None if content is None else neutral(ctx, content),
        None if email is None else REMOTE_CSS.sub("", neutral(ctx, email)),
        entries[position + 1] if position + 1 < len(entries) else None,
        entries[position - 1] if position > 0 else None,
    )


async def issue(request: Request) -> Response:
    ctx = web(request)
    slug = request.path_params["slug"]
    page = await run_in_threadpool(issue_page, ctx, slug) if SLUG.match(slug) else None
    if page is None or (page.content is None and page.email is None):
        return ctx.pages.message(
            "No such issue", "It may not have gone out yet.", status=404, links=(("All issues", "./"),)
        )
    if page.content is None:
        return _public(HTMLResponse(page.email, headers={"Content-Security-Policy": ARCHIVE_CSP}))
    response = ctx.pages.render(
        "issue.html.j2",
        title=page.entry.subject,
        entry=page.entry,
        url=archive_url(ctx.settings, slug),
        content=Markup(page.content),
        older=page.older,
        newer=page.newer,
    )
    response.headers["Content-Security-Policy"] = ISSUE_CSP
    return _public(response)


def atom(ctx: WebContext, entries: list[PublishedIssue], contents: dict[str, str]) -> bytes:
    """The feed of ``entries``, each with its full content where ``contents`` has it (a campaign from
    before revision 0007 gives only its summary and link)."""
    base = f"{ctx.base_url}/archive/"
    feed = ET.Element("feed", xmlns=ATOM)
    ET.SubElement(feed, "title").text = ctx.settings.newsletter.name
    ET.SubElement(feed, "id").text = base
    ET.SubElement(feed, "link", rel="self", href=f"{base}feed.xml")
    ET.SubElement(feed, "link", rel="alternate", type="text/html", href=base)
    updated = max((e.started_at for e in entries), default=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    ET.SubElement(feed, "updated").text = updated.isoformat()
    ET.SubElement(ET.SubElement(feed, "author"), "name").text = ctx.settings.newsletter.name
    for entry in entries[:FEED_ENTRIES]:
        url = archive_url(ctx.settings, entry.slug)
        item = ET.SubElement(feed, "entry")
        ET.SubElement(item, "title").text = entry.subject
        ET.SubElement(item, "id").text = url
        ET.SubElement(item, "link", rel="alternate", type="text/html", href=url)
        ET.SubElement(item, "published").text = entry.started_at.isoformat()
        ET.SubElement(item, "updated").text = entry.started_at.isoformat()
        ET.SubElement(item, "summary").text = entry.preheader
        if entry.slug in contents:
            ET.SubElement(item, "content", type="html").text = neutral(ctx, contents[entry.slug])
    return bytes(ET.tostring(feed, encoding="utf-8", xml_declaration=True))


def _feed(ctx: WebContext) -> bytes:
    entries = campaigns.published(ctx.store)
    contents = campaigns.published_content(ctx.store, [e.slug for e in entries[:FEED_ENTRIES]])
    return atom(ctx, entries, contents)


async def feed(request: Request) -> Response:
    body = await run_in_threadpool(_feed, web(request))
    return _public(Response(body, media_type="application/atom+xml; charset=utf-8"))


async def to_index(request: Request) -> Response:
    return RedirectResponse(f"{web(request).pages.root}/archive/", status_code=308)


routes = [
    Route("/archive", to_index, methods=["GET"]),
    Route("/archive/", index, methods=["GET"]),
    Route("/archive/feed.xml", feed, methods=["GET"]),
    Route("/archive/{slug}", issue, methods=["GET"]),
]
