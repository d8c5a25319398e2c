"""SendGrid v3 Mail Send through the official ``sendgrid`` library, with the retry policy it lacks.

One request carries up to 1000 personalizations: the issue's HTML and text go once, with substitution
tags where the per-recipient values belong, and each personalization brings its own values, headers
and ``custom_args`` (campaign, subscriber and ledger row, for the event webhook). The library never
retries and sets no timeout; here every request has a timeout, 429 and 5xx are retried with exponential
backoff and full jitter (honouring ``X-RateLimit-Reset``/``Retry-After``), and a request whose fate is
unknown (timeout or connection lost after it was sent) is reported in doubt, never resent blindly.
A 400 that names particular personalizations fails just those and sends the rest again.
Per-recipient delivery times go out ahead as ``send_at`` (at most 72 hours ahead, SendGrid's limit).
"""

from __future__ import annotations

import datetime as dt
import html
import http.client
import logging
import random
import re
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from pipeline.errors import SettingsError
from pipeline.render import clicks
from pipeline.render.addresses import AddressError, ascii_address
from pipeline.render.clicks import CLICK_FIELD
from pipeline.render.message import display_name, list_unsubscribe, static_list_headers
from pipeline.render.renderer import PERSONAL_FIELDS, RenderedIssue
from pipeline.settings import SendGridSettings, Settings, secret
from pipeline.transports.base import Batch, Envelope, Outcome, TransportStats, all_outcomes

log = logging.getLogger(__name__)
# The library logs request headers, Authorization included, at DEBUG: keep it quiet whatever -v says.
logging.getLogger("python_http_client").setLevel(logging.WARNING)

MAX_PERSONALIZATIONS = 1000
MAX_BACKOFF = 60.0
SEND_AHEAD = dt.timedelta(hours=72) - dt.timedelta(minutes=10)
"""SendGrid refuses a ``send_at`` more than 72 h ahead; the margin covers clock skew and slow batches."""
_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)\b")
JSON_BODY = {"Content-Type": "application/json; charset=utf-8"}
"""The body goes pre-serialised (orjson: a tenth of the library's ``json.dumps`` time on a request of a
thousand personalizations); the library sends a string body as is when the Content-Type is not the bare
``application/json``. Mail Send takes the charset parameter (SendGrid's C# SDK sent it for years)."""


class _Payload(bytes):
    """Request bytes whose text form is a summary: formatting one into a log line shows no recipient."""

    def __str__(self) -> str:
        return f"<SendGrid request body, {len(self):,} bytes: not logged>"

    __repr__ = __str__


class _Body:
    """A serialised request in the place of the string the library expects.

    python_http_client calls ``request_body.encode("utf-8")`` and then formats the result into a DEBUG
    line, whether or not DEBUG is logged: every address and signed link of a thousand recipients turned
    into text per request. Handing it a ``_Payload`` keeps personal data out of any log and that time
    out of the send.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = _Payload(payload)

    def encode(self, encoding: str) -> bytes:
        return self.payload  # orjson writes UTF-8


URL_FIELDS = frozenset({"unsubscribe_url", "preferences_url", CLICK_FIELD})
PLAIN_FIELDS = frozenset(PERSONAL_FIELDS) - URL_FIELDS
_HTML_SPECIAL = "&<>\"'"
"""What ``html.escape`` changes."""


def text_tag(name: str) -> str:
    return f"%{name}%"


def html_tag(name: str) -> str:
    return f"%{name}_html%"


TEXT_KEYS = tuple(f'"{text_tag(name)}":"' for name in PERSONAL_FIELDS)
"""The text tags in ``PersonalFields`` order as the start of JSON members, each up to its value's text."""
UNTRACKED = PERSONAL_FIELDS.index(CLICK_FIELD)
"""How many of the fields (the first ones) a copy without tracked links carries: the click token is
last, and goes only where links are tracked."""
_CONTROL_BYTES = bytes(range(0x20))
"""What a JSON string must escape besides ``"`` and ``\\`` (orjson writes all else as UTF-8)."""


def _json_inner(value: str) -> str:
    """``value`` escaped for the inside of a JSON string, as orjson escapes it."""
    return orjson.dumps(value).decode()[1:-1]


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def _api_errors(exc: HTTPError) -> list[dict[str, Any]]:
    try:
        body = exc.to_dict
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _error_text(exc: HTTPError) -> str:
    messages = [
        f"{e.get('field')}: {e.get('message')}" if e.get("field") else str(e.get("message"))
        for e in _api_errors(exc)
    ]
    detail = "; ".join(messages) or (exc.body.decode("utf-8", "replace")[:300] if exc.body else "")
    return f"SendGrid {exc.status_code}: {detail}".rstrip(": ")


def _server_wait(exc: HTTPError, now: float) -> float | None:
    """Seconds the API asked us to wait, from Retry-After or X-RateLimit-Reset (epoch seconds)."""
    headers = exc.headers or {}
    for name, absolute in (("Retry-After", False), ("X-RateLimit-Reset", True)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        return max(0.0, number - now) if absolute else max(0.0, number)
    return None


def _never_sent(exc: BaseException) -> bool:
    """True when the request certainly never reached the server (safe to retry)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, HTTPError):
        return isinstance(exc.reason, ConnectionRefusedError | socket.gaierror)
    return isinstance(exc, ConnectionRefusedError)


def _unaddressable(email: str) -> str | None:
    """Why SendGrid cannot take this address (it has no SMTPUTF8: a local part must be ASCII), if so."""
    try:
        if ascii_address(email) is None:
            return "SendGrid does not accept an address whose local part is not ASCII"
    except AddressError as exc:
        return str(exc)
    return None


class SendGridTransport:
    name = "sendgrid"
    max_batch = MAX_PERSONALIZATIONS
    send_ahead: dt.timedelta | None = SEND_AHEAD

    @classmethod
    def from_settings(cls, settings: Settings) -> SendGridTransport:
        """Opened from ``settings``, with its secret from the environment."""
        api_key = secret("SENDGRID_API_KEY")
        if not api_key:
            raise SettingsError("SENDGRID_API_KEY: not set (export it; it is never read from settings.toml)")
        return cls(settings, api_key)

    def __init__(
        self,
        settings: Settings,
        api_key: str,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config: SendGridSettings = settings.sendgrid
        self.concurrency = self.config.concurrency
        self.stats = TransportStats()
        self._api_key = api_key
        self._local = threading.local()
        self._interrupted = threading.Event()
        self._sleep = sleep or self._interrupted.wait  # a backoff ends at once when interrupted
        self._clock = clock
        self._stats_lock = threading.Lock()
        # Our links are the base URL plus URL-safe tokens: when HTML escaping leaves the base alone, the
        # text tag serves the HTML part too, which keeps each personalization (and the request) smaller.
        base = settings.newsletter.base_url
        self._urls_html_safe = html.escape(base) == base
        prefix, _, suffix = list_unsubscribe(settings, "\0").partition("\0")
        self._list_unsubscribe = (prefix, suffix)
        self._templates: dict[tuple[int, tuple[int, ...], int | None], str] = {}
        """The List-Unsubscribe value before and after its URL (the mailto address, if set)."""

    def _client(self) -> SendGridAPIClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = SendGridAPIClient(api_key=self._api_key, host=self.config.host)
        return client

    def _content(self, batch: Batch, shared_tags: frozenset[str]) -> list[dict[str, str]]:
        """The issue once per request, with a substitution tag wherever a recipient's value goes."""
        rendered = batch.rendered
        return [
            {"type": "text/plain", "value": rendered.text.with_tags(text_tag)},
            {
                "type": "text/html",
                "value": rendered.html.with_tags(lambda n: text_tag(n) if n in shared_tags else html_tag(n)),
            },
        ]

    def _shared_tags(self, envelopes: list[Envelope]) -> frozenset[str]:
        """The fields whose text tag can serve the HTML part too: HTML escaping changes none of the values.

        Names and addresses with ``& < > " '`` are rare, so most requests carry four substitutions per
        recipient instead of six; one search over the whole batch decides.
        """
        urls = URL_FIELDS if self._urls_html_safe else frozenset()
        values = "".join(f"{e.fields.first_name}{e.fields.email}" for e in envelopes)
        return urls if any(char in values for char in _HTML_SPECIAL) else urls | PLAIN_FIELDS

    def _personalizations(
        self,
        envelopes: list[Envelope],
        shared_tags: frozenset[str],
        rendered: RenderedIssue,
        send_at: int | None,
    ) -> str:
        """Every personalization of a request as JSON text, written straight from the values into one
        %-template: a thousand small dicts built only to be serialised cost more than all the rest.

        Values go between quotes as they are when none in the batch holds what JSON escapes (``"``,
        ``\\``, control characters), which is nearly always; otherwise each is escaped as orjson does.
        """
        sent = len(PERSONAL_FIELDS) if clicks.tracked(rendered) else UNTRACKED
        escaped = [i for i, name in enumerate(PERSONAL_FIELDS[:sent]) if name not in shared_tags]
        template = self._template_for(sent, tuple(escaped), send_at)
        verbatim = self._verbatim(envelopes)
        parts = []
        for delivery_id, recipient, fields in envelopes:
            email = recipient.email if recipient.email.isascii() else ascii_address(recipient.email) or ""
            name = _display_name(recipient.name)
            values: Sequence[str] = fields[:sent]
            if escaped:
                values = [*values, *(html.escape(fields[i]) for i in escaped)]
            url = fields.unsubscribe_url
            if not verbatim:
                email, name, url = _json_inner(email), name and _json_inner(name), _json_inner(url)
                values = [_json_inner(value) for value in values]
            member = f',"name":"{name}"' if name else ""
            parts.append(template % (email, member, *values, recipient.subscriber_id, delivery_id, url))
        return ",".join(parts)

    def _template_for(self, sent: int, escaped: tuple[int, ...], send_at: int | None) -> str:
        """A personalization with ``%s`` for: address, name member, the first ``sent`` substitution
        values (the ``escaped`` fields again at the end, HTML-escaped), subscriber id, delivery id,
        unsubscribe URL."""
        key = (sent, escaped, send_at)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = self._new_template(sent, escaped, send_at)
        return template

    def _new_template(self, sent: int, escaped: tuple[int, ...], send_at: int | None) -> str:
        keys = TEXT_KEYS[:sent] + tuple(f'"{html_tag(PERSONAL_FIELDS[i])}":"' for i in escaped)
        substitutions = '",'.join(key.replace("%", "%%") + "%s" for key in keys)
        prefix, suffix = (_json_inner(part).replace("%", "%%") for part in self._list_unsubscribe)
        more = "" if send_at is None else f',"send_at":{int(send_at)}'
        return (
            f'{{"to":[{{"email":"%s"%s}}],"substitutions":{{{substitutions}"}},"custom_args":'
            f'{{"subscriber_id":"%s","delivery_id":"%s"}},"headers":{{"List-Unsubscribe":"{prefix}%s{suffix}"}}'
            f"{more}}}"
        )

    def _verbatim(self, envelopes: list[Envelope]) -> bool:
        """True when no value of the batch needs JSON escaping: no ``"``, ``\\`` or control character (a
        control character is one byte in UTF-8 and never inside another character's bytes)."""
        values = "".join([f"{r.email}{r.name}{''.join(f)}" for _, r, f in envelopes]).encode(
            errors="surrogatepass"
        )
        if b'"' in values or b"\\" in values:
            return False
        return len(values.translate(None, _CONTROL_BYTES)) == len(values)

    def _shared(self, batch: Batch, shared_tags: frozenset[str]) -> dict[str, Any]:
        """Everything of a request but its personalizations."""
        sender = self.settings.sender
        body: dict[str, Any] = {
            "from": {"email": sender.from_email, "name": sender.from_name},
            "subject": batch.message.subject,
            "content": self._content(batch, shared_tags),
            "headers": static_list_headers(self.settings, batch.campaign_id, batch.rendered.slug),
        }
        if sender.reply_to:
            body["reply_to"] = {"email": sender.reply_to}
        if self.config.categories:
            body["categories"] = list(self.config.categories)
        if batch.campaign_id is not None:
            body["custom_args"] = {"campaign_id": str(batch.campaign_id)}
        body["tracking_settings"] = self._tracking(batch.rendered)
        return body

    def _tracking(self, rendered: RenderedIssue) -> dict[str, Any]:
        """SendGrid's open pixel only when ``tracking.opens`` asks for it; and where our redirect counts
        the clicks, none of SendGrid's: its redirect around ours would count each click twice."""
        tracking: dict[str, Any] = {"open_tracking": {"enable": self.settings.tracking.opens}}
        if clicks.tracked(rendered):
            tracking["click_tracking"] = {"enable": False, "enable_text": False}
        return tracking

    def request_payload(self, batch: Batch, envelopes: list[Envelope]) -> bytes:
        """The request body for ``envelopes`` as the bytes that go over the wire: the shared part
        serialised by orjson, the personalizations spliced in as text."""
        shared_tags = self._shared_tags(envelopes)
        head = orjson.dumps(self._shared(batch, shared_tags))
        personalizations = self._personalizations(envelopes, shared_tags, batch.rendered, batch.send_at)
        return b"".join((head[:-1], b',"personalizations":[', personalizations.encode(), b"]}"))

    def send(self, batch: Batch) -> list[Outcome]:
        if len(batch.envelopes) > self.max_batch:
            raise ValueError(f"a SendGrid request takes at most {self.max_batch} recipients")
        outcomes: list[Outcome] = []
        pending = []
        for envelope in batch.envelopes:
            refusal = None if envelope.recipient.email.isascii() else _unaddressable(envelope.recipient.email)
            if refusal:
                outcomes.append(Outcome(envelope.delivery_id, "failed", None, refusal))
            else:
                pending.append(envelope)
        while pending:
            result = self._post(batch, pending)
            if isinstance(result, str):  # accepted: the X-Message-Id
                outcomes += [Outcome(e.delivery_id, "sent", result) for e in pending]
                break
            rejected, batch_outcomes = result
            if not rejected:
                outcomes += batch_outcomes
                break
            outcomes += [o for o in batch_outcomes if o.delivery_id in rejected]
            pending = [e for e in pending if e.delivery_id not in rejected]
        return outcomes

    def _post(self, batch: Batch, envelopes: list[Envelope]) -> str | tuple[set[int], list[Outcome]]:
        """Send one request with retries: its message id, or (ids rejected individually, outcomes)."""
        body = _Body(self.request_payload(batch, envelopes))
        failures = 0
        while True:
            try:
                self._count("requests")
                response = self._client().client.mail.send.post(
                    request_body=body, request_headers=JSON_BODY, timeout=self.config.timeout
                )
                return str(response.headers.get("X-Message-Id") or "")
            except HTTPError as exc:
                status = exc.status_code
                if status == 429 or status >= 500:
                    retry = _Retry(_error_text(exc), _server_wait(exc, self._clock()))
                else:
                    return self._rejected(exc, envelopes)
            # Timeouts, resets, refused connections, and answers that are not HTTP at all (a wrong host).
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                if not _never_sent(exc):
                    reason = (
                        f"SendGrid: connection lost after sending ({exc}); the request may have been accepted"
                    )
                    return set(), all_outcomes(_subset(batch, envelopes), "in_doubt", reason)
                retry = _Retry(f"SendGrid unreachable: {exc}", None)
            failures += 1
            if failures > self.config.max_retries:
                reason = f"{retry.reason} (gave up after {self.config.max_retries} retries)"
                return set(), all_outcomes(_subset(batch, envelopes), "unsent", reason)
            self._backoff(failures, retry)
            if self._interrupted.is_set():
                reason = f"{retry.reason}; the send was stopped before a retry"
                return set(), all_outcomes(_subset(batch, envelopes), "unsent", reason)

    def _rejected(self, exc: HTTPError, envelopes: list[Envelope]) -> tuple[set[int], list[Outcome]]:
        """A 4xx: fail only the personalizations the API blamed, if it blamed some; else the batch."""
        errors = _api_errors(exc)
        blamed: dict[int, list[str]] = {}
        for error in errors:
            match = _PERSONALIZATION_FIELD.match(str(error.get("field") or ""))
            if not match:
                blamed = {}
                break
            blamed.setdefault(int(match[1]), []).append(f"{error.get('field')}: {error.get('message')}")
        if blamed and all(index < len(envelopes) for index in blamed) and len(blamed) < len(envelopes):
            rejected = {envelopes[i].delivery_id for i in blamed}
            outcomes = [
                Outcome(
                    envelopes[i].delivery_id, "failed", None, f"SendGrid {exc.status_code}: " + "; ".join(m)
                )
                for i, m in blamed.items()
            ]
            return rejected, outcomes
        return set(), [Outcome(e.delivery_id, "failed", None, _error_text(exc)) for e in envelopes]

    def _backoff(self, failures: int, retry: _Retry) -> None:
        wait = (
            retry.wait if retry.wait is not None else random.uniform(0, min(MAX_BACKOFF, 0.5 * 2**failures))
        )
        wait = min(wait, MAX_BACKOFF)
        log.info("SendGrid: %s; retry %d in %.1f s", retry.reason, failures, wait)
        with self._stats_lock:
            self.stats.retries += 1
            self.stats.waited_seconds += wait
        self._sleep(wait)

    def _count(self, name: str) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def interrupt(self) -> None:
        """No more retries, and no backoff waited out: a request in flight ends within its timeout."""
        self._interrupted.set()

    def settle(self, campaign_id: int, slug: str, rows: list[tuple[int, str]]) -> list[Outcome]:
        """Only SendGrid's events can tell (the webhook settles rows when they arrive)."""
        return []

    def close(self) -> None:
        """The library opens a connection per request; nothing stays open."""


def _display_name(name: str | None) -> str | None:
    """The header's display name (no control characters), and SendGrid refuses ``to.name`` containing
    ``,`` or ``;`` (it splits on them): "Lovelace, Ada" → "Lovelace Ada".

    Nearly every name is already that (printable, so its only white space is single ASCII spaces
    between words): a few C-speed checks return it as it is, once per recipient of a send.
    """
    if not name:
        return None
    if (
        name.isprintable()
        and "," not in name
        and ";" not in name
        and "  " not in name
        and name[0] != " " != name[-1]
    ):
        return name
    return display_name(name.replace(",", " ").replace(";", " ")) or None


def _subset(batch: Batch, envelopes: list[Envelope]) -> Batch:
    return Batch(batch.campaign_id, batch.rendered, batch.message, envelopes, batch.send_at)
