"""The HTML report in real Chromium: its charts are there and show the numbers of the store; and the
operator's pages on a real server, behind the password from the environment."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request
from starlette.applications import Starlette

from pipeline.feedback.reportpage import ReportPage
from pipeline.feedback.reports import FIRST_HOURS, campaign_stats
from pipeline.feedback.trends import trends
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.web import create_app, server
from pipeline.web.admin import FAILURE_WINDOW, FAILURES, PASSWORD_ENV
from tests.fixtures.web import OpenClient
from tests.report_support import (
    CLICKERS,
    DELIVERED,
    HOURLY,
    SECOND_CLICKERS,
    SECOND_SENT,
    Known,
    known_campaigns,
)
from tests.system import free_port
from tests.web_support import Clock, serving

PASSWORD = "correct horse battery staple"
WAIT = 15.0
CHART_VALUES = """svg => [...svg.querySelectorAll('[data-value]')].map(mark => ({
    series: mark.dataset.series, label: mark.dataset.label, value: Number(mark.dataset.value),
    height: mark.getBoundingClientRect().height, current: mark.classList.contains('current'),
    title: mark.querySelector('title').textContent}))"""


def report_file(store: Store, settings: Settings, tmp_path: Path, campaign_id: int) -> str:
    """The report of ``campaign_id`` as `newsletter report ID --html` writes it, as a file:// URL."""
    html = ReportPage(settings).campaign(campaign_stats(store, campaign_id), trends(store))
    path = tmp_path / f"report-{campaign_id}.html"
    path.write_text(html, encoding="utf-8")
    return path.as_uri()


class Watched:
    """What a page asked the network for and what it complained about in its console."""

    def __init__(self, page: Page) -> None:
        self.requests: list[str] = []
        self.problems: list[str] = []
        page.on("request", self._request)
        page.on("console", self._console)

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            self.problems.append(message.text)


def chart(page: Page, key: str) -> list[dict[str, Any]]:
    """The bars or points of one chart, as the browser laid them out."""
    svg = page.locator(f'figure[data-chart="{key}"] svg[role="img"]')
    assert svg.is_visible()
    values: list[dict[str, Any]] = svg.evaluate(CHART_VALUES)
    return values


def ticks(page: Page, key: str) -> list[str]:
    """The labels of a chart's value axis, bottom up."""
    found: list[str] = page.locator(f'figure[data-chart="{key}"] text.tick.y').evaluate_all(
        "all => all.map(tick => tick.textContent)"
    )
    return found


def by_series(marks: list[dict[str, Any]], series: str) -> list[float]:
    return [mark["value"] for mark in marks if mark["series"] == series]


@pytest.fixture
def known(store: Store, settings: Settings, tmp_path: Path) -> Known:
    return known_campaigns(store, settings, tmp_path)


def test_the_report_s_charts_show_the_store_s_numbers_in_chromium(
    store: Store, settings: Settings, tmp_path: Path, known: Known, page: Page
) -> None:
    url = report_file(store, settings, tmp_path, known.first)
    watched = Watched(page)

    page.goto(url)

    assert watched.requests == [url], "the report loads nothing: no CDN, no font, no image"
    assert watched.problems == [], "nothing refused by the page's own CSP"
    charts = page.locator('svg[role="img"]')
    assert charts.count() == 4
    assert all(
        label for label in charts.evaluate_all("all => all.map(svg => svg.getAttribute('aria-label'))")
    )
    hours = chart(page, "clicks-by-hour")
    assert [mark["label"] for mark in hours] == [f"{hour} h" for hour in range(FIRST_HOURS)]
    assert {hour: mark["value"] for hour, mark in enumerate(hours) if mark["value"]} == HOURLY
    assert hours[1]["height"] == pytest.approx(2 * hours[0]["height"], abs=0.5), (
        "2 first clicks: twice as tall"
    )
    assert hours[26]["height"] == pytest.approx(hours[0]["height"], abs=0.5)
    assert all(mark["height"] < 0.5 for hour, mark in enumerate(hours) if hour not in HOURLY)
    assert hours[1]["title"] == "1 h: 2 first clicks"
    assert ticks(page, "clicks-by-hour") == ["0", "1", "2"]
    assert ticks(page, "click-rate-by-issue") == ["0%", "20%", "40%", "60%"]
    issues = chart(page, "click-rate-by-issue")
    assert [mark["value"] for mark in issues] == [
        round(CLICKERS / DELIVERED, 6),
        round(SECOND_CLICKERS / SECOND_SENT, 6),
    ]
    assert [mark["current"] for mark in issues] == [True, False], "this campaign's bar is marked"
    assert issues[0]["height"] == pytest.approx(issues[1]["height"] * (5 / 9) / (1 / 8), rel=0.01)
    assert issues[0]["title"].endswith(": 55.6% click rate")
    weeks = chart(page, "audience-by-week")
    assert sum(by_series(weeks, "joins")) == 10
    assert (sum(by_series(weeks, "bounces")), sum(by_series(weeks, "complaints"))) == (1, 1)
    assert sum(by_series(weeks, "unsubscribes")) == 0
    assert chart(page, "active-by-week")[-1]["value"] == 8
    assert page.locator('[data-metric="click-rate"] .value').inner_text() == "55.6%"
    assert page.locator('[data-metric="unique-clicks"] .value').inner_text() == "5"
    assert page.locator('tr[data-segment="toddlers"] [data-rate]').inner_text() == "60.0%"
    assert page.locator('tr[data-segment="working-moms"] [data-rate]').inner_text() == "50.0%"
    assert "delivered" in page.locator("#base").inner_text()


def test_a_campaign_without_delivery_events_says_its_rates_are_of_messages_sent(
    store: Store, settings: Settings, tmp_path: Path, known: Known, page: Page
) -> None:
    page.goto(report_file(store, settings, tmp_path, known.second))

    assert "No delivery events for this campaign" in page.locator("#base").inner_text()
    assert page.locator('[data-metric="click-rate"] .value').inner_text() == "12.5%"
    assert [mark["current"] for mark in chart(page, "click-rate-by-issue")] == [False, True]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_accessibility_problem_in_the_report(
    store: Store,
    settings: Settings,
    tmp_path: Path,
    known: Known,
    chromium: Browser,
    axe_script: Path,
    scheme: str,
) -> None:
    # The page's CSP allows no script, axe included: this context ignores it (the page itself has none).
    context = chromium.new_context(bypass_csp=True, color_scheme=scheme)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        page.goto(report_file(store, settings, tmp_path, known.first))
        page.add_script_tag(path=str(axe_script))
        results: dict[str, Any] = page.evaluate("async () => await axe.run()")
    finally:
        context.close()

    problems = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}"
        for v in results["violations"]
    ]
    assert problems == [], "\n".join(problems)
    passed = {rule["id"] for rule in results["passes"]}
    assert {"svg-img-alt", "color-contrast", "landmark-one-main", "page-has-heading-one"} <= passed


# --- the operator's pages -----------------------------------------------------------------------


@contextmanager
def live(app: Starlette) -> Iterator[httpx.Client]:
    """``app`` on a real uvicorn server (access log on), and a client of it."""
    port = free_port()
    with (
        serving(server(app, "127.0.0.1", port)),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client,
    ):
        yield client


def basic(password: str, user: str = "operator") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_without_the_password_in_the_environment_the_admin_pages_do_not_exist(
    settings: Settings, store: Store, known: Known, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)

    with live(create_app(settings, store)) as client:
        absent = client.get("/no-such-page")
        answers = [
            client.get("/admin/reports"),
            client.get(f"/admin/reports/{known.first}"),
            client.get("/admin/reports", headers=basic(PASSWORD)),
        ]

    assert [answer.status_code for answer in answers] == [404, 404, 404]
    assert all(answer.text == absent.text for answer in answers), "the same page as any unknown path"
    assert not any("www-authenticate" in answer.headers for answer in answers)


def test_a_short_password_leaves_the_pages_off_and_says_why_without_it(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "hunter2")

    with live(create_app(settings, store)) as client:
        status = client.get("/admin/reports", headers=basic("hunter2")).status_code

    assert status == 404
    assert f"{PASSWORD_ENV} is shorter than 12 characters" in caplog.text
    assert "hunter2" not in caplog.text


def test_the_admin_pages_want_the_password_and_never_log_it(
    settings: Settings,
    store: Store,
    known: Known,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    caplog.set_level(logging.DEBUG)

    with live(create_app(settings, store)) as client:
        anonymous = client.get("/admin/reports")
        wrong = client.get("/admin/reports", headers=basic("correct horse battery stapler"))
        garbled = client.get("/admin/reports", headers={"Authorization": "Basic %%%"})
        index = client.get("/admin/reports", headers=basic(PASSWORD))
        report = client.get(f"/admin/reports/{known.first}", headers=basic(PASSWORD, user="anyone"))
        unknown = client.get("/admin/reports/999", headers=basic(PASSWORD))
        too_big = client.get(f"/admin/reports/{2**70}", headers=basic(PASSWORD))

    assert [r.status_code for r in (anonymous, wrong, garbled)] == [401, 401, 401]
    assert anonymous.headers["www-authenticate"].startswith('Basic realm="newsletter reports"')
    assert "Sign in to see the reports" in wrong.text and "Guilt" not in wrong.text
    assert (index.status_code, report.status_code, unknown.status_code, too_big.status_code) == (
        200,
        200,
        404,
        404,
    )
    assert f'href="/admin/reports/{known.first}"' in index.text
    assert report.text.count('role="img"') == 4 and "55.6%" in report.text
    for page in (index, report, anonymous):
        assert page.headers["cache-control"] == "no-store"
        assert "noindex" in page.headers["x-robots-tag"]
    policy = report.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-") and "frame-ancestors 'none'" in policy
    access = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert len(access) == 7 and all("/admin/reports" in line for line in access), access
    credentials = base64.b64encode(f"operator:{PASSWORD}".encode()).decode()
    assert PASSWORD not in caplog.text and credentials not in caplog.text and "stapler" not in caplog.text


def test_wrong_passwords_are_limited_per_address(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch, open_client: OpenClient
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    clock = Clock()
    app = create_app(settings, store, clock=clock)
    guesser = open_client(app, client=("203.0.113.7", 50000))
    operator = open_client(app, client=("198.51.100.2", 50000))

    guesses = [
        guesser.get("/admin/reports", headers=basic(f"guess {i}")).status_code for i in range(FAILURES)
    ]
    blocked = guesser.get("/admin/reports", headers=basic(PASSWORD))
    elsewhere = operator.get("/admin/reports", headers=basic(PASSWORD)).status_code
    clock.advance(FAILURE_WINDOW)
    later = guesser.get("/admin/reports", headers=basic(PASSWORD)).status_code

    assert guesses == [401] * FAILURES
    assert blocked.status_code == 429, "not even the right password is looked at"
    assert blocked.headers["retry-after"] == str(int(FAILURE_WINDOW))
    assert (elsewhere, later) == (200, 200)


def test_the_admin_report_in_chromium_under_its_csp(
    settings: Settings, store: Store, known: Known, monkeypatch: pytest.MonkeyPatch, chromium: Browser
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    context = chromium.new_context(http_credentials={"username": "operator", "password": PASSWORD})
    try:
        with live(create_app(settings, store)) as client:
            page = context.new_page()
            watched = Watched(page)
            page.goto(f"{client.base_url}/admin/reports")
            page.get_by_role("link", name=str(known.first), exact=True).click()
            page.wait_for_url(f"**/admin/reports/{known.first}")
            width = page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth")
            issues = chart(page, "click-rate-by-issue")
    finally:
        context.close()

    assert watched.problems == [], "the inline stylesheet is allowed by its hash, nothing else is needed"
    assert width == "960px", "the report's own stylesheet applied under the header's CSP"
    assert [mark["value"] for mark in issues] == [round(5 / 9, 6), round(1 / 8, 6)]
