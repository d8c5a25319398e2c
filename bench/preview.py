"""Save-to-update latency of `newsletter preview`: `python -m bench.preview [--rounds N] [--screenshot PNG]`.

`newsletter preview` runs as a whole process on a throwaway copy of the sample project, and headless
Chromium (Debian's) opens the first sample issue's page. Each round saves a change the way editors'
editors do (a new file renamed over the old one) and times, from just before the save to the frame
after the page shows it, what the editor waits for: the poll finds the change, the event reaches the
page, the page fetches the new state, and all three email views have loaded and painted it (the
page's own clock, ``performance.timeOrigin + performance.now()``, against the save's wall time).

Side by side, in one run:

- an issue change (the subject: the inbox line, the three views and the text part all change);
- a template change (the masthead partial the project overrides: the renderer is rebuilt, every
  template compiled again, and the open issue rendered again);
- today's loop without the preview: `newsletter render ISSUE` as a whole process, after which the
  editor still has to reload `rendered/*.html` by hand.

With ``--screenshot``, the issue page (desktop, phone, dark phone, text part) is saved as a PNG at
the end: docs/preview.png is made by `python -m bench.preview --rounds 0 --screenshot docs/preview.png`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.fixtures.browser import CHROMIUM
from tests.fixtures.project import FIRST_ISSUE, PROJECT_PARTS, own_template
from tests.paths import REPO
from tests.system import free_port

NEWSLETTER = [sys.executable, "-c", "from pipeline.cli import main; main()"]
KEY = "bench-preview-" + "k" * 32
START_SECONDS = 30.0
SCREEN = {"width": 2330, "height": 1040}
"""Wide enough for the four views side by side."""
SCREENSHOT_SCALE = 0.75
"""Pixels per CSS pixel in the screenshot: the four views stay legible in under 300 KB."""
SHOWS = """needle => new Promise(resolve => {
  const frames = [...document.querySelectorAll("iframe[data-scheme]")];
  const shown = () => frames.every(f => (f.contentDocument?.body?.textContent ?? "").includes(needle));
  const look = () => shown() ? requestAnimationFrame(() => resolve(performance.timeOrigin + performance.now()))
                             : requestAnimationFrame(look);
  requestAnimationFrame(look);
})"""
"""Resolves with the page's wall clock at the frame after the one in which every email view first
shows ``needle`` (checked at each frame, so it is the time the editor sees it, to a frame)."""
STAGES = """() => {
  const now = at => performance.timeOrigin + at;
  const states = performance.getEntriesByType("resource").filter(e => e.name.endsWith("/state"));
  return [now(window.__events.at(-1)), now(states.at(-1).responseEnd)];
}"""
"""When the last change's event reached the page, and when the page had the new state (wall clock)."""
LISTEN = "() => { window.__events = []; new EventSource('/events').onmessage = () => __events.push(performance.now()); }"


def project_copy(into: Path) -> Path:
    for part in PROJECT_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, into / part)
        elif source.exists():
            shutil.copy2(source, into / part)
    return into


def save(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@contextmanager
def preview_process(project: Path, env: dict[str, str]) -> Iterator[str]:
    """`newsletter preview` on a free port until the block ends (then Ctrl-C); its URL."""
    port = free_port()
    process = subprocess.Popen(
        [*NEWSLETTER, "preview", "--port", str(port)], cwd=project, env=env, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                urllib.request.urlopen(f"{url}/live.js", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("newsletter preview did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


Timings = dict[str, list[float]]


def save_to_shown(page: Page, path: Path, change: Callable[[int], tuple[str, str]], rounds: int) -> Timings:
    """Milliseconds from each save to the frame after the page shows it, and to the stages on the way
    (the event reaching the page, the new state fetched); one round first to warm up."""
    original = path.read_text(encoding="utf-8")
    found: Timings = {"event": [], "state": [], "shown": []}
    for round_ in range(rounds + 1):
        old, new = change(round_)
        assert old in original, f"{old!r} is not in {path.name}"
        page.evaluate(f"() => {{ window.__shown = ({SHOWS})({new!r}); }}")  # not awaited: set up only
        saved = time.time() * 1000
        save(path, original.replace(old, new, 1))
        shown = float(page.evaluate("window.__shown"))
        event, state = page.evaluate(STAGES)
        if round_:
            for stage, at in (("event", event), ("state", state), ("shown", shown)):
                found[stage].append(at - saved)
    save(path, original)
    return found


def whole_render(project: Path, env: dict[str, str], rounds: int) -> list[float]:
    """Milliseconds of `newsletter render ISSUE` as a process, as an editor runs it after each save."""
    found = []
    for round_ in range(rounds + 1):
        start = time.perf_counter()
        subprocess.run(
            [*NEWSLETTER, "render", f"issues/{FIRST_ISSUE}"],
            cwd=project,
            env=env,
            check=True,
            capture_output=True,
        )
        if round_:
            found.append((time.perf_counter() - start) * 1000)
    return found


def median_p95(milliseconds: list[float]) -> tuple[float, float]:
    if len(milliseconds) < 2:
        return milliseconds[0], milliseconds[0]
    return statistics.median(milliseconds), statistics.quantiles(milliseconds, n=20)[18]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="saves timed per kind of change")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the issue page here at the end")
    args = parser.parse_args()
    env = {**os.environ, "NEWSLETTER_SECRET_KEY": KEY}
    with tempfile.TemporaryDirectory(prefix="bench-preview-") as folder:
        project = project_copy(Path(folder))
        issue = project / "issues" / FIRST_ISSUE
        masthead = own_template(project, "partials/masthead.mjml.j2")
        subject = "Guilt isn't a verdict: start by naming it"
        with preview_process(project, env) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport=SCREEN)
            page.goto(f"{url}/issue/{Path(FIRST_ISSUE).stem}")
            page.wait_for_selector('body[data-connection="live"]')
            page.evaluate(LISTEN)
            stages: dict[str, Timings] = {}
            if args.rounds:
                stages["issue"] = save_to_shown(
                    page, issue, lambda n: (subject, f"{subject} ({n})"), args.rounds
                )
                stages["template"] = save_to_shown(
                    page, masthead, lambda n: ("View in your browser", f"View it online ({n})"), args.rounds
                )
            if args.screenshot:
                shot = browser.new_page(viewport=SCREEN, device_scale_factor=SCREENSHOT_SCALE)
                shot.goto(page.url)
                shot.wait_for_selector('body[data-connection="live"]')
                shot.wait_for_timeout(500)  # the views lay out
                shot.screenshot(path=str(args.screenshot))
            browser.close()
        if not args.rounds:
            print(f"screenshot: {args.screenshot}")
            return
        results = {kind: timings["shown"] for kind, timings in stages.items()}
        results["render"] = whole_render(project, env, args.rounds)

    print(f"save → the page shows it, {args.rounds} saves each{'median':>22}{'p95':>11}")
    labels = {
        "issue": "issue file (subject) → `newsletter preview`",
        "template": "template (masthead partial) → `newsletter preview`",
        "render": "`newsletter render ISSUE` as a process (no reload yet)",
    }
    medians = {}
    for kind, label in labels.items():
        medians[kind], p95 = median_p95(results[kind])
        print(f"  {label:<54} {medians[kind]:7.1f} ms {p95:7.1f} ms")
    for kind in ("issue", "template"):
        print(f"  ratio render process / preview, {kind} change: {medians['render'] / medians[kind]:5.1f}x")
    print("where the time goes (medians, ms after the save): event at the page / new state fetched / shown")
    for kind, timings in stages.items():
        event, state, shown = (statistics.median(timings[stage]) for stage in timings)
        print(f"  {kind:<9} {event:6.1f} / {state:6.1f} / {shown:6.1f}")
    print(f"load average: {' '.join(f'{load:.2f}' for load in os.getloadavg())} ({os.cpu_count()} cores)")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
