"""What the signup tests share: waiting for the jobs a signup leaves to the app's worker."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.web.context import web_of

WAIT = 15.0
"""Seconds a test waits for the worker (never asserted as a duration)."""


def settle(client: TestClient) -> None:
    """Wait until the worker of the client's app has run every job queued so far: the signups' store
    writes and confirmation mail, which happen after each answer."""
    app = client.app
    assert isinstance(app, Starlette)
    assert web_of(app).jobs.join(WAIT), "the signup jobs did not finish"
