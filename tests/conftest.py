"""Fixtures shared by the whole suite; topic fixtures live in tests/fixtures/ and are loaded here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.project",
    "tests.fixtures.store",
    "tests.fixtures.smtp",
    "tests.fixtures.imap",
    "tests.fixtures.browser",
    "tests.fixtures.axe",
    "tests.fixtures.web",
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the root logger for its run; later tests get it back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
