"""Transports: how messages leave. ``outbox`` (files, the default), ``smtp`` and ``sendgrid``."""

from __future__ import annotations

from pipeline.errors import SettingsError
from pipeline.settings import Settings, secret
from pipeline.transports.base import Batch, Envelope, Outcome, Transport

__all__ = ["Batch", "Envelope", "Outcome", "Transport", "open_transport"]


def open_transport(settings: Settings, name: str | None = None) -> Transport:
    """The transport called ``name`` (default: ``delivery.transport``), with its secret from the environment."""
    chosen = name or settings.delivery.transport
    if chosen == "outbox":
        from pipeline.transports.outbox import OutboxTransport

        return OutboxTransport(settings.path(settings.delivery.outbox_dir))
    if chosen == "smtp":
        from pipeline.transports.smtp import SmtpTransport

        return SmtpTransport(settings, secret("SMTP_PASSWORD"))
    if chosen == "sendgrid":
        from pipeline.transports.sendgrid import SendGridTransport

        api_key = secret("SENDGRID_API_KEY")
        if not api_key:
            raise SettingsError("SENDGRID_API_KEY: not set (export it; it is never read from settings.toml)")
        return SendGridTransport(settings, api_key)
    raise SettingsError(f"delivery.transport: unknown transport '{chosen}' (outbox, smtp or sendgrid)")
