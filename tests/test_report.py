"""``newsletter report``: a campaign's sends beside what SendGrid reported, per segment, and its top links;
its rates, unique clicks per link and per hour, and the trends across issues that its HTML report shows."""

from __future__ import annotations

import datetime as dt
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from pipeline.audience.subscribers import event_row, unsubscribe
from pipeline.cli.context import console
from pipeline.feedback.events import record_events
from pipeline.feedback.reports import FIRST_HOURS, Base, Count, SegmentStats, campaign_stats
from pipeline.feedback.trends import Week, audience_weeks, issue_rates
from pipeline.settings import Settings
from pipeline.store.engine import Store, open_store
from pipeline.store.statuses import CampaignKind
from pipeline.store.tables import campaigns, subscriber_events
from tests.emulators.sendgrid_events import event
from tests.fixtures.project import cli_invoker
from tests.report_support import (
    CLICKERS,
    DELIVERED,
    HOURLY,
    SECOND_CLICKERS,
    SECOND_SENT,
    A,
    B,
    known_campaigns,
)
from tests.report_support import subscriber_id as sid
from tests.test_startup import WEB_AND_STORE, modules_after
from tests.transport_helpers import new_campaign
from tests.web_support import readers, send_everything


def scenario(store: Store, settings: Settings, tmp_path: Path) -> tuple[int, int]:
    """Ten toddler parents and ten working moms get campaign 1; SendGrid reports back; some leave."""
    toddlers = readers(store, tmp_path, 10, tags="toddler", prefix="t")
    moms = readers(store, tmp_path, 10, tags="working-mom", prefix="w")
    first = new_campaign(store, settings, ("toddlers", "working-moms"))
    send_everything(store, settings, first.id)

    def on(kind: str, email: str, **fields: Any) -> dict[str, Any]:
        return event(kind, email, campaign_id=first.id, subscriber_id=sid(store, email), **fields)

    bounced = {toddlers[9], moms[9]}
    record_events(
        store,
        [on("delivered", e) for e in toddlers + moms if e not in bounced]
        + [on("bounce", e, reason="550 no such user") for e in sorted(bounced)]
        + [on("open", toddlers[0]), on("open", toddlers[0]), on("open", toddlers[1]), on("open", moms[0])]
        + [on("click", toddlers[0], url=A), on("click", toddlers[0], url=A), on("click", toddlers[0], url=B)]
        + [on("click", moms[0], url=A), on("spamreport", moms[1]), on("unsubscribe", toddlers[2])],
    )
    unsubscribe(store, toddlers[3], actor="unsubscribe-link")  # left after issue 1: credited to it
    second = new_campaign(store, settings, ("everyone",), "2026-12-08-realistic-expectations.yaml")
    send_everything(store, settings, second.id)
    unsubscribe(store, toddlers[4], actor="unsubscribe-link")  # left after issue 2: credited to that one
    return first.id, second.id


def test_the_report_per_segment_and_for_the_whole_campaign(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    first, second = scenario(store, settings, tmp_path)

    stats = campaign_stats(store, first)

    assert stats.rows == [
        SegmentStats("toddlers", 10, 10, 9, 1, 0, 2, Count(total=3, unique=2), Count(total=3, unique=1)),
        SegmentStats("working-moms", 10, 10, 9, 1, 1, 0, Count(total=1, unique=1), Count(total=1, unique=1)),
        SegmentStats("all", 20, 20, 18, 2, 1, 2, Count(total=4, unique=3), Count(total=4, unique=2)),
    ]
    assert [(link.url, link.clicks, link.unique) for link in stats.links] == [(A, 3, 2), (B, 1, 1)]
    assert stats.missing_segments == []
    later = campaign_stats(store, second)
    assert (later.rows[-1].sent, later.rows[-1].unsubscribed, later.links) == (15, 1, [])


def test_a_segment_gone_from_segments_toml_is_named(store: Store, settings: Settings, tmp_path: Path) -> None:
    readers(store, tmp_path, 3, tags="teen")
    campaign = new_campaign(store, settings, ("school-age",))
    send_everything(store, settings, campaign.id)
    segments_file = settings.path(settings.newsletter.segments_file)
    segments_file.write_text(
        segments_file.read_text().replace("[segments.school-age]", "[segments.older-kids]")
    )

    stats = campaign_stats(store, campaign.id)

    assert stats.missing_segments == ["school-age"]
    assert [(row.segment, row.sent) for row in stats.rows] == [("all", 3)]


def test_the_report_command(
    settings: Settings, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "r" * 40)
    monkeypatch.setattr(console, "width", 200)
    with open_store(settings) as store:
        first, _ = scenario(store, settings, tmp_path)

    result = cli_invoker(project / "settings.toml")("report", str(first), expect=None)

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.replace("│", " ").split()) for line in result.output.splitlines()]
    assert "toddlers 10 9 1 0 2 2 (3) 1 (3) 11.1%" in lines
    assert "working-moms 10 9 1 1 0 1 (1) 1 (1) 11.1%" in lines
    assert "all 20 18 2 1 2 3 (4) 2 (4) 11.1%" in lines
    assert f"3 2 11.1% {A}" in lines and f"1 1 5.6% {B}" in lines
    assert "rates are of messages sent" not in result.output


def test_report_of_an_unknown_campaign_is_a_clean_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "r" * 40)

    result = cli_invoker(project / "settings.toml")("report", "42", expect=None)

    assert result.exit_code == 1
    assert "campaign 42: no such campaign" in result.output


# --- rates, unique clicks, hours and weeks (issue 15, part 4) -----------------------------------


def test_unique_clicks_and_rates_per_segment_per_link_and_per_hour(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    known = known_campaigns(store, settings, tmp_path)

    stats = campaign_stats(store, known.first)

    rows = {row.segment: row for row in stats.rows}
    assert stats.base is Base.DELIVERED
    whole = rows["all"]
    assert (whole.recipients, whole.sent, whole.delivered, whole.bounced, whole.complained) == (
        10,
        10,
        9,
        1,
        1,
    )
    assert whole.clicked == Count(
        total=8, unique=CLICKERS
    )  # t0's second click and w0's own-redirect one: once
    assert whole.opened == Count(total=3, unique=2)
    assert whole.click_rate(stats.base) == pytest.approx(CLICKERS / DELIVERED)
    assert (rows["toddlers"].delivered, rows["toddlers"].clicked.unique) == (5, 3)
    assert rows["toddlers"].click_rate(stats.base) == pytest.approx(3 / 5)
    assert rows["working-moms"].click_rate(stats.base) == pytest.approx(2 / 4)
    assert [(link.url, link.clicks, link.unique) for link in stats.links] == [(A, 5, 3), (B, 3, 3)]
    assert [stats.link_rate(link) for link in stats.links] == pytest.approx([3 / 9, 3 / 9])
    assert len(stats.hourly) == FIRST_HOURS
    assert {hour: n for hour, n in enumerate(stats.hourly) if n} == HOURLY


def test_without_delivery_events_rates_are_of_messages_sent(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    known = known_campaigns(store, settings, tmp_path)

    stats = campaign_stats(store, known.second)

    assert stats.base is Base.SENT
    assert (stats.whole.sent, stats.whole.delivered, stats.whole.clicked.unique) == (SECOND_SENT, 0, 1)
    assert stats.whole.click_rate(stats.base) == pytest.approx(SECOND_CLICKERS / SECOND_SENT)


def test_the_click_rate_of_every_issue_each_on_its_own_base(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    known = known_campaigns(store, settings, tmp_path)
    unsent = new_campaign(store, settings, ("everyone",), "2026-12-15-build-your-support-system.yaml")

    issues = issue_rates(store)

    assert [(i.campaign_id, i.sent, i.delivered, i.clickers, i.base) for i in issues] == [
        (known.first, 10, DELIVERED, CLICKERS, Base.DELIVERED),
        (known.second, SECOND_SENT, 0, SECOND_CLICKERS, Base.SENT),
    ]
    assert [i.click_rate for i in issues] == pytest.approx([5 / 9, 1 / 8])
    assert unsent.id not in {i.campaign_id for i in issues}


def test_welcome_steps_are_not_issues_in_the_click_rate_per_issue(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    known = known_campaigns(store, settings, tmp_path)
    with store.write() as conn:
        conn.execute(
            update(campaigns).where(campaigns.c.id == known.second).values(kind=CampaignKind.WELCOME)
        )

    assert [i.campaign_id for i in issue_rates(store)] == [known.first]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


LOG = [
    # (subscriber, kind, from, to, when): four weeks of the consent log
    (1, "added", None, "active", "2026-11-16 09:00"),
    (2, "imported", None, "active", "2026-11-18 12:00"),
    (3, "imported", None, "active", "2026-11-22 23:30"),  # Sunday night UTC: already Monday east of UTC
    (4, "added", None, "unconfirmed", "2026-11-19 10:00"),  # a signup, not yet a join
    (2, "updated", None, None, "2026-11-20 10:00"),  # a name changed: no move at all
    (4, "status_changed", "unconfirmed", "active", "2026-11-23 00:30"),  # confirmed: a join
    (1, "unsubscribed", "active", "unsubscribed", "2026-11-25 08:00"),
    (5, "imported", None, "unsubscribed", "2026-11-24 08:00"),  # imported already gone: no unsubscribe
    (2, "status_changed", "active", "bounced", "2026-12-07 07:10"),
    (3, "status_changed", "active", "complained", "2026-12-08 07:20"),
    (1, "resubscribed", "unsubscribed", "active", "2026-12-08 19:00"),
    (4, "erased", "active", None, "2026-12-09 08:00"),
]


def test_joins_unsubscribes_and_bounces_per_utc_week(store: Store) -> None:
    if store.dialect == "postgresql":  # a session far from UTC must not move an event to another day
        with store.write() as conn:
            name = conn.exec_driver_sql("SELECT current_database()").scalar_one()
            conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Kiritimati'")
        store.engine.dispose()
    with store.write() as conn:
        conn.execute(
            insert(subscriber_events),
            [
                event_row(who, kind, "admin", at=utc(when), from_status=old, to_status=new)
                for who, kind, old, new, when in LOG
            ],
        )

    weeks = audience_weeks(store, now=utc("2026-12-09 12:00"))

    assert weeks == [
        Week(dt.date(2026, 11, 16), joins=3, unsubscribes=0, bounces=0, complaints=0, active=3),
        Week(dt.date(2026, 11, 23), joins=1, unsubscribes=1, bounces=0, complaints=0, active=3),
        Week(dt.date(2026, 11, 30), joins=0, unsubscribes=0, bounces=0, complaints=0, active=3),
        Week(dt.date(2026, 12, 7), joins=1, unsubscribes=0, bounces=1, complaints=1, active=1),
    ]
    assert audience_weeks(store, now=utc("2026-12-23 12:00"))[-1] == Week(
        dt.date(2026, 12, 21), 0, 0, 0, 0, 1
    )


def test_the_weeks_end_with_the_active_count_of_the_list(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    known_campaigns(store, settings, tmp_path)  # ten imported; t5 bounced and w3 complained since

    weeks = audience_weeks(store)

    assert sum(w.joins for w in weeks) == 10
    assert (sum(w.bounces for w in weeks), sum(w.complaints for w in weeks)) == (1, 1)
    assert weeks[-1].active == 8


def test_the_report_command_writes_the_html_report(
    settings: Settings, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "r" * 40)
    monkeypatch.setattr(console, "width", 200)
    with open_store(settings) as store:
        known = known_campaigns(store, settings, tmp_path)
    target = tmp_path / "report.html"
    run = cli_invoker(project / "settings.toml")

    result = run("report", str(known.first), "--html", str(target), expect=None)

    assert result.exit_code == 0, result.output
    assert f"Wrote the HTML report to {target}" in " ".join(result.output.split())
    page = target.read_text(encoding="utf-8")
    assert page.count('role="img"') == 4
    assert "<script" not in page and not re.search(r"\s(src|href)=", page), "the file loads nothing"
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert policy and unescape(policy[1]).startswith("default-src 'none'; style-src 'sha256-")
    assert "style=" not in page, "no style attribute: the web page's CSP would refuse it"
    second = run("report", str(known.second), expect=None)
    assert "No delivery events for this campaign" in " ".join(second.output.split())


def test_an_html_report_that_cannot_be_written_is_a_clean_error(
    settings: Settings, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "r" * 40)
    with open_store(settings) as store:
        known = known_campaigns(store, settings, tmp_path)
    target = tmp_path / "no-such-folder" / "report.html"

    result = cli_invoker(project / "settings.toml")(
        "report", str(known.first), "--html", str(target), expect=None
    )

    assert result.exit_code == 1
    assert f"{target}: No such file or directory" in " ".join(result.output.split())
    assert not target.parent.exists()


def test_report_help_loads_neither_the_store_nor_the_web_stack(tmp_path: Path) -> None:
    assert not modules_after("report", "--help", cwd=tmp_path) & WEB_AND_STORE
