"""Bounces and complaints as mail: delivery status notifications (RFC 3464) and feedback reports (RFC 5965).

``read_report`` turns one raw message into a ``Report``: what happened to which recipient, and every
place in it that can say which message of ours it is about (the addresses it was sent to, where a VERP
token lives; the returned message's Message-ID and List-Unsubscribe). It reads, in this order:

- ``multipart/report; report-type=delivery-status`` (Gmail, Outlook and Exchange, Postfix…): one
  finding per recipient block of the ``message/delivery-status`` part (``message/global-delivery-status``
  too, RFC 6533);
- ``multipart/report; report-type=feedback-report`` (ARF: Yahoo's CFL, Microsoft's JMRP…): a complaint
  when the Feedback-Type is ``abuse`` or ``fraud``;
- Microsoft's older JMRP form: the reported message attached whole, with ``X-HmXmrOriginalRecipient``;
- a plain-text notice from a mailer daemon (Yahoo's "Failure Notice", qmail): the SMTP reply in its text
  says whether it failed for good; which message it is about comes from the VERP address it was sent to.

Anything else (an out-of-office reply, a person's answer, a report without a recipient or status) is
``NotAReport``: the caller leaves it where it is, for a person to read. Nothing here guesses from
wording: only status codes decide, through ``classify``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import collapse_rfc2231_value, getaddresses, parseaddr, parsedate_to_datetime

HARD = "bounce"
"""The address is dead (the kind SendGrid's webhook uses too, so reports and the health guard count it)."""
SOFT = "soft_bounce"
"""The mailbox exists but took nothing (full, or its server kept asking to try later until we gave up)."""
BLOCKED = "blocked"
"""The message was refused for its sender, content or the receiver's policy, not for the address."""
DEFERRED = "deferred"
"""Still being tried (``Action: delayed``)."""
DELIVERED = "delivered"
COMPLAINT = "spamreport"
OTHER = "other"
"""A report that calls for nothing: another Feedback-Type, an Action RFC 3464 does not define."""

COMPLAINT_TYPES = frozenset({"abuse", "fraud"})
"""Feedback-Types that are a person reporting our mail as spam or as a fraud."""
ENVELOPE_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Rcpt-To")
"""Where the receiving side writes the address a report was delivered to (a VERP address, for us)."""
RETURNED_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
)
DAEMONS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailer_daemon"})
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_REPLY = re.compile(
    r"(?:^|said:|smtp;)[ \t\r\n]*([45])\d\d(?:[ :-]+([45]\.\d{1,3}\.\d{1,3}))?(?![\d.])", re.I | re.M
)
_DAEMON_RECIPIENT = re.compile(r"^<([^<>\s]+@[^<>\s]+)>:[ \t]*$", re.M)
_COPY_FOLLOWS = re.compile(
    r"^.*(?:copy of the message|original message|message header follows).*$", re.I | re.M
)
_QUOTED_HEADER = r"^{name}:[ \t]*(.+(?:\r?\n[ \t]+.+)*)"
_SPACES = re.compile(r"\s+")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")


class NotAReport(ValueError):
    """The message is no bounce or complaint this module can read; the text says why."""


@dataclass(frozen=True, slots=True)
class Finding:
    """What a report says happened to one recipient."""

    kind: str
    addresses: tuple[str, ...]
    """The recipient as the report names it: the address we sent to first (Original-Recipient), then
    where it ended (Final-Recipient); empty when the provider left it out or redacted it."""
    status: str | None
    """The enhanced status code (``5.1.1``), for bounces."""
    reason: str | None
    """The receiving server's reply, or the Feedback-Type and who reported it."""


@dataclass(frozen=True, slots=True)
class Report:
    form: str
    """``delivery-status``, ``feedback-report``, ``jmrp`` (Microsoft's older form) or ``notice`` (plain text)."""
    message_id: str | None
    """The report's own Message-ID: the same report delivered twice has the same."""
    date: dt.datetime | None
    envelope: tuple[str, ...]
    """Addresses the report was sent to or for: To and the delivery headers, the DSN's sender, ARF's
    Original-Mail-From, the returned message's Return-Path. A VERP token is in one of these."""
    returned_message_id: str | None
    returned_unsubscribe: str | None
    findings: tuple[Finding, ...]


def classify(action: str, status: str | None) -> str:
    """The kind of a recipient block: ``Action`` and ``Status`` of RFC 3464, judged by RFC 3463's codes.

    A permanent failure (5.x.x) is a hard bounce only when its code is about the address: X.1.x
    (bad mailbox, domain or address, but not X.1.7/X.1.8, which are about *our* sender address),
    X.2.1 (mailbox disabled), X.4.4 (no route to the domain) and X.0.0 (what relays write when the
    server's reply had no enhanced code, as "550 no such user" often has not). Mailbox full (X.2.0,
    X.2.2) and every failure of class 4 (the receiver kept saying "try later" until the relay gave
    up) are soft. Everything else of class 5 — policy and reputation (X.7.x), content, size,
    protocol, system — is ``blocked``: the address may be fine, so nobody is marked bounced for it
    (a block of a whole domain must not empty the list).
    """
    action = action.strip().lower()
    if action == "delayed":
        return DEFERRED
    if action in {"delivered", "relayed", "expanded"}:
        return DELIVERED
    if action != "failed":
        return OTHER
    code = _STATUS.match((status or "").strip())
    if code is None:
        raise NotAReport(f"a failed recipient without a status code ({status or 'none'})")
    klass, subject, detail = code.groups()
    if klass == "4":
        return SOFT
    if klass == "2":
        return OTHER
    if (subject == "1" and detail not in {"7", "8"}) or (subject, detail) in {
        ("2", "1"),
        ("4", "4"),
        ("0", "0"),
    }:
        return HARD
    if subject == "2" and detail in {"0", "2"}:
        return SOFT
    return BLOCKED


def read_report(raw: bytes) -> Report:
    """The report in ``raw``; ``NotAReport`` saying why when it is none.

    The email package reads nested parts recursively: a message nested a thousand parts deep (a
    few dozen kilobytes) would exhaust the stack, so it is refused, never a crash of the run.
    """
    try:
        return _read(BytesParser(policy=policy.compat32).parsebytes(raw))
    except RecursionError:
        raise NotAReport("parts nested too deeply to read") from None


def _read(message: Message) -> Report:
    report = _find_report(message)
    if report is not None:
        kind = collapse_rfc2231_value(report.get_param("report-type") or "").lower()
        if kind == "delivery-status":
            return _delivery_status(message, report)
        if kind == "feedback-report":
            return _feedback_report(message, report)
        raise NotAReport(f"a multipart/report of type '{kind}', neither delivery-status nor feedback-report")
    jmrp = next((part for part in _attached(message) if _header(part, "X-HmXmrOriginalRecipient")), None)
    if jmrp is not None:
        reported = _addresses(_headers(jmrp, "X-HmXmrOriginalRecipient"))
        finding = Finding(COMPLAINT, reported, None, "abuse (Microsoft JMRP)")
        return _report(message, "jmrp", jmrp, (finding,))
    return _daemon_notice(message)


def _find_report(message: Message) -> Message | None:
    return next((part for part in message.walk() if part.get_content_type() == "multipart/report"), None)


def _parts(message: Message) -> list[Message]:
    """The parts of a multipart (or message/*) part; none of a leaf."""
    payload = message.get_payload() if message.is_multipart() else []
    return [part for part in payload if isinstance(part, Message)]


def _attached(message: Message) -> list[Message]:
    """The messages attached to ``message`` (message/rfc822 parts), outermost first."""
    return [
        inner
        for part in message.walk()
        if part.get_content_type() in {"message/rfc822", "message/global"}
        for inner in _parts(part)[:1]
    ]


def _returned(report: Message) -> Message | None:
    """The returned message (whole, or its headers only) inside a multipart/report."""
    for part in _parts(report):
        if part.get_content_type() not in RETURNED_TYPES:
            continue
        if part.is_multipart():
            return next(iter(_parts(part)), None)
        return HeaderParser(policy=policy.compat32).parsestr(_text(part))
    return None


def _report_part(report: Message, *types: str) -> Message:
    part = next((p for p in _parts(report) if p.get_content_type() in types), None)
    if part is None:
        raise NotAReport(f"a multipart/report without its {types[0]} part")
    return part


def _fields_text(part: Message) -> str:
    """A report part's fields as text. The email package reads any message/* part as a message (its
    first block as headers, the rest as body), message/delivery-status as a list of blocks."""
    if not part.is_multipart():
        return _text(part)
    return "\n".join(inner.as_string() for inner in _parts(part))


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status part (message/global-delivery-status too, RFC 6533)."""
    if part.get_content_type() == "message/delivery-status" and part.is_multipart():
        return _parts(part)  # split by the email package already
    parser = HeaderParser(policy=policy.compat32)
    chunks = re.split(r"\r?\n[ \t]*\r?\n", _fields_text(part).strip())
    return [parser.parsestr(chunk.strip() + "\n") for chunk in chunks if chunk.strip()]


def _delivery_status(message: Message, report: Message) -> Report:
    blocks = _blocks(_report_part(report, "message/delivery-status", "message/global-delivery-status"))
    per_message, recipients = (blocks[0], blocks[1:]) if blocks else (Message(), [])
    findings = []
    for block in recipients:
        action, status = _header(block, "Action"), _header(block, "Status")
        if action is None:
            continue
        diagnostic = _typed(_header(block, "Diagnostic-Code"))
        addresses = _addresses(
            [_typed(_header(block, name)) or "" for name in ("Original-Recipient", "Final-Recipient")]
        )
        findings.append(Finding(classify(action, status), addresses, _status(status), diagnostic or status))
    if not findings:
        raise NotAReport("a delivery status notification that names no recipient")
    extra = [_typed(_header(per_message, "X-Postfix-Sender")) or ""]
    return _report(message, "delivery-status", _returned(report), tuple(findings), extra)


def _feedback_report(message: Message, report: Message) -> Report:
    part = _report_part(report, "message/feedback-report")
    fields = HeaderParser(policy=policy.compat32).parsestr(_fields_text(part).strip() + "\n")
    feedback_type = _SPACES.sub(" ", _header(fields, "Feedback-Type") or "").strip().lower()
    if not feedback_type:
        raise NotAReport("a feedback report without a Feedback-Type")
    agent = _SPACES.sub(" ", _header(fields, "User-Agent") or "").strip()
    kind = COMPLAINT if feedback_type in COMPLAINT_TYPES else OTHER
    reported = _addresses([*_headers(fields, "Original-Rcpt-To"), *_headers(fields, "Removal-Recipient")])
    reason = f"{feedback_type} ({agent})" if agent else feedback_type
    extra = _headers(fields, "Original-Mail-From")
    return _report(
        message, "feedback-report", _returned(report), (Finding(kind, reported, None, reason),), extra
    )


def _daemon_notice(message: Message) -> Report:
    """A mailer daemon's plain-text bounce: each ``<address>:`` line and the SMTP reply under it."""
    sender = parseaddr(_header(message, "From") or "")[1].lower()
    if sender.partition("@")[0] not in DAEMONS:
        raise NotAReport("not a delivery status notification or feedback report")
    text = next((_text(part) for part in message.walk() if part.get_content_type() == "text/plain"), "")
    copy = _COPY_FOLLOWS.search(text)
    notice, returned = (text[: copy.start()], text[copy.end() :]) if copy else (text, "")
    marks = list(_DAEMON_RECIPIENT.finditer(notice))
    ends = [mark.start() for mark in marks[1:]] + [len(notice)] if marks else []
    spans = [(mark[1], notice[mark.end() : end]) for mark, end in zip(marks, ends, strict=True)]
    findings = []
    for address, said in spans or [(None, notice)]:
        reply = _REPLY.search(said)
        if reply is None:
            continue
        status = reply[2] or f"{reply[1]}.0.0"
        line = _SPACES.sub(" ", said.strip())[:500]
        findings.append(Finding(classify("failed", status), (address,) if address else (), status, line))
    if not findings:
        raise NotAReport("a mailer daemon's message without an SMTP reply in it")
    headers = HeaderParser(policy=policy.compat32).parsestr(_quoted_headers(returned))
    return _report(message, "notice", headers if returned else None, tuple(findings))


def _quoted_headers(text: str) -> str:
    """The header lines of a message copied into a notice's text, for Message-ID and List-Unsubscribe."""
    found = []
    for name in ("Message-ID", "List-Unsubscribe", "Return-Path"):
        value = re.search(_QUOTED_HEADER.format(name=name), text, re.I | re.M)
        if value:
            found.append(f"{name}: {value[1].strip()}")
    return "\n".join(found) + "\n\n"


def _report(
    message: Message,
    form: str,
    returned: Message | None,
    findings: tuple[Finding, ...],
    extra_envelope: list[str] | None = None,
) -> Report:
    values = [value for name in ENVELOPE_HEADERS for value in _headers(message, name)]
    values += extra_envelope or []
    if returned is not None:
        values += _headers(returned, "Return-Path")
    return Report(
        form=form,
        message_id=_message_id(_header(message, "Message-ID")),
        date=_date(_header(message, "Date")),
        envelope=_addresses(values),
        returned_message_id=_message_id(_header(returned, "Message-ID")) if returned is not None else None,
        returned_unsubscribe=_one_line(_header(returned, "List-Unsubscribe"))
        if returned is not None
        else None,
        findings=findings,
    )


def _header(message: Message, name: str) -> str | None:
    """A header as text: the legacy policy hands headers with 8-bit bytes over as ``Header`` objects."""
    value = message.get(name)
    return None if value is None else str(value)


def _headers(message: Message, name: str) -> list[str]:
    return [str(value) for value in message.get_all(name) or []]


def _text(part: Message) -> str:
    """A non-multipart part's content as text, its transfer encoding undone."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except (LookupError, ValueError):  # a charset Python does not know, or no charset name at all
        text = payload.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")  # mail as stored by IMAP servers and most Maildirs: CRLF


def _typed(value: object) -> str | None:
    """``rfc822; ana@example.com`` → ``ana@example.com``: a DSN field without its type, on one line."""
    if value is None:
        return None
    text = _SPACES.sub(" ", str(value)).strip()
    return text.partition(";")[2].strip() if ";" in text else text


def _addresses(values: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    for _name, address in getaddresses([str(v) for v in values]):
        address = address.strip()
        if "@" in address and address not in found:
            found.append(address)
    return tuple(found)


def _status(value: object) -> str | None:
    code = _STATUS.search(str(value or ""))
    return code[0] if code else None


def _one_line(value: object) -> str | None:
    if value is None:
        return None
    return _SPACES.sub(" ", str(value)).strip() or None


def _message_id(value: str | None) -> str | None:
    """A Message-ID as RFC 5322 writes it (``<left@right>``, printable ASCII, no spaces), else None:
    nothing else can be one of ours, and nothing else is worth a look-up."""
    text = _one_line(value)
    return text if text and _MESSAGE_ID.fullmatch(text) else None


def _date(value: object) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
