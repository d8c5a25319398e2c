"""`newsletter preview` in real headless Chromium, against the app under uvicorn on a project copy.

An editor opens an issue, saves the file, and sees the page change by itself: a marker set on
``window`` before the save must survive it (no reload). Broken YAML, a broken template and broken
settings show their errors with their lines in place of the email; fixing them brings it back. The
dark phone view is dark whatever the editor's own system is, the light views stay light, and the
copy's links are preview links. Ctrl-C stops the command at once, even with an event stream open.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import FrameLocator, Page, expect

from pipeline.audience.linkowner import Opens, link_owner
from pipeline.content.issue import issue_paths
from pipeline.preview import Workspace, create_app, server
from pipeline.preview.app import Hub
from pipeline.render.links import PREFERENCES, UNSUBSCRIBE
from pipeline.render.renderer import DARK, LIGHT
from pipeline.settings import load_settings
from pipeline.store.engine import open_store
from tests.fixtures.project import FIRST_ISSUE, own_template
from tests.system import free_port
from tests.web_support import serving

KEY = "preview-" + "k" * 40
WAIT_MS = 15_000
"""How long a page may take to show a change (never asserted as a duration: bench/preview.py times it)."""
NAME = Path(FIRST_ISSUE).stem
SUBJECT = "Guilt isn't a verdict: start by naming it"


@dataclass
class Live:
    url: str
    project: Path
    hub: Hub
    console: list[str] = field(default_factory=list)

    @property
    def issue(self) -> Path:
        return self.project / "issues" / FIRST_ISSUE


@pytest.fixture
def live(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """The preview of the project copy under uvicorn on a free port, in a background thread."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)
    port = free_port()
    app = create_app(Workspace(project / "settings.toml"))
    with serving(server(app, "127.0.0.1", port)):
        yield Live(f"http://127.0.0.1:{port}", project, app.state.preview.hub)


def save(path: Path, text: str) -> None:
    """Write as editors do: a new file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def replaced(path: Path, old: str, new: str) -> str:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {path.name}"
    return text.replace(old, new, 1)


def open_issue(page: Page, live: Live, name: str = NAME) -> None:
    """The issue's page, a marker on ``window`` that a reload would lose, console errors collected."""
    page.on("console", lambda message: live.console.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: live.console.append(str(error)))
    page.goto(f"{live.url}/issue/{name}")
    expect(frame(page, "desktop").locator("h1").first).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)
    page.evaluate("window.previewMarker = 'not reloaded'")


def not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("window.previewMarker === 'not reloaded'"))


def frame(page: Page, view: str) -> FrameLocator:
    return page.frame_locator(f'iframe[data-view="{view}"]')


def page_colour(page: Page, view: str) -> str:
    return str(frame(page, view).locator(".nl-page").evaluate("e => getComputedStyle(e).backgroundColor"))


def rgb(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def test_a_new_title_shows_in_every_view_without_a_reload(page: Page, live: Live) -> None:
    open_issue(page, live)
    expect(page.locator(".inbox [data-subject]")).to_have_text(SUBJECT)
    desktop = page.locator('iframe[data-view="desktop"]')
    desktop.evaluate("frame => frame.contentWindow.scrollTo(0, 600)")

    live.issue.write_text(
        replaced(live.issue, SUBJECT, "Guilt is a feeling, not a verdict"), encoding="utf-8"
    )

    new = "Guilt is a feeling, not a verdict"
    expect(page.locator(".inbox [data-subject]")).to_have_text(new, timeout=WAIT_MS)
    for view in ("desktop", "phone", "dark"):
        expect(frame(page, view).locator("h1").first).to_have_text(new, timeout=WAIT_MS)
    expect(page.locator("pre[data-view=text]")).to_contain_text(new, timeout=WAIT_MS)
    expect(page).to_have_title(f"{new} · preview")
    assert desktop.evaluate("frame => frame.contentWindow.scrollY") == 600, "the reader's place is kept"
    assert not_reloaded(page)
    assert not live.console


def test_broken_yaml_shows_its_error_at_its_line_and_fixing_it_brings_the_email_back(
    page: Page, live: Live
) -> None:
    good = live.issue.read_text(encoding="utf-8")
    open_issue(page, live)
    broken = replaced(live.issue, "date: 2026-12-01\n", "date: 2026-12-01\nstrategy: : oops\n")
    line = broken.splitlines().index("strategy: : oops") + 1

    save(live.issue, broken)

    errors = page.locator("[data-broken]")
    expect(errors).to_be_visible(timeout=WAIT_MS)
    expect(errors).to_contain_text(f"issues/{FIRST_ISSUE}:{line}:11: error: YAML syntax: mapping values")
    expect(page.locator("[data-email]")).to_be_hidden()
    expect(page.locator("[data-status]")).to_have_text("1 error")
    assert "Traceback" not in page.content()

    save(live.issue, good)

    expect(page.locator("[data-email]")).to_be_visible(timeout=WAIT_MS)
    expect(frame(page, "desktop").locator("h1").first).to_have_text(SUBJECT)
    expect(errors).to_be_hidden()
    expect(page.locator("[data-status]")).to_have_text("ok")
    assert not_reloaded(page)
    assert not live.console


def test_a_page_opened_on_a_broken_issue_shows_the_email_once_it_is_fixed(page: Page, live: Live) -> None:
    good = live.issue.read_text(encoding="utf-8")
    save(live.issue, good.replace("subject:", "subject: [", 1))
    page.goto(f"{live.url}/issue/{NAME}")
    expect(page.locator("[data-broken]")).to_contain_text("YAML syntax")
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=WAIT_MS)

    save(live.issue, good)

    for view in ("desktop", "phone", "dark"):
        expect(frame(page, view).locator("h1").first).to_have_text(SUBJECT, timeout=WAIT_MS)
    assert page_colour(page, "dark") == rgb(DARK["page"])


def test_an_edit_of_a_template_the_project_overrides_shows_and_so_does_its_error(
    page: Page, live: Live
) -> None:
    masthead = own_template(live.project, "partials/masthead.mjml.j2")
    good = masthead.read_text(encoding="utf-8")
    open_issue(page, live)

    save(masthead, replaced(masthead, "View in your browser", "Read it on the web"))
    expect(frame(page, "desktop").get_by_text("Read it on the web")).to_be_visible(timeout=WAIT_MS)

    broken = replaced(masthead, "Read it on the web", "{% if %}")
    line = next(number for number, text in enumerate(broken.splitlines(), 1) if "{% if %}" in text)
    save(masthead, broken)
    expect(page.locator("[data-broken]")).to_contain_text(
        f"templates/partials/masthead.mjml.j2:{line}: error: template syntax", timeout=WAIT_MS
    )

    save(masthead, good)
    expect(frame(page, "desktop").get_by_role("link", name="View in your browser")).to_have_count(
        2,
        timeout=WAIT_MS,  # the masthead's again, and the footer's
    )
    assert not_reloaded(page)
    assert not live.console


def test_broken_settings_show_at_their_line_in_place_of_the_email(page: Page, live: Live) -> None:
    settings_file = live.project / "settings.toml"
    good = settings_file.read_text(encoding="utf-8")
    open_issue(page, live)
    line = good.splitlines().index('from_email = "hello@news.example.org"') + 1

    save(settings_file, replaced(settings_file, '"hello@news.example.org"', '"hello at news"'))
    expect(page.locator("[data-broken]")).to_contain_text(
        f"settings.toml:{line}:1: error: sender.from_email", timeout=WAIT_MS
    )

    save(settings_file, good)
    expect(page.locator("[data-email]")).to_be_visible(timeout=WAIT_MS)
    assert not_reloaded(page)


def test_the_index_lists_every_issue_with_its_check_status_and_follows_saves(page: Page, live: Live) -> None:
    issues = issue_paths([], live.project / "issues")  # the welcome steps too, after the issues
    warned, failing = issues[1], issues[2]
    long_subject = "A subject of sixty-five characters, which phones cut short, see?"
    assert 60 < len(long_subject) <= 70
    subject_line = (
        warned.read_text(encoding="utf-8")
        .splitlines()
        .index('subject: "Store-bought cupcakes count. So do you."')
    )
    save(warned, replaced(warned, "Store-bought cupcakes count. So do you.", long_subject))
    save(failing, replaced(failing, "intro: |\n", "intro: |\n  TODO: a better opening.\n"))

    page.goto(live.url)
    rows = page.locator("table.issues tbody tr")
    expect(rows).to_have_count(len(issues))
    statuses = {path.stem: "ok" for path in issues} | {warned.stem: "1 warning", failing.stem: "1 error"}
    for path in issues:
        row = rows.filter(has=page.get_by_role("link", name=path.stem, exact=True))
        expect(row.locator("[data-status]")).to_have_text(statuses[path.stem])
    expect(rows.filter(has_text=warned.stem)).to_contain_text(long_subject)

    page.evaluate("window.previewMarker = 'not reloaded'")
    save(failing, replaced(failing, "  TODO: a better opening.\n", ""))
    expect(rows.filter(has_text=failing.stem).locator("[data-status]")).to_have_text("ok", timeout=WAIT_MS)
    assert not_reloaded(page)

    rows.filter(has_text=warned.stem).get_by_role("link").click()
    expect(page.get_by_role("list", name="Problems")).to_contain_text(
        f"issues/{warned.name}:{subject_line + 1}:10: warning: subject: {len(long_subject)} characters; "
        "phones cut it after about 60"
    )


def set_hidden(page: Page, hidden: bool) -> None:
    """What the browser does when the tab goes to the background (or comes back)."""
    page.evaluate(
        "hidden => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange')); }",
        hidden,
    )


def wait_for_listeners(live: Live, count: int) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while live.hub.listeners != count:
        assert time.monotonic() < deadline, f"{live.hub.listeners} event streams open, not {count}"
        time.sleep(0.02)


def test_a_background_tab_gives_its_stream_up_and_catches_up_when_shown(page: Page, live: Live) -> None:
    open_issue(page, live)
    wait_for_listeners(live, 1)

    set_hidden(page, True)
    wait_for_listeners(live, 0)  # browsers allow six connections per host: hidden tabs hold none
    save(live.issue, replaced(live.issue, SUBJECT, "Saved while the tab was hidden"))
    set_hidden(page, False)

    expect(frame(page, "desktop").locator("h1").first).to_have_text(
        "Saved while the tab was hidden", timeout=WAIT_MS
    )
    wait_for_listeners(live, 1)
    assert not_reloaded(page)


def test_the_dark_phone_is_dark_and_the_light_views_stay_light_on_a_dark_system(
    page: Page, live: Live
) -> None:
    page.emulate_media(color_scheme="dark")  # the editor's own system is dark
    open_issue(page, live)

    assert page_colour(page, "desktop") == rgb(LIGHT["page"])
    assert page_colour(page, "phone") == rgb(LIGHT["page"])
    assert page_colour(page, "dark") == rgb(DARK["page"])
    assert page.locator('iframe[data-view="dark"]').evaluate("e => getComputedStyle(e).colorScheme") == "dark"
    widths = {
        view: page.locator(f'iframe[data-view="{view}"]').bounding_box() for view in ("desktop", "phone")
    }
    assert {view: round(box["width"]) if box else None for view, box in widths.items()} == {
        "desktop": 800 + 2,  # and a 1 px border each side
        "phone": 375 + 2,
    }


def test_the_previews_links_are_preview_links_that_act_for_nobody(page: Page, live: Live) -> None:
    open_issue(page, live)
    desktop = frame(page, "desktop")
    unsubscribe = desktop.get_by_role("link", name="Unsubscribe").get_attribute("href")
    preferences = desktop.get_by_role("link", name="Update your preferences").get_attribute("href")
    assert unsubscribe and preferences
    expect(desktop.locator("body")).to_contain_text("Hi Alex,")

    with open_store(load_settings(live.project / "settings.toml")) as store:
        assert link_owner(store, UNSUBSCRIBE, unsubscribe.rpartition("/u/")[2]).opens is Opens.PREVIEW
        assert (
            link_owner(store, PREFERENCES, preferences.rpartition("/preferences/")[2]).opens is Opens.PREVIEW
        )


def test_ctrl_c_stops_the_command_and_ends_the_open_event_streams(project: Path) -> None:
    port = free_port()
    env = {**os.environ, "NEWSLETTER_SECRET_KEY": KEY}
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", "preview", "--port", str(port)]
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    assert NAME in answer.read().decode()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the preview did not start"
                time.sleep(0.1)
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        stream.request("GET", "/events")
        events = stream.getresponse()
        assert events.headers["content-type"].startswith("text/event-stream")
        assert events.readline() == b"retry: 1000\n"

        process.send_signal(signal.SIGINT)

        out, err = process.communicate(timeout=30)
        assert events.read() == b"\n", "the stream ends (after the blank line closing its first message)"
        stream.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert b"Traceback" not in err and b"ERROR" not in err, err.decode()
    assert (
        out.decode().splitlines()[0] == f"Previewing The Juggle on http://127.0.0.1:{port}/ (Ctrl-C to stop)"
    )
    assert out.decode().splitlines()[-1] == "Stopped."
