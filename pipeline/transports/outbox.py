"""The default transport: every message as an .eml file, so the whole pipeline runs without an account.

Files are written atomically (temporary file, fsync, rename), named after the ledger row, so a crash
never leaves a half-written message and a resent row overwrites its own file instead of adding one.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path

from pipeline.settings import Settings
from pipeline.transports.base import Batch, Outcome, TransportStats, all_outcomes


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text)[:80]


class OutboxTransport:
    name = "outbox"
    max_batch = 1000
    send_ahead: dt.timedelta | None = None
    concurrency = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxTransport:
        """Opened from ``settings``."""
        return cls(settings.path(settings.delivery.outbox_dir))

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self.stats = TransportStats()

    def folder(self, campaign_id: int | None, slug: str) -> Path:
        return self.directory / (f"{campaign_id}-{slug}" if campaign_id is not None else f"test-{slug}")

    def send(self, batch: Batch) -> list[Outcome]:
        folder = self.folder(batch.campaign_id, batch.rendered.slug)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return all_outcomes(batch, "failed", f"outbox: cannot create {folder}: {exc.strerror}")
        outcomes = []
        for envelope in batch.envelopes:
            message_id = batch.message.message_id()
            name = self._name(envelope.delivery_id, envelope.recipient.email)
            try:
                data = batch.message.build(envelope.recipient, envelope.fields, message_id=message_id)
            except ValueError as exc:  # UnicodeError and AddressError included: this recipient only
                outcomes.append(
                    Outcome(envelope.delivery_id, "failed", None, f"cannot address the message: {exc}")
                )
                continue
            try:
                self._write(folder / name, data)
            except OSError as exc:
                outcomes.append(Outcome(envelope.delivery_id, "failed", None, f"outbox: {exc.strerror}"))
                continue
            outcomes.append(Outcome(envelope.delivery_id, "sent", message_id))
        self.stats.requests += 1
        return outcomes

    def _write(self, path: Path, data: bytes) -> None:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Nothing to release."""

    def interrupt(self) -> None:
        """Nothing to cut short: a file is written in a moment."""

    def settle(self, campaign_id: int, slug: str, rows: list[tuple[int, str]]) -> list[Outcome]:
        """Files are written whole or not at all (rename), so the file's presence is the truth."""
        folder = self.folder(campaign_id, slug)
        return [
            Outcome(delivery_id, "sent")
            if (folder / self._name(delivery_id, email)).exists()
            else Outcome(delivery_id, "unsent", None, "not in the outbox: it was never written")
            for delivery_id, email in rows
        ]

    @staticmethod
    def _name(delivery_id: int, email: str) -> str:
        return f"{delivery_id:09d}-{_safe(email)}.eml"
