"""Mails of one copy, outside any campaign: the preview `newsletter render` writes, and the signup
confirmation. They go through the same renderer and message builder as every issue; a preview's links
are preview links (``Links.preview_fields``), which act for nobody."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import RenderedIssue, Renderer, personalise
from pipeline.settings import Settings

TEST_PREFIX = "[TEST] "
"""The subject prefix of a test copy (`newsletter send --to`)."""
CONFIRM_TEMPLATE = "confirm"
CONFIRM_SUBJECT = "Please confirm your subscription to {name}"
CONFIRM_PREHEADER = "One click and you are in. Did not ask? Ignore this email."


@dataclass(frozen=True, slots=True)
class Preview:
    """One recipient's copy three ways: what a browser shows, the text part, the whole message."""

    html: str
    text: str
    eml: bytes


def preview(settings: Settings, rendered: RenderedIssue, recipient: Recipient, links: Links) -> Preview:
    """The issue as ``recipient`` would get it, but with preview links: a forwarded preview changes nothing."""
    fields = links.preview_fields(recipient)
    copy = personalise(rendered, fields)
    template = MessageTemplate(settings, rendered)
    return Preview(copy.html, copy.text, template.build(recipient, fields, message_id=template.message_id()))


def confirmation(renderer: Renderer, confirm_url: str) -> RenderedIssue:
    """``templates/confirm.*`` with the link in it; the person's own values stay placeholders."""
    settings = renderer.settings
    return renderer.render_single(
        CONFIRM_TEMPLATE,
        CONFIRM_SUBJECT.format(name=settings.newsletter.name),
        CONFIRM_PREHEADER,
        confirm_url=confirm_url,
        hours=settings.web.confirm_hours,
    )
