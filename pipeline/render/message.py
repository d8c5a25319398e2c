"""Rendered issue → RFC 5322 messages, encoded once per issue and completed per recipient in microseconds.

The MIME structure, static headers and quoted-printable bodies are built once (``MessageTemplate``);
each recipient adds To, Message-ID, Date, List-Unsubscribe and their few substituted values, each
encoded on its own soft-broken line so no line passes 76 characters. multipart/alternative carries the
text part first (clients show the last part they can display). One-click unsubscribe per RFC 8058.
"""

from __future__ import annotations

import binascii
import html
import re
import secrets
from datetime import UTC, datetime
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid

from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.addresses import ascii_address
from pipeline.render.renderer import RenderedIssue, SplitTemplate
from pipeline.settings import Settings
from pipeline.validation import invisible_kind

CRLF = b"\r\n"
_SOFT_BREAK = b"=\r\n"


def list_id(settings: Settings) -> str:
    """``Name <slug.host>``: lets mailbox filters and providers recognise the list (RFC 2919)."""
    host = re.sub(r"^https?://", "", settings.newsletter.base_url).split("/")[0].split(":")[0]
    slug = re.sub(r"[^a-z0-9]+", "-", settings.newsletter.name.lower()).strip("-") or "newsletter"
    return f"{settings.newsletter.name} <{slug}.{host}>"


def list_unsubscribe(settings: Settings, unsubscribe_url: str) -> str:
    mailto = settings.sender.unsubscribe_mailto
    return f"<{unsubscribe_url}>" + (f", <mailto:{mailto}?subject=unsubscribe>" if mailto else "")


def static_list_headers(settings: Settings) -> dict[str, str]:
    """The list headers that are the same for every recipient (List-Unsubscribe is per recipient)."""
    return {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": list_id(settings)}


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends, as a fragment to be followed by a soft line break.

    Lines stay within 76 characters counting that break's ``=``: a last line of 76 is split once more,
    never inside an ``=XX`` escape.
    """
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    head, newline, last = encoded.rpartition(b"\n")
    if len(last) > 75:
        cut = 75
        while b"=" in last[cut - 2 : cut]:
            cut -= 1
        last = last[:cut] + b"=\n" + last[cut:]
    return (head + newline + last).replace(b"\n", CRLF)


def _header(name: str, value: str) -> bytes:
    """One header line, RFC 2047-encoded and folded by the email package (used once per issue)."""
    return str(SMTP.header_factory(name, value).fold(policy=SMTP)).encode("ascii")


def _ascii_header(name: str, value: str) -> bytes:
    """A per-recipient header whose value is already ASCII (or, for an address with a Unicode local
    part, UTF-8 as RFC 6532 allows): folded after commas, cheaply."""
    line = f"{name}: {value}"
    if len(line) > 78:
        line = line.replace(", ", ",\r\n ")
    return line.encode("ascii" if line.isascii() else "utf-8") + CRLF


def display_name(name: str | None) -> str:
    """A stored name as it may stand in a header: one line, and no control characters (NUL, ESC,
    DEL…) even if some reached the store before imports refused them."""
    text = " ".join((name or "").split())
    if text.isprintable():  # nearly every name: C-speed
        return text
    return " ".join("".join(ch for ch in text if invisible_kind(ch) is None).split())


def to_header(name: str, email: str) -> str:
    """``Name <address>``: the name RFC 2047-encoded, the address in ASCII when it has an ASCII form
    (IDNA domain), else as UTF-8 (RFC 6532; such a message needs SMTPUTF8 to travel)."""
    wire = email if email.isascii() else ascii_address(email)
    if wire is not None:
        return formataddr((name, wire), charset="utf-8")
    if not name:
        return email
    # formataddr refuses a non-ASCII address; it encodes the name the same way whatever the address.
    placeholder = "x@x"
    return formataddr((name, placeholder), charset="utf-8").removesuffix(f"<{placeholder}>") + f"<{email}>"


class _EncodedBody:
    """A split template whose fixed chunks are quoted-printable once; values are encoded per copy."""

    def __init__(self, template: SplitTemplate, escape: bool) -> None:
        self.chunks = [_qp(chunk) for chunk in template.chunks]
        self.fields = template.fields
        self.escape = escape

    def encode(self, values: dict[str, str]) -> bytes:
        parts = [self.chunks[0]]
        encoded = {name: _qp(html.escape(value) if self.escape else value) for name, value in values.items()}
        for name, chunk in zip(self.fields, self.chunks[1:], strict=True):
            parts += (_SOFT_BREAK, encoded[name], _SOFT_BREAK, chunk)
        return b"".join(parts)


class MessageTemplate:
    """One issue's message for any recipient: encode once, then ``build`` per recipient."""

    def __init__(self, settings: Settings, rendered: RenderedIssue, *, subject_prefix: str = "") -> None:
        sender = settings.sender
        self.settings = settings
        self.domain = sender.from_email.rpartition("@")[2]
        self.subject = f"{subject_prefix}{rendered.subject}"
        self.html = _EncodedBody(rendered.html, escape=True)
        self.text = _EncodedBody(rendered.text, escape=False)
        boundary = self._boundary()
        static = {
            "From": formataddr((sender.from_name, sender.from_email), charset="utf-8"),
            **({"Reply-To": sender.reply_to} if sender.reply_to else {}),
            "Subject": self.subject,
            **static_list_headers(settings),
            "MIME-Version": "1.0",
            "Content-Type": f'multipart/alternative; boundary="{boundary}"',
        }
        self.static_headers = b"".join(_header(name, value) for name, value in static.items())
        part = b'Content-Type: %s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        self.text_opening = b"\r\n--" + boundary.encode() + CRLF + part % b"text/plain"
        self.html_opening = b"\r\n--" + boundary.encode() + CRLF + part % b"text/html"
        self.closing = b"\r\n--" + boundary.encode() + b"--\r\n"

    def _boundary(self) -> str:
        while True:
            boundary = f"=_nl_{secrets.token_hex(12)}"
            if all(boundary.encode() not in chunk for chunk in (*self.html.chunks, *self.text.chunks)):
                return boundary

    def message_id(self) -> str:
        return make_msgid(domain=self.domain)

    def build(
        self,
        recipient: Recipient,
        fields: PersonalFields,
        *,
        message_id: str,
        date: datetime | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> bytes:
        """The complete message for one recipient, CRLF line ends, ready for SMTP or a .eml file."""
        values = {
            "first_name": fields.first_name,
            "email": fields.email,
            "unsubscribe_url": fields.unsubscribe_url,
            "preferences_url": fields.preferences_url,
        }
        personal = {
            "To": to_header(display_name(recipient.name), recipient.email),
            "Date": format_datetime(date or datetime.now(UTC)),
            "Message-ID": message_id,
            "List-Unsubscribe": list_unsubscribe(self.settings, fields.unsubscribe_url),
        }
        extra = b"".join(_header(name, value) for name, value in (extra_headers or {}).items())
        return b"".join(
            (
                *(_ascii_header(name, value) for name, value in personal.items()),
                extra,
                self.static_headers,
                b"\r\nThis is a multi-part message in MIME format.\r\n",
                self.text_opening,
                self.text.encode(values),
                self.html_opening,
                self.html.encode(values),
                self.closing,
            )
        )
