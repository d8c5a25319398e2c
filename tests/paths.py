"""Where the repository is, for tests that read the project's own files (samples, settings, deploy/)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
