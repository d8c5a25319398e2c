"""A local SendGrid v3 Mail Send emulator: a real HTTP server that is as strict as SendGrid.

Why: the pipeline's tests and benchmark must drive the official ``sendgrid`` client over real HTTP
(auth, validation, rate limits, outages, slow or dropped connections) without a network or an account.
Validation is one linear, regex-free pass, so a 1,000-personalization request is answered in milliseconds.

Standalone: ``python -m tests.emulators.sendgrid --port 8090 [--api-key KEY] [--record recipients]``.
Control endpoints (no auth) for subprocess tests: ``POST /_emulator/faults`` (list of fault dicts; a dict
with ``"every": n`` becomes ``inject_every``), ``POST /_emulator/reset``, ``GET /_emulator/messages``,
``GET /_emulator/recipients``, ``GET /_emulator/stats``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import socketserver
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from typing import Any, Literal

import orjson

from tests.emulators.sendgrid_rules import (
    CONTENT_TYPE_MESSAGE,
    api_error,
    errors_body,
    is_json_media_type,
    is_sandbox,
    validate_mail,
)

MAIL_SEND_PATH = "/v3/mail/send"
CONTROL_PREFIX = "/_emulator/"
AUTH_MESSAGE = "The provided authorization grant is invalid, expired, or revoked"
RecordMode = Literal["full", "recipients"]
MAX_BODY_BYTES = 30 * 1024 * 1024


@dataclass(frozen=True)
class Fault:
    """One injected failure or slowdown, consumed by exactly one request: SendGrid's bad days on demand."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from the JSON accepted by ``POST /_emulator/faults``."""
        status, headers = data.get("status"), data.get("headers") or {}
        return cls(
            status=None if status is None else int(status),
            headers={str(k): str(v) for k, v in headers.items()},
            delay=float(data.get("delay") or 0.0),
            drop=bool(data.get("drop", False)),
        )

    def response_headers(self) -> dict[str, str]:
        """A 429 carries SendGrid's rate-limit headers (reset = now + 1 s) unless the fault overrides them."""
        if self.status != 429:
            return dict(self.headers)
        reset = str(int(time.time()) + 1)
        return {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset,
        } | self.headers


@dataclass
class AcceptedMessage:
    """One accepted request. With ``record="recipients"`` each personalization is only
    ``{"to": [{"email": lower-cased address}], "custom_args": {...}}`` and content/headers/raw are empty."""

    message_id: str
    from_email: str | None
    subject: str | None
    personalizations: list[dict[str, Any]]
    content: list[dict[str, Any]]
    headers: dict[str, str]
    categories: list[str]
    custom_args: dict[str, str]
    send_at: int | None
    sandbox: bool
    received_at: float
    template_id: str | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict for ``GET /_emulator/messages`` (without ``raw``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "raw"}


def _full_personalization(p: dict[str, Any]) -> dict[str, Any]:
    """Shallow normalisation so every recorded personalization has the same keys (no deep copy)."""
    maps = {key: p.get(key) or {} for key in ("substitutions", "custom_args", "headers")}
    scalars = {key: p.get(key) for key in ("subject", "send_at", "dynamic_template_data")}
    return {"to": p["to"], "cc": p.get("cc") or [], "bcc": p.get("bcc") or [], **maps, **scalars}


def build_record(body: dict[str, Any], sandbox: bool) -> AcceptedMessage:
    """Full record: references into the freshly parsed body, nothing deep-copied."""
    return AcceptedMessage(
        message_id=secrets.token_urlsafe(16),
        from_email=body["from"]["email"],
        subject=body.get("subject"),
        personalizations=[_full_personalization(p) for p in body["personalizations"]],
        content=body.get("content") or [],
        headers=body.get("headers") or {},
        categories=body.get("categories") or [],
        custom_args=body.get("custom_args") or {},
        send_at=body.get("send_at"),
        sandbox=sandbox,
        received_at=time.time(),
        template_id=body.get("template_id"),
        raw=body,
    )


SlimRecord = tuple[Any, ...]


def _flat_items(mapping: dict[str, str] | None) -> tuple[str, ...]:
    return tuple(chain.from_iterable(mapping.items())) if mapping else ()


def _unflat(items: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(items[::2], items[1::2], strict=True))


def build_slim_record(body: dict[str, Any], sandbox: bool) -> SlimRecord:
    """Recipients mode: nested tuples of strings only (custom_args flattened to key, value, ...),
    which CPython's garbage collector stops tracking, so a million recorded recipients cause no long
    GC pauses (a tuple holding a dict stays tracked forever). Expanded into an AcceptedMessage on read."""
    pairs = tuple(
        (tuple(a["email"].lower() for a in p["to"]), _flat_items(p.get("custom_args")))
        for p in body["personalizations"]
    )
    scalars = (body["from"]["email"], body.get("subject"), tuple(body.get("categories") or ()))
    top_args = _flat_items(body.get("custom_args"))
    more = (top_args, body.get("send_at"), sandbox, time.time(), body.get("template_id"))
    return (secrets.token_urlsafe(16), *scalars, *more, pairs)


def expand_slim_record(slim: SlimRecord) -> AcceptedMessage:
    """An ``AcceptedMessage`` whose personalizations are ``{"to": [{"email": lower}], "custom_args"}``."""
    message_id, sender, subject, categories, custom_args, send_at, sandbox, received_at, template, pairs = (
        slim
    )
    personalizations = [
        {"to": [{"email": e} for e in to], "custom_args": _unflat(args)} for to, args in pairs
    ]
    return AcceptedMessage(
        message_id, sender, subject, personalizations, [], {}, list(categories), _unflat(custom_args),
        send_at, sandbox, received_at, template,
    )  # fmt: skip


class SendGridEmulator:
    """Thread-safe in-process SendGrid: start it, point ``SendGridAPIClient(host=emu.url)`` at it, assert."""

    def __init__(
        self, api_key: str = "SG.test", host: str = "127.0.0.1", port: int = 0, record: RecordMode = "full"
    ) -> None:
        if record not in ("full", "recipients"):
            raise ValueError(f"record must be 'full' or 'recipients', not {record!r}")
        self.api_key, self.host, self.port, self.record = api_key, host, port, record
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._periodic: list[tuple[int, Fault]] = []
        self._messages: list[AcceptedMessage | SlimRecord] = []
        self._sandbox: list[AcceptedMessage | SlimRecord] = []
        self._recipients: list[tuple[str, ...]] = []  # one untracked tuple per message: cheap for the GC
        self._requests_seen = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SendGridEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self.stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        kwargs = {"poll_interval": 0.05}
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=kwargs, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes requests sleeping on a delay fault so shutdown is prompt."""
        if self._server is None or self._thread is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> SendGridEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"http://{self.host}:{self.port}"

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is consumed by the next mail-send request, in order."""
        with self._lock:
            self._faults.extend(faults)

    def inject_every(self, n: int, fault: Fault) -> None:
        """Apply ``fault`` to every n-th request (by ``requests_seen``) when no queued fault is pending."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._periodic.append((n, fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._periodic.clear()

    @property
    def messages(self) -> list[AcceptedMessage]:
        """Every accepted (202) request, in arrival order."""
        with self._lock:
            records = list(self._messages)
        return [r if isinstance(r, AcceptedMessage) else expand_slim_record(r) for r in records]

    @property
    def sandbox_messages(self) -> list[AcceptedMessage]:
        """Requests answered 200 in sandbox mode: validated, never delivered."""
        with self._lock:
            records = list(self._sandbox)
        return [r if isinstance(r, AcceptedMessage) else expand_slim_record(r) for r in records]

    def recipients(self) -> list[str]:
        """Every lower-cased ``to`` address of every accepted request, in order, duplicates kept."""
        with self._lock:
            return list(chain.from_iterable(self._recipients))

    @property
    def requests_seen(self) -> int:
        """All mail-send POSTs, including rejected and faulted ones."""
        with self._lock:
            return self._requests_seen

    def stats(self) -> dict[str, int]:
        """Counters for ``GET /_emulator/stats``: a subprocess test cannot read attributes."""
        with self._lock:
            accepted, recipients = len(self._messages), sum(map(len, self._recipients))
            return {"requests_seen": self._requests_seen, "accepted": accepted, "recipients": recipients}

    def reset(self) -> None:
        """Forget recorded messages, faults and the request counter (for module-scoped fixtures)."""
        with self._lock:
            for store in (self._faults, self._periodic, self._messages, self._sandbox, self._recipients):
                store.clear()
            self._requests_seen = 0

    def begin_request(self) -> Fault | None:
        """Count a POST and hand out the fault it must suffer, if any."""
        with self._lock:
            self._requests_seen += 1
            if self._faults:
                return self._faults.popleft()
            return next((f for n, f in self._periodic if self._requests_seen % n == 0), None)

    def accept(self, body: dict[str, Any], sandbox: bool) -> str:
        """Record a validated request; return its message id."""
        record: AcceptedMessage | SlimRecord
        if self.record == "full":
            record = build_record(body, sandbox)
            message_id = record.message_id
            to = tuple(a["email"].lower() for p in body["personalizations"] for a in p["to"])
        else:
            record = build_slim_record(body, sandbox)
            message_id = record[0]
            to = tuple(email for addresses, _ in record[-1] for email in addresses)
        with self._lock:
            if sandbox:
                self._sandbox.append(record)
            else:
                self._messages.append(record)
                self._recipients.append(to)
        return message_id


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], emulator: SendGridEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse-DNS lookup (``getfqdn``), which can stall for seconds."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (timeouts, drops) are normal here: stay quiet about them."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for clients that want it; urllib sends Connection: close
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid delayed-ACK stalls
    timeout = 60
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: the benchmark sends a thousand large requests."""

    def do_GET(self) -> None:
        emu, path = self.server.emulator, self.path.split("?", 1)[0]
        if path == CONTROL_PREFIX + "messages":
            self._send_json(200, [m.to_json() for m in emu.messages])
        elif path == CONTROL_PREFIX + "recipients":
            self._send_json(200, emu.recipients())
        elif path == CONTROL_PREFIX + "stats":
            self._send_json(200, emu.stats())
        else:
            status = 405 if path == MAIL_SEND_PATH else 404
            self._respond(status, errors_body(api_error(None, HTTPStatus(status).phrase.lower())))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(CONTROL_PREFIX):
            self._control(path)
            return
        emu = self.server.emulator
        fault = emu.begin_request()
        length = int(self.headers.get("Content-Length") or 0)
        too_large = length > MAX_BODY_BYTES
        raw = self._drain(length) if too_large else self.rfile.read(length)
        if fault is not None and self._apply_fault(fault):
            return
        if path != MAIL_SEND_PATH:
            self._respond(404, errors_body(api_error(None, "not found")))
        elif too_large:
            self._respond(413, errors_body(api_error(None, "Request body is too large (max 30MB)")))
        elif self.headers.get("Authorization") != f"Bearer {emu.api_key}":
            self._respond(401, errors_body(api_error(None, AUTH_MESSAGE)))
        elif not is_json_media_type(self.headers.get("Content-Type")):
            self._respond(415, errors_body(api_error(None, CONTENT_TYPE_MESSAGE)))
        else:
            self._mail_send(raw)

    def _mail_send(self, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)  # strict RFC 8259, as a real API is (no NaN), and quick on 1 MB bodies
        except ValueError:
            self._respond(400, errors_body(api_error(None, "Bad Request: the body is not valid JSON")))
            return
        errors = validate_mail(body)
        if errors:
            self._respond(400, errors_body(*errors))
            return
        sandbox = is_sandbox(body)
        message_id = self.server.emulator.accept(body, sandbox)
        if sandbox:
            self._respond(200)
        else:
            self._respond(202, headers={"X-Message-Id": message_id})

    def _apply_fault(self, fault: Fault) -> bool:
        """Sleep, drop or answer as the fault says; True when the request is fully handled."""
        if fault.delay > 0 and self.server.emulator.stopping.wait(fault.delay):
            fault = Fault(drop=True)  # shutting down: do not hold the server up
        if fault.drop:
            self.close_connection = True  # the server closes the socket without writing a byte
            return True
        if fault.status is None:
            return False
        try:
            message = HTTPStatus(fault.status).phrase.lower()
        except ValueError:
            message = "error"
        self._respond(fault.status, errors_body(api_error(None, message)), fault.response_headers())
        return True

    def _control(self, path: str) -> None:
        emu = self.server.emulator
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == CONTROL_PREFIX + "reset":
            emu.reset()
            self._send_json(200, {"reset": True})
        elif path == CONTROL_PREFIX + "faults":
            try:
                data = json.loads(raw or b"[]")
                specs = data if isinstance(data, list) else [data]
                for spec in specs:
                    every, fault = int(spec.get("every") or 0), Fault.from_dict(spec)
                    if every:
                        emu.inject_every(every, fault)
                    else:
                        emu.inject(fault)
            except (ValueError, TypeError, AttributeError) as exc:
                self._respond(400, errors_body(api_error(None, f"bad fault list: {exc}")))
                return
            self._send_json(200, {"queued": len(specs)})
        else:
            self._respond(404, errors_body(api_error(None, "not found")))

    def _drain(self, length: int) -> bytes:
        """Read and discard an oversized body so the client gets its 413 rather than a reset."""
        while length > 0 and (chunk := self.rfile.read(min(length, 1 << 20))):
            length -= len(chunk)
        return b""

    def _send_json(self, status: int, payload: Any) -> None:
        self._respond(status, json.dumps(payload).encode())

    def _respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM, printing the URL first so a parent process can find the port."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.emulators.sendgrid", description="SendGrid emulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--api-key", default="SG.test")
    parser.add_argument("--record", choices=("full", "recipients"), default="full")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with SendGridEmulator(api_key=args.api_key, host=args.host, port=args.port, record=args.record) as emu:
        print(emu.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
