"""The archive in real headless Chromium, served by uvicorn: axe-core finds no accessibility problem on
the index or an issue page, light or dark; an issue page reads at 375 and 800 px without sideways
scrolling, and its signup box signs a reader up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from pipeline.audience.subscribers import find_subscriber
from pipeline.render.renderer import DARK, LIGHT
from pipeline.settings import Settings
from pipeline.store.engine import Store, open_store
from pipeline.web import create_app, server
from tests.system import free_port
from tests.transport_helpers import new_campaign
from tests.web_support import serving

ISSUES = (
    "2026-12-01-name-it-to-tame-it",
    "2026-12-08-realistic-expectations",
    "2026-12-15-build-your-support-system",
)
MIDDLE = f"/archive/{ISSUES[1]}"
WAIT = 15.0
"""Seconds to wait for the signup's background work (never asserted as a duration)."""


@dataclass
class Archive:
    store: Store
    base_url: str


@pytest.fixture
def archive(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Archive]:
    """``newsletter serve``'s app under uvicorn on a free port, with three issues gone out."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "archive-" + "k" * 40)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    configured = settings.model_copy(
        update={"newsletter": settings.newsletter.model_copy(update={"base_url": base_url})}
    )
    with open_store(configured) as store:
        for slug in ISSUES:
            new_campaign(store, configured, issue=f"{slug}.yaml")
        with serving(server(create_app(configured, store), "127.0.0.1", port, access_log=False)):
            yield Archive(store, base_url)


def rgb(hex_colour: str) -> str:
    """``#f4efe9`` as getComputedStyle says it: ``rgb(244, 239, 233)``."""
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("path", ["/archive/", MIDDLE], ids=["index", "issue"])
def test_axe_finds_no_accessibility_problem(
    archive: Archive, chromium: Browser, axe_script: Path, path: str, scheme: str
) -> None:
    # The CSP allows no script, axe included: this context ignores it (the page itself has none).
    context = chromium.new_context(bypass_csp=True, color_scheme=scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.goto(f"{archive.base_url}{path}")
        page.add_script_tag(path=str(axe_script))
        results: dict[str, Any] = page.evaluate("async () => await axe.run()")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    finally:
        context.close()

    problems = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results["violations"]
    ]
    assert problems == [], "\n".join(problems)
    passed = {rule["id"] for rule in results["passes"]}
    assert {"landmark-one-main", "page-has-heading-one", "color-contrast", "document-title"} <= passed
    assert background == rgb((DARK if scheme == "dark" else LIGHT)["page"])  # that palette was judged


@pytest.mark.parametrize("width", [375, 800])
def test_an_issue_page_reads_at_the_width_of_a_phone_and_of_a_desktop_and_signs_people_up(
    archive: Archive, page: Page, width: int
) -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size({"width": width, "height": 800})

    page.goto(f"{archive.base_url}{MIDDLE}")

    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    expect(page.get_by_role("heading", level=1)).to_have_text("Store-bought cupcakes count. So do you.")
    font_size = page.evaluate(
        "parseFloat(getComputedStyle(document.querySelector('.strategy > p:not(.label)')).fontSize)"
    )
    assert font_size >= 16
    field = page.get_by_label("Email address")
    button = page.get_by_role("button", name="Subscribe")
    field_box, button_box = field.bounding_box(), button.bounding_box()
    assert field_box is not None and button_box is not None
    for box in (field_box, button_box):
        assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["height"] >= 40  # a touch target
    assert field_box["width"] >= min(width - 80, 250)  # room to see the address typed
    if width >= 800:
        assert abs(field_box["y"] - button_box["y"]) < 8  # side by side where there is room
    expect(page.get_by_role("navigation", name="Other issues").get_by_role("link")).to_have_count(3)

    address = f"reader{width}@example.com"
    field.fill(address)
    button.click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    deadline = time.monotonic() + WAIT
    while (person := find_subscriber(archive.store, address)) is None:
        assert time.monotonic() < deadline, "the signup never reached the store"
        time.sleep(0.05)
    assert person.status == "unconfirmed"
    assert errors == [], "\n".join(errors)
