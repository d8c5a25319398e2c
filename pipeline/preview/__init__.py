"""The editor's live preview (``newsletter preview``): see ``pipeline.preview.app``."""

from __future__ import annotations

from pipeline.preview.app import allowed_hosts, create_app, server
from pipeline.preview.workspace import Workspace

__all__ = ["Workspace", "allowed_hosts", "create_app", "server"]
