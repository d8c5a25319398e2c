"""Rendered issue → RFC 5322 messages, encoded once per issue and completed per recipient in microseconds.

The MIME structure, static headers and quoted-printable bodies are built once (``MessageTemplate``);
each recipient adds To, Message-ID, Date, List-Unsubscribe and their few substituted values, each
encoded on its own soft-broken line so no line passes 76 characters. multipart/alternative carries the
text part first (clients show the last part they can display). One-click unsubscribe per RFC 8058;
a campaign's messages also carry ``List-Archive`` (RFC 2369) and Gmail's ``Feedback-ID``
(``for_campaign``).
"""

from __future__ import annotations

import binascii
import copy
import html
import re
import secrets
from datetime import UTC, datetime
from email.header import Header
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid

from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.addresses import ascii_address
from pipeline.render.renderer import RenderedIssue, SplitTemplate
from pipeline.settings import Settings
from pipeline.validation import invisible_kind

CRLF = b"\r\n"
_SOFT_BREAK = b"=\r\n"


def newsletter_slug(settings: Settings) -> str:
    """The newsletter's name as an identifier (``the-juggle``), in List-Id and Feedback-ID."""
    return re.sub(r"[^a-z0-9]+", "-", settings.newsletter.name.lower()).strip("-") or "newsletter"


def list_id(settings: Settings) -> str:
    """``Name <slug.host>``: lets mailbox filters and providers recognise the list (RFC 2919)."""
    host = re.sub(r"^https?://", "", settings.newsletter.base_url).split("/")[0].split(":")[0]
    return f"{settings.newsletter.name} <{newsletter_slug(settings)}.{host}>"


def list_unsubscribe(settings: Settings, unsubscribe_url: str) -> str:
    mailto = settings.sender.unsubscribe_mailto
    return f"<{unsubscribe_url}>" + (f", <mailto:{mailto}?subject=unsubscribe>" if mailto else "")


def static_list_headers(settings: Settings, campaign_id: int | None = None, slug: str = "") -> dict[str, str]:
    """The list headers that are the same for every recipient (List-Unsubscribe is per recipient);
    a campaign's messages add ``campaign_headers``."""
    headers = {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": list_id(settings)}
    if campaign_id is not None:
        headers.update(campaign_headers(settings, campaign_id, slug))
    return headers


def campaign_headers(settings: Settings, campaign_id: int, slug: str) -> dict[str, str]:
    """What only a campaign's messages carry: where the list's issues are archived (``List-Archive``,
    RFC 2369: every issue a campaign sends is published there) and Gmail's Feedback-ID. A test copy
    or a confirmation has neither: neither is a posting to the list, nor in its archive."""
    return {
        "List-Archive": f"<{settings.newsletter.base_url}/archive/>",
        "Feedback-ID": feedback_id(settings, campaign_id, slug),
    }


def _feedback_field(value: str) -> str:
    """One field of a Feedback-ID: no colon (the separator), nothing but letters, digits, ``.-_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-")


def feedback_sender_id(settings: Settings) -> str:
    """Gmail's SenderId, 5 to 15 characters and the same on every message: the letters and digits of
    the From domain (its ASCII form), e.g. ``newsexampleorg``."""
    domain = settings.sender.from_email.rpartition("@")[2]
    ascii_domain = (ascii_address(f"x@{domain}") or "").rpartition("@")[2]
    return re.sub(r"[^a-z0-9]", "", ascii_domain.lower())[:15].ljust(5, "0")


def feedback_id(settings: Settings, campaign_id: int, slug: str) -> str:
    """``campaign:issue:newsletter:sender``, Gmail's ``Feedback-ID: a:b:c:SenderId``: its feedback loop
    (Postmaster Tools) reports complaint rates per field, so a spike names the campaign, issue and list.
    Never a per-recipient value: Gmail aggregates on these and drops identifiers unique to a message."""
    fields = (
        str(campaign_id),
        _feedback_field(slug),
        newsletter_slug(settings),
        feedback_sender_id(settings),
    )
    return ":".join(fields)


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
    """A per-recipient header whose value needs no encoding (Date, Message-ID, List-Unsubscribe):
    folded after commas, cheaply."""
    line = f"{name}: {value}"
    if len(line) > 78:
        line = line.replace(", ", ",\r\n ")
    return line.encode("ascii" if line.isascii() else "utf-8") + CRLF


def _address_header(name: str, value: str) -> bytes:
    """A per-recipient address header, folded at its spaces (between encoded words, inside a quoted
    name, before the address: RFC 5322 2.2.3) so that no line passes 78 octets a fold can shorten."""
    data = f"{name}: {value}".encode("ascii" if value.isascii() else "utf-8")
    if len(data) <= 78:
        return data + CRLF
    words = data.split(b" ")
    lines = [words[0] + b" " + words[1]]
    for word in words[2:]:
        if len(lines[-1]) + 1 + len(word) > 78:
            lines.append(b"")
        lines[-1] += b" " + word
    return CRLF.join(lines) + CRLF


def display_name(name: str | None) -> str:
    """A stored name as it may stand in a header: one line, and no control characters (NUL, ESC,
    DEL…) even if some reached the store before imports refused them."""
    text = " ".join((name or "").split())
    if text.isprintable():  # nearly every name: C-speed
        return text
    return " ".join("".join(ch for ch in text if invisible_kind(ch) is None).split())


def to_header(name: str, email: str) -> str:
    """``Name <address>``: the name RFC 2047-encoded (a long one as several encoded words, so the
    line can fold between them), the address in ASCII when it has an ASCII form (IDNA domain), else
    as UTF-8 (RFC 6532; such a message needs SMTPUTF8 to travel)."""
    wire = email if email.isascii() else ascii_address(email)
    address = email if wire is None else wire
    if not name:
        return address
    if not name.isascii():
        # Header cuts a long name at character boundaries; the spaces between the words vanish when read.
        encoded = Header(name, "utf-8", maxlinelen=74).encode(linesep="\n")  # "To: " + 74 = 78
        return encoded.replace("\n ", " ") + f" <{address}>"
    # formataddr quotes a name where RFC 5322 needs it; it refuses a non-ASCII address, hence the stand-in.
    return formataddr((name, "x@x")).removesuffix("<x@x>") + f"<{address}>"


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
        self.slug = rendered.slug
        self._campaigns: dict[int, MessageTemplate] = {}
        part = b'Content-Type: %s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        self.text_opening = b"\r\n--" + boundary.encode() + CRLF + part % b"text/plain"
        self.html_opening = b"\r\n--" + boundary.encode() + CRLF + part % b"text/html"
        self.closing = b"\r\n--" + boundary.encode() + b"--\r\n"

    def _boundary(self) -> str:
        while True:
            boundary = f"=_nl_{secrets.token_hex(12)}"
            if all(boundary.encode() not in chunk for chunk in (*self.html.chunks, *self.text.chunks)):
                return boundary

    def for_campaign(self, campaign_id: int) -> MessageTemplate:
        """This message as campaign ``campaign_id`` sends it: with its ``campaign_headers``
        (List-Archive, Feedback-ID). Made once per campaign and sharing the encoded bodies; a test copy
        or a confirmation has no campaign, so neither (they are not postings to the list, nor the bulk
        stream Gmail's feedback loop reports on)."""
        found = self._campaigns.get(campaign_id)
        if found is None:
            found = copy.copy(self)
            found._campaigns = {}
            headers = campaign_headers(self.settings, campaign_id, self.slug)
            found.static_headers = self.static_headers + b"".join(_header(n, v) for n, v in headers.items())
            self._campaigns[campaign_id] = found
        return found

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
        values = fields._asdict()
        personal = {
            "Date": format_datetime(date or datetime.now(UTC)),
            "Message-ID": message_id,
            "List-Unsubscribe": list_unsubscribe(self.settings, fields.unsubscribe_url),
        }
        extra = b"".join(_header(name, value) for name, value in (extra_headers or {}).items())
        return b"".join(
            (
                _address_header("To", to_header(display_name(recipient.name), recipient.email)),
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
