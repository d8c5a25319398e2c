"""The service's HTML pages: Jinja2 templates in ``templates/web/`` (the project's, else the packaged ones), autoescaped, sharing one stylesheet.

The stylesheet is rendered once from the email palette (``pipeline.render.renderer.LIGHT``/``DARK``) so the
pages look like the newsletter, light and dark, and is served from ``/site.css``: pages carry no
inline style or script, which lets their CSP be strict.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pipeline.audience.linkowner import Opens
from pipeline.render.renderer import DARK, LIGHT, template_loader
from pipeline.settings import Settings

CSS_MAX_AGE = 3600


def mask_email(email: str) -> str:
    """``ana@example.com`` → ``a***@example.com``: enough to recognise, not enough to harvest."""
    local, at, domain = email.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class Pages:
    def __init__(self, settings: Settings) -> None:
        self.env = jinja2.Environment(
            loader=template_loader(settings.path(settings.newsletter.templates_dir), "web"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.root = urlsplit(settings.newsletter.base_url).path.rstrip("/")
        """The path of ``base_url`` (empty unless the service sits below a prefix): links are made under it."""
        self.env.globals.update(newsletter=settings.newsletter, sender=settings.sender, root=self.root)
        self.css = self.env.get_template("site.css.j2").render(colors=LIGHT, dark=DARK)

    def render(self, template: str, /, *, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(template).render(context), status_code=status)

    def message(
        self,
        title: str,
        *lines: str,
        status: int = 200,
        links: tuple[tuple[str, str], ...] = (),
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        """A page that only says something: a heading, a few paragraphs, maybe links onward."""
        response = self.render("message.html.j2", status=status, title=title, lines=lines, links=links)
        response.headers.update(headers or {})
        return response

    def invalid_link(self) -> HTMLResponse:
        """The plain 400 for a token we did not sign: forged, cut short or changed on the way, or made
        for an address that is no longer the one its subscriber id stands for."""
        return self.message(
            "This link does not work",
            "It may have been cut short or changed on the way. Please use the link from the email itself.",
            "If it is from an old email, the address it was sent to may no longer be on our list.",
            status=400,
        )

    def link_refused(self, opens: Opens) -> HTMLResponse:
        """The answer to an unsubscribe or preferences link that opens nobody's page: nothing changes."""
        if opens is Opens.PREVIEW:
            return self.message(
                "This is a preview link: nothing was changed",
                "Links in a preview or a [TEST] copy act for nobody, so a forwarded preview cannot "
                "unsubscribe anyone. Every subscriber's own copy has links of their own.",
            )
        if opens is Opens.GONE:
            return self.not_subscribed()
        if opens is Opens.OUTDATED:
            return self.message(
                "This link is out of date",
                "Nothing was changed. It comes from an older email, and we cannot be sure it still "
                "belongs to you. Please use the link in our latest email.",
                status=400,
            )
        return self.invalid_link()

    def not_subscribed(self) -> HTMLResponse:
        """For a valid token whose subscriber was erased since."""
        return self.message(
            "You are not on our list",
            "This address gets no emails from us.",
            links=(("Subscribe", f"{self.root}/subscribe"),),
        )

    def stylesheet(self, _request: Request) -> Response:
        return Response(
            self.css,
            media_type="text/css",
            headers={"Cache-Control": f"public, max-age={CSS_MAX_AGE}"},
        )
