"""Fixtures shared by the whole suite; topic fixtures live in tests/fixtures/ and are loaded here."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.project",
    "tests.fixtures.store",
    "tests.fixtures.smtp",
    "tests.fixtures.browser",
]
