"""Transports: how messages leave. ``outbox`` (files, the default), ``smtp`` and ``sendgrid``.

Which transports exist is ``pipeline.settings.TRANSPORTS``: the settings' choices, ``--transport``
and ``open_transport`` all read that one table. Each class opens itself from the settings
(``from_settings``), taking its secret from the environment.
"""

from __future__ import annotations

import importlib
from typing import cast

from pipeline.errors import SettingsError
from pipeline.settings import TRANSPORTS, Settings
from pipeline.transports.base import Batch, Envelope, OpensFromSettings, Outcome, Transport

__all__ = ["Batch", "Envelope", "Outcome", "Transport", "open_transport"]


def open_transport(settings: Settings, name: str | None = None) -> Transport:
    """The transport called ``name`` (default: ``delivery.transport``), with its secret from the environment."""
    chosen = name or settings.delivery.transport
    if chosen not in TRANSPORTS:
        known = ", ".join(TRANSPORTS)
        raise SettingsError(f"delivery.transport: unknown transport '{chosen}' ({known})")
    module, _, class_name = TRANSPORTS[chosen].partition(":")
    transport_class = cast(OpensFromSettings, getattr(importlib.import_module(module), class_name))
    return transport_class.from_settings(settings)
