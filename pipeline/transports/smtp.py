"""SMTP with ``smtplib``: a pool of reused connections, STARTTLS or implicit TLS, per-recipient results.

Each message goes as MAIL, RCPT, DATA on a pooled connection. A refused recipient fails only that
recipient. A connection that drops before DATA is reopened and the message tried again; one that drops
during DATA leaves that message in doubt (the server may have queued it) and the rest go on a fresh
connection. When the server cannot be reached at all, the remaining messages go back to the queue.

A journal (``handover``) notes each message's handover as it happens, so that after a SIGKILL the next
run knows which rows of the dead run's batches went and which never did: at most the one message per
connection whose DATA was out stays in doubt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import smtplib
import socket
import ssl
import threading
from pathlib import Path

from pipeline.errors import SettingsError
from pipeline.render.addresses import ascii_address
from pipeline.settings import Settings, secret
from pipeline.transports.base import Batch, Envelope, Outcome, TransportStats
from pipeline.transports.dkim import message_signer
from pipeline.transports.handover import ACCEPTED, CLAIMED, HANDING, REFUSED, Handover
from pipeline.transports.returnpath import ReturnPath

log = logging.getLogger(__name__)
RECONNECT_ATTEMPTS = 3
JOURNAL_FOLDER = Path("var/smtp")


class _Unreachable(Exception):
    """The server could not be reached after several attempts."""


class SmtpTransport:
    name = "smtp"
    max_batch = 1000
    send_ahead: dt.timedelta | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTransport:
        """Opened from ``settings``, with its secret from the environment."""
        return cls(settings, secret("SMTP_PASSWORD"))

    def __init__(self, settings: Settings, password: str | None) -> None:
        self.config = settings.smtp
        if self.config.username and not password:
            raise SettingsError("SMTP_PASSWORD: not set, but smtp.username is (set it in the environment)")
        self.sign = message_signer(settings)  # DKIM when [dkim] sets a key; its problems are found here
        self.envelope_from = settings.sender.from_email
        self.return_path = ReturnPath.from_settings(settings)
        self.concurrency = self.config.connections
        self.stats = TransportStats()
        self._password = password
        self._pool: queue.SimpleQueue[smtplib.SMTP] = queue.SimpleQueue()
        self._interrupted = threading.Event()
        self._in_use: set[smtplib.SMTP] = set()
        self._in_use_lock = threading.Lock()
        folder = settings.path(JOURNAL_FOLDER)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"SMTP: cannot create the handover journal folder {folder}: {exc}") from None
        self.journal = Handover(folder, self.name)

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        context = ssl.create_default_context()
        connection: smtplib.SMTP
        if config.security == "tls":
            connection = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
        else:
            connection = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
            if config.security == "starttls":
                connection.starttls(context=context)
                connection.ehlo()
        connection.ehlo_or_helo_if_needed()
        if config.username and self._password:
            connection.login(config.username, self._password)
        self._hold(connection)
        return connection

    def _checkout(self) -> smtplib.SMTP:
        try:
            connection = self._pool.get_nowait()
        except queue.Empty:
            return self._reconnect(None)
        self._hold(connection)
        return connection

    def _reconnect(self, old: smtplib.SMTP | None) -> smtplib.SMTP:
        if old is not None:
            self.stats.reconnects += 1
            self._drop(old)
        error: Exception | None = None
        for _attempt in range(RECONNECT_ATTEMPTS):
            try:
                return self._connect()
            except smtplib.SMTPAuthenticationError as exc:
                raise SettingsError(
                    f"SMTP login refused for {self.config.username}: {exc.smtp_code}"
                ) from None
            except (OSError, smtplib.SMTPException) as exc:
                error = exc
        raise _Unreachable(f"SMTP server {self.config.host}:{self.config.port} unreachable: {error}")

    def send(self, batch: Batch) -> list[Outcome]:
        outcomes: list[Outcome] = []
        self.stats.requests += 1
        connection: smtplib.SMTP | None = None
        self._note(batch, CLAIMED, *batch.envelopes)
        for index, envelope in enumerate(batch.envelopes):
            try:
                if self._interrupted.is_set():
                    raise _Unreachable("the send was stopped before this message was handed over")
                connection = connection or self._checkout()
                outcome, connection = self._send_one(connection, batch, envelope)
            except _Unreachable as exc:
                outcomes += [
                    Outcome(e.delivery_id, "unsent", None, str(exc)) for e in batch.envelopes[index:]
                ]
                return outcomes
            outcomes.append(outcome)
        if connection is not None:
            self._release(connection)
            self._pool.put(connection)
        return outcomes

    def _send_one(
        self, connection: smtplib.SMTP, batch: Batch, envelope: Envelope
    ) -> tuple[Outcome, smtplib.SMTP | None]:
        """One message, reconnecting while it is certainly not handed over; None: connection lost."""
        message_id = batch.message.message_id()
        try:
            data = self.sign(batch.message.build(envelope.recipient, envelope.fields, message_id=message_id))
            wire = ascii_address(envelope.recipient.email)
        except ValueError as exc:  # UnicodeError and AddressError included: this recipient only
            return Outcome(
                envelope.delivery_id, "failed", None, f"cannot address the message: {exc}"
            ), connection
        address = wire or envelope.recipient.email
        options = [] if wire is not None else ["SMTPUTF8"]
        for _attempt in range(RECONNECT_ATTEMPTS):
            try:
                try:
                    code, reply = connection.mail(self._envelope_sender(envelope), options)
                except smtplib.SMTPNotSupportedError:
                    reason = f"{self.config.host} does not offer SMTPUTF8, which a non-ASCII local part needs"
                    return Outcome(envelope.delivery_id, "failed", None, reason), connection
                if code != 250:
                    connection.rset()
                    return self._failed(envelope, "MAIL FROM", code, reply), connection
                code, reply = connection.rcpt(address)
                if code not in (250, 251):
                    connection.rset()
                    return self._failed(envelope, "RCPT TO", code, reply), connection
            except (smtplib.SMTPServerDisconnected, OSError):
                if self._interrupted.is_set():  # cut short before DATA: certainly not handed over
                    self._drop(connection)
                    raise _Unreachable("the send was stopped before this message was handed over") from None
                connection = self._reconnect(connection)
                continue
            self._note(batch, HANDING, envelope)
            try:
                code, reply = connection.data(data)
            except smtplib.SMTPDataError as exc:
                self._note(batch, REFUSED, envelope)
                return self._failed(envelope, "DATA", exc.smtp_code, exc.smtp_error), connection
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self.stats.reconnects += 1
                self._drop(connection)
                reason = f"SMTP connection lost during DATA ({exc}); the server may have accepted it"
                return Outcome(envelope.delivery_id, "in_doubt", message_id, reason), None
            if code != 250:
                self._note(batch, REFUSED, envelope)
                return self._failed(envelope, "DATA", code, reply), connection
            self._note(batch, ACCEPTED, envelope)
            return Outcome(envelope.delivery_id, "sent", message_id), connection
        raise _Unreachable(f"SMTP connection to {self.config.host} keeps dropping")

    def _envelope_sender(self, envelope: Envelope) -> str:
        """MAIL FROM: the VERP address of the message's ledger row when ``bounces.return_path`` is set;
        test copies and confirmations (no row) keep ``sender.from_email``, so their bounces reach a person."""
        if self.return_path is None or not envelope.delivery_id:
            return self.envelope_from
        return self.return_path.for_delivery(envelope.delivery_id, envelope.recipient.email)

    def _note(self, batch: Batch, kind: str, *envelopes: Envelope) -> None:
        if batch.campaign_id is not None:  # a test send has no ledger rows to settle
            self.journal.note(batch.campaign_id, kind, (e.delivery_id for e in envelopes))

    @staticmethod
    def _failed(envelope: Envelope, step: str, code: int, reply: bytes | str) -> Outcome:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        return Outcome(envelope.delivery_id, "failed", None, f"SMTP {step} refused: {code} {text}")

    def interrupt(self) -> None:
        """Shut the sockets of the connections in use, so a server that hangs cannot hold a stop up."""
        self._interrupted.set()
        with self._in_use_lock:
            busy = list(self._in_use)
        for connection in busy:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)

    def _hold(self, connection: smtplib.SMTP) -> None:
        with self._in_use_lock:
            self._in_use.add(connection)

    def _release(self, connection: smtplib.SMTP) -> None:
        with self._in_use_lock:
            self._in_use.discard(connection)

    def _drop(self, connection: smtplib.SMTP) -> None:
        self._release(connection)
        _discard(connection)

    def settle(self, campaign_id: int, slug: str, rows: list[tuple[int, str]]) -> list[Outcome]:
        """The journals say which rows of a dead run went; the one per connection whose DATA was out
        unanswered (or a row sent from another machine) stays in doubt."""
        return self.journal.settle(campaign_id, (delivery_id for delivery_id, _email in rows))

    def close(self) -> None:
        self.journal.close()
        while True:
            try:
                _discard(self._pool.get_nowait())
            except queue.Empty:
                return


def _discard(connection: smtplib.SMTP) -> None:
    try:
        connection.quit()
    except (smtplib.SMTPException, OSError):
        connection.close()
