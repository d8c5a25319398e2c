"""``/archive/``: every issue that has gone out, as sent, without anyone's personal data; and its Atom feed.

An issue is public once a campaign of it has started (running, paused or finished). Its page is the
HTML stored with the campaign (rendered once, with placeholders): the greeting gets the fallback
name, the address a neutral "you", and the unsubscribe and preferences links point to the signup
form, so the page holds nothing of any one subscriber.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from xml.etree import ElementTree as ET

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
ATOM = "http://www.w3.org/2005/Atom"
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


async def index(request: Request) -> Response:
    ctx = web(request)
    entries = await run_in_threadpool(campaigns.published, ctx.store)
    response = ctx.pages.render("archive.html.j2", title="Past issues", entries=entries)
    response.headers["Cache-Control"] = f"public, max-age={MAX_AGE}"
    return response


async def issue(request: Request) -> Response:
    ctx = web(request)
    slug = request.path_params["slug"]
    stored = await run_in_threadpool(campaigns.published_html, ctx.store, slug) if SLUG.match(slug) else None
    if stored is None:
        return ctx.pages.message(
            "No such issue", "It may not have gone out yet.", status=404, links=(("All issues", "./"),)
        )
    page = REMOTE_CSS.sub("", SplitTemplate.parse(stored).fill(neutral_fields(ctx)))
    headers = {"Content-Security-Policy": ARCHIVE_CSP, "Cache-Control": f"public, max-age={MAX_AGE}"}
    return HTMLResponse(page, headers=headers)


def atom(ctx: WebContext, entries: list[PublishedIssue]) -> bytes:
    base = f"{ctx.base_url}/archive/"
    feed = ET.Element("feed", xmlns=ATOM)
    ET.SubElement(feed, "title").text = ctx.settings.newsletter.name
    ET.SubElement(feed, "id").text = base
    ET.SubElement(feed, "link", rel="self", href=f"{base}feed.xml")
    ET.SubElement(feed, "link", rel="alternate", type="text/html", href=base)
    updated = max((e.started_at for e in entries), default=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    ET.SubElement(feed, "updated").text = updated.isoformat()
    ET.SubElement(ET.SubElement(feed, "author"), "name").text = ctx.settings.newsletter.name
    for entry in entries:
        url = archive_url(ctx.settings, entry.slug)
        item = ET.SubElement(feed, "entry")
        ET.SubElement(item, "title").text = entry.subject
        ET.SubElement(item, "id").text = url
        ET.SubElement(item, "link", rel="alternate", type="text/html", href=url)
        ET.SubElement(item, "published").text = entry.started_at.isoformat()
        ET.SubElement(item, "updated").text = entry.started_at.isoformat()
        ET.SubElement(item, "summary").text = entry.preheader
    return bytes(ET.tostring(feed, encoding="utf-8", xml_declaration=True))


async def feed(request: Request) -> Response:
    ctx = web(request)
    entries = await run_in_threadpool(campaigns.published, ctx.store)
    return Response(
        atom(ctx, entries),
        media_type="application/atom+xml; charset=utf-8",
        headers={"Cache-Control": f"public, max-age={MAX_AGE}"},
    )


async def to_index(request: Request) -> Response:
    return RedirectResponse(f"{web(request).pages.root}/archive/", status_code=308)


routes = [
    Route("/archive", to_index, methods=["GET"]),
    Route("/archive/", index, methods=["GET"]),
    Route("/archive/feed.xml", feed, methods=["GET"]),
    Route("/archive/{slug}", issue, methods=["GET"]),
]
