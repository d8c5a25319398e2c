"""A personalised copy → an RFC 5322 message with the headers mailbox providers require of bulk mail.

multipart/alternative with the text part first (clients show the last part they can display), and
one-click unsubscribe per RFC 8058: ``List-Unsubscribe`` with an https URL (plus mailto when set) and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from pipeline.recipient import Recipient
from pipeline.render import PersonalisedMessage
from pipeline.settings import Settings


def list_id(settings: Settings) -> str:
    """``Name <slug.host>``: lets mailbox filters and providers recognise the list (RFC 2919)."""
    host = re.sub(r"^https?://", "", settings.newsletter.base_url).split("/")[0].split(":")[0]
    slug = re.sub(r"[^a-z0-9]+", "-", settings.newsletter.name.lower()).strip("-") or "newsletter"
    return f"{settings.newsletter.name} <{slug}.{host}>"


def list_unsubscribe(settings: Settings, unsubscribe_url: str) -> str:
    mailto = settings.sender.unsubscribe_mailto
    return f"<{unsubscribe_url}>" + (f", <mailto:{mailto}?subject=unsubscribe>" if mailto else "")


def list_headers(settings: Settings, unsubscribe_url: str) -> dict[str, str]:
    """The list headers every transport sends, whatever its wire format."""
    return {
        "List-Unsubscribe": list_unsubscribe(settings, unsubscribe_url),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": list_id(settings),
    }


def _address(email: str, name: str | None) -> Address:
    local, _, domain = email.rpartition("@")
    return Address(display_name=name or "", username=local, domain=domain)


def build_message(
    settings: Settings,
    copy: PersonalisedMessage,
    recipient: Recipient,
    unsubscribe_url: str,
    *,
    message_id: str | None = None,
    date: datetime | None = None,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    """The complete message for one recipient."""
    sender = settings.sender
    domain = sender.from_email.rpartition("@")[2]
    message = EmailMessage()
    message["From"] = _address(sender.from_email, sender.from_name)
    message["To"] = _address(recipient.email, recipient.name)
    if sender.reply_to:
        message["Reply-To"] = sender.reply_to
    message["Subject"] = copy.subject
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = message_id or make_msgid(domain=domain)
    for name, value in {**list_headers(settings, unsubscribe_url), **(extra_headers or {})}.items():
        message[name] = value
    message.set_content(copy.text)
    message.add_alternative(copy.html, subtype="html")
    return message
