"""``newsletter report``: a campaign's sends beside what SendGrid reported, per segment, and its top links."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.audience.subscribers import find_subscriber, unsubscribe
from pipeline.cli.context import console
from pipeline.feedback.events import record_events
from pipeline.feedback.reports import Count, SegmentStats, campaign_stats
from pipeline.settings import Settings
from pipeline.store.engine import Store, open_store
from tests.emulators.sendgrid_events import event
from tests.fixtures.project import cli_invoker
from tests.transport_helpers import new_campaign
from tests.web_support import readers, send_everything

A, B = "https://example.org/a", "https://example.org/b"


def sid(store: Store, email: str) -> int:
    subscriber = find_subscriber(store, email)
    assert subscriber is not None
    return subscriber.id


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
    assert "toddlers 10 9 1 0 2 2 (3) 1 (3)" in lines
    assert "working-moms 10 9 1 1 0 1 (1) 1 (1)" in lines
    assert "all 20 18 2 1 2 3 (4) 2 (4)" in lines
    assert f"3 2 {A}" in lines and f"1 1 {B}" in lines


def test_report_of_an_unknown_campaign_is_a_clean_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "r" * 40)

    result = cli_invoker(project / "settings.toml")("report", "42", expect=None)

    assert result.exit_code == 1
    assert "campaign 42: no such campaign" in result.output
