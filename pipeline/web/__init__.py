"""The subscriber-facing web service (``newsletter serve``): see ``pipeline.web.app``."""

from __future__ import annotations

from pipeline.web.app import create_app, server

__all__ = ["create_app", "server"]
