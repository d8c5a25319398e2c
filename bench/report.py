"""The report on a realistic list: `python bench/report.py [--engines sqlite,postgresql] [--screenshot docs/report.png]`.

Made-up but lifelike: 26 weeks of a list that started as an imported 1,900 and grows by signups
(each with one to three topic tags), loses a few people a week to unsubscribe links, and gets a
weekly issue for the last 12 weeks, sent to three segments (about 3,000 recipients by the end).
SendGrid reports every message back: delivered, about 1.2 % hard bounces, a rare spam complaint,
opens, and clicks on four to six links per issue, most within hours of the send and a second wave the
next morning, with people who click twice or come back. Every time in the store (the consent log,
the ledger's claims, the events) is set to when it would have happened, so the weekly and hourly
charts show what such a list would. The seed is fixed: the same store every run.

What is timed, on each engine (a throwaway PostgreSQL is started for the second), is what
`newsletter report ID --html FILE` does for the last campaign: its numbers (``campaign_stats``),
the trends across issues (``trends``) and the page (``ReportPage.campaign``), best of five runs.
PostgreSQL's tables are analysed first, as autovacuum would have done by then: a planner without
statistics takes the segment filters for one row and the report for seconds instead of milliseconds.
`--screenshot PATH` opens the SQLite store's report in Chromium and saves it (the README's picture,
docs/report.png). Not part of `make test`; the exit status is 1 only if the report's totals do not
match what was generated.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import bindparam, func, select, update  # noqa: E402

from pipeline.audience.importer import import_csv  # noqa: E402
from pipeline.audience.subscribers import unsubscribe  # noqa: E402
from pipeline.content.issue import load_issue  # noqa: E402
from pipeline.dispatch import campaigns  # noqa: E402
from pipeline.feedback.events import record_events  # noqa: E402
from pipeline.feedback.reportpage import ReportPage  # noqa: E402
from pipeline.feedback.reports import CampaignStats, campaign_stats  # noqa: E402
from pipeline.feedback.trends import Trends, trends  # noqa: E402
from pipeline.render.renderer import RenderedIssue, render  # noqa: E402
from pipeline.settings import Settings, load_settings  # noqa: E402
from pipeline.store.engine import Store, connect  # noqa: E402
from pipeline.store.tables import campaigns as campaigns_table  # noqa: E402
from pipeline.store.tables import deliveries, subscriber_events, subscriber_tags, subscribers  # noqa: E402
from tests.emulators.sendgrid_events import event  # noqa: E402
from tests.fixtures.store import running_postgres  # noqa: E402
from tests.web_support import mark_sent  # noqa: E402

KEY = b"bench-key-0123456789abcdef0123456789abcdef"
FIRST_WEEK = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # a Monday
WEEKS, ISSUES = 26, 12
END = FIRST_WEEK + dt.timedelta(weeks=WEEKS) - dt.timedelta(days=2)  # the Saturday after the last issue
SEGMENTS = ("toddlers", "working-moms", "school-age")
TOPICS = {"toddler": 0.45, "working-mom": 0.5, "school-age": 0.35, "new-parent": 0.12, "single-parent": 0.1}
CLICKINESS = {"toddler": 1.25, "working-mom": 0.85, "school-age": 1.0}
SUBJECTS = [
    ("sleep-when-they-sleep", "Sleep when they sleep? Here's what works instead"),
    ("the-five-minute-reset", "The five-minute reset for the worst hour of the day"),
    ("saying-no-at-work", "Saying no at work without the guilt spiral"),
    ("screen-time-truce", "A screen-time truce everyone can live with"),
    ("lunchbox-autopilot", "Lunchbox autopilot: one list, five mornings"),
    ("when-grandparents-help", "When grandparents help (and when they 'help')"),
    ("name-it-to-tame-it", "Guilt isn't a verdict: start by naming it"),
    ("realistic-expectations", "Store-bought cupcakes count. So do you."),
    ("build-your-support-system", "You were never meant to do this alone"),
    ("self-compassion", "Talk to yourself like you'd talk to a friend"),
    ("micro-moments", "Ten minutes that count more than an hour"),
    ("the-holiday-plan", "A holiday plan with room to breathe"),
]
LINK_PATHS = ["/read/study", "/read/checklist", "/podcast/ep", "/book/review", "/tools/planner", "/community"]


@dataclasses.dataclass
class Made:
    """What the generator made, to check the report against."""

    last_campaign: int = 0
    last_sent: int = 0
    last_clickers: int = 0
    campaigns: int = 0


def _project(tmp: Path) -> Settings:
    for part in ("settings.toml", "issues", "templates", "subscribers"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, tmp / part)
        elif source.exists():
            shutil.copy2(source, tmp / part)
    return load_settings(tmp / "settings.toml")


class World:
    """The simulated list, written into one store."""

    def __init__(self, store: Store, settings: Settings, tmp: Path) -> None:
        self.store, self.settings, self.tmp = store, settings, tmp
        self.random = random.Random(15)
        self.people = 0
        self.made = Made()
        issues = sorted((REPO / "issues").glob("*.yaml"))
        self.rendered = [render(load_issue(path), settings) for path in issues]

    def _last_event(self) -> int:
        with self.store.read() as conn:
            return int(conn.scalar(select(func.coalesce(func.max(subscriber_events.c.id), 0))) or 0)

    @contextmanager
    def at(self, when: Callable[[], dt.datetime]) -> Iterator[None]:
        """The consent-log rows written in the block are dated by ``when`` (one call per row)."""
        first = self._last_event()
        yield
        with self.store.read() as conn:
            ids = list(conn.scalars(select(subscriber_events.c.id).where(subscriber_events.c.id > first)))
        if ids:
            ev = subscriber_events.c
            statement = (
                update(subscriber_events).where(ev.id == bindparam("eid")).values(at=bindparam("when"))
            )
            with self.store.write() as conn:
                conn.execute(statement, [{"eid": i, "when": when()} for i in ids])

    def join(self, count: int, start: dt.datetime, days: float) -> None:
        rows = []
        for _ in range(count):
            tags = [t for t, p in TOPICS.items() if self.random.random() < p]
            if not set(tags) & {"toddler", "working-mom", "school-age"}:
                tags.append(self.random.choice(["toddler", "working-mom", "school-age"]))
            rows.append(f"reader{self.people:05d}@example.com,Reader {self.people},{'|'.join(tags)}\n")
            self.people += 1
        csv = self.tmp / "join.csv"
        csv.write_text("email,name,tags\n" + "".join(rows), encoding="utf-8")
        with self.at(lambda: start + dt.timedelta(days=self.random.random() * days)):
            import_csv(self.store, csv)

    def issue(self, number: int, started: dt.datetime) -> None:
        slug, subject = SUBJECTS[number]
        day = started.date().isoformat()
        sample = self.rendered[number % len(self.rendered)]
        rendered = RenderedIssue(
            f"{day}-{slug}", subject, sample.preheader, sample.html, sample.text, sample.web
        )
        campaign, _ = campaigns.create_campaign(self.store, rendered, SEGMENTS, "sendgrid")
        sent = mark_sent(self.store, campaign.id, 100_000)
        c = campaigns_table.c
        with self.store.write() as conn:
            conn.execute(
                update(campaigns_table)
                .where(c.id == campaign.id)
                .values(
                    created_at=started - dt.timedelta(hours=1),
                    started_at=started,
                    finished_at=started + dt.timedelta(minutes=4),
                    status="finished",
                )
            )
            conn.execute(
                update(deliveries).where(deliveries.c.campaign_id == campaign.id).values(claimed_at=started)
            )
        self._report_back(campaign.id, number, started, sent)

    def _people(self) -> tuple[dict[int, str], dict[int, list[str]]]:
        """Every subscriber's address and tags, by id."""
        tags: dict[int, list[str]] = {}
        with self.store.read() as conn:
            emails = {
                sid: email for sid, email in conn.execute(select(subscribers.c.id, subscribers.c.email))
            }
            for sid, tag in conn.execute(select(subscriber_tags.c.subscriber_id, subscriber_tags.c.tag)):
                tags.setdefault(sid, []).append(tag)
        return emails, tags

    def _click_time(self) -> float:
        """Hours after the send: most within the morning, a second wave the next day, a long tail."""
        roll = self.random.random()
        if roll < 0.62:
            return self.random.expovariate(1 / 2.2)
        if roll < 0.85:
            return 23.5 + self.random.expovariate(1 / 2.5)
        return self.random.uniform(0, 90)

    def _report_back(
        self, campaign_id: int, number: int, started: dt.datetime, sent: list[tuple[int, int]]
    ) -> None:
        rng = self.random
        emails, tags = self._people()
        links = [
            f"https://example.org{path}-{number + 1}" for path in rng.sample(LINK_PATHS, rng.randint(4, 6))
        ]
        weights = [1 / (i + 1) ** 1.1 for i in range(len(links))]
        base_rate = rng.uniform(0.035, 0.075)
        events: list[dict[str, Any]] = []
        clickers = 0

        for delivery_id, sid in sent:

            def sg(
                kind: str, hours: float, sid: int = sid, delivery_id: int = delivery_id, **fields: Any
            ) -> None:
                """One event as SendGrid would post it, ``hours`` after the send."""
                moment = int((started + dt.timedelta(hours=hours)).timestamp())
                events.append(
                    event(
                        kind,
                        emails[sid],
                        campaign_id=campaign_id,
                        subscriber_id=sid,
                        delivery_id=delivery_id,
                        timestamp=moment,
                        **fields,
                    )
                )

            roll = rng.random()
            if roll < 0.012:
                sg("bounce", 0.1, reason="550 5.1.1 user unknown")
                continue
            sg("delivered", rng.uniform(0.01, 0.2))
            if roll > 0.9996:
                sg("spamreport", rng.uniform(1, 30))
            if rng.random() < 0.46:
                sg("open", rng.expovariate(1 / 4))
            factor = max((CLICKINESS.get(t, 0.0) for t in tags.get(sid, [])), default=1.0)
            if rng.random() < base_rate * factor:
                clickers += 1
                first = self._click_time()
                for link in dict.fromkeys(rng.choices(links, weights, k=1 + (rng.random() < 0.25))):
                    sg("click", first, url=link)
                    if rng.random() < 0.12:
                        sg("click", first + rng.uniform(0.1, 30), url=link)
        with self.at(lambda: started + dt.timedelta(hours=rng.uniform(0.1, 30))):
            for i in range(0, len(events), 1000):
                record_events(self.store, events[i : i + 1000], now=started + dt.timedelta(hours=1))
        leaving = rng.sample(sent, max(1, round(len(sent) * rng.uniform(0.002, 0.005))))
        with self.at(lambda: started + dt.timedelta(hours=rng.uniform(0.5, 70))):
            for _, sid in leaving:
                unsubscribe(self.store, sid, actor="unsubscribe-link")
        self.made = dataclasses.replace(
            self.made,
            last_campaign=campaign_id,
            last_sent=len(sent),
            last_clickers=clickers,
            campaigns=self.made.campaigns + 1,
        )

    def build(self) -> Made:
        self.join(
            1900, FIRST_WEEK - dt.timedelta(weeks=8), 0.2
        )  # the old list, imported before the charts start
        for week in range(WEEKS):
            monday = FIRST_WEEK + dt.timedelta(weeks=week)
            self.join(int(30 + week * 2.4 + self.random.randint(-12, 25)), monday, 7)
            number = week - (WEEKS - ISSUES)
            if number >= 0:
                self.issue(number, monday + dt.timedelta(days=1, hours=7))
            else:
                quiet = self.random.sample(range(1, self.people + 1), self.random.randint(2, 6))

                def this_week(monday: dt.datetime = monday) -> dt.datetime:
                    return monday + dt.timedelta(days=self.random.uniform(0, 7))

                with self.at(this_week):
                    for sid in quiet:
                        unsubscribe(self.store, sid, actor="unsubscribe-link")
        return self.made


def _best(runs: int, work: Callable[[], object]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def measure(name: str, url: str, settings: Settings, tmp: Path) -> tuple[dict[str, float], str, bool]:
    store = connect(url, KEY, segments_file=tmp / "subscribers" / "segments.toml")
    try:
        started = time.perf_counter()
        made = World(store, settings, tmp).build()
        built = time.perf_counter() - started
        if store.dialect == "postgresql":  # what autovacuum does after a load this size, before it is timed
            with store.write() as conn:
                conn.exec_driver_sql("ANALYZE")
        page = ReportPage(settings)
        stats_s, stats = _best(5, lambda: campaign_stats(store, made.last_campaign))
        trends_s, across = _best(5, lambda: trends(store, now=END))
        assert isinstance(stats, CampaignStats) and isinstance(across, Trends)
        render_s, html = _best(5, lambda: page.campaign(stats, across, generated=END))
        whole = stats.whole
        correct = (
            whole.sent == made.last_sent
            and whole.clicked.unique == made.last_clickers
            and len(across.issues) == made.campaigns
        )
        print(
            f"{name:>10}: {made.campaigns} campaigns, {whole.sent:,} recipients in the last "
            f"({whole.delivered:,} delivered, {whole.clicked.unique:,} clicked, "
            f"click rate {whole.click_rate(stats.base) or 0:.1%}), {len(across.weeks)} weeks; store built in {built:.1f} s"
        )
        if not correct:
            print(
                f"{name:>10}: MISMATCH: generated {made}, reported sent {whole.sent} clickers {whole.clicked.unique}"
            )
        return {"campaign_stats": stats_s, "trends": trends_s, "page": render_s}, str(html), correct
    finally:
        store.close()


def screenshot(html: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="bench-report-page-"))
    source = folder / "report.html"
    source.write_text(html, encoding="utf-8")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            page = browser.new_page(viewport={"width": 1000, "height": 1000})
            page.goto(source.resolve().as_uri())
            height = page.evaluate("document.querySelector('#campaigns').getBoundingClientRect().top")
            page.screenshot(
                path=str(path),
                full_page=True,
                clip={"x": 0, "y": 0, "width": 1000, "height": int(height) - 8},
            )
            browser.close()
    finally:
        shutil.rmtree(folder)
    print(f"screenshot: {path} ({path.stat().st_size / 1024:.0f} KB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--screenshot", type=Path, help="save the SQLite report, in Chromium, as this PNG")
    args = parser.parse_args()
    engines = args.engines.split(",")
    timings: dict[str, dict[str, float]] = {}
    ok = True
    pages: dict[str, str] = {}
    for name in engines:
        tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
        try:
            settings = _project(tmp)
            if name == "sqlite":
                timings[name], pages[name], correct = measure(
                    name, f"sqlite:///{tmp / 'store.db'}", settings, tmp
                )
            else:
                with running_postgres() as server:
                    url = server.url(server.create_database())
                    timings[name], pages[name], correct = measure(name, url, settings, tmp)
            ok &= correct
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'best of 5':>16}" + "".join(f"{name:>12}" for name in engines))
    for part in ("campaign_stats", "trends", "page"):
        print(f"{part:>16}" + "".join(f"{timings[name][part] * 1000:>10.1f} ms" for name in engines))
    total = {name: sum(timings[name].values()) for name in engines}
    print(f"{'whole report':>16}" + "".join(f"{total[name] * 1000:>10.1f} ms" for name in engines))
    if len(engines) == 2:
        a, b = engines
        print(f"{b} / {a}: {total[b] / total[a]:.2f}x")
    print(f"page: {len(next(iter(pages.values())).encode()) / 1024:.0f} KB of HTML, charts included")
    if args.screenshot is not None:
        screenshot(pages.get("sqlite") or next(iter(pages.values())), args.screenshot)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
