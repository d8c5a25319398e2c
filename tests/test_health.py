"""A running campaign whose bounce or complaint rate passes its limit pauses itself, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.cli.context import console
from pipeline.dispatch import campaigns
from pipeline.feedback import health
from pipeline.feedback.events import record_events
from pipeline.settings import Settings, WebSettings
from pipeline.store.engine import Store, open_store
from pipeline.web import create_app
from tests.emulators.sendgrid_events import EventKey, event, post_events
from tests.fixtures.project import cli_invoker
from tests.fixtures.store import statements
from tests.fixtures.web import OpenClient
from tests.transport_helpers import new_campaign
from tests.web_support import Clock, mark_sent, readers, send_everything, web_settings

REASON = "paused automatically: bounce rate 15 % (3 of 20 sent) passed bounce_rate_limit 10 %"
LIMITS = WebSettings(bounce_rate_limit=0.02, complaint_rate_limit=0.001, health_min_sent=100)


@pytest.mark.parametrize(
    ("sent", "bounces", "complaints", "paused"),
    [
        (99, 50, 5, False),  # too young to judge, however bad
        (100, 2, 0, False),  # exactly at the limit: not past it
        (100, 3, 0, True),
        (1000, 1, 1, False),
        (1000, 0, 2, True),
    ],
)
def test_the_verdict(sent: int, bounces: int, complaints: int, paused: bool) -> None:
    reason = health.verdict(health.Health(1, sent, bounces, complaints), LIMITS)

    assert (reason is not None) == paused


def test_the_reason_names_the_rate_the_counts_and_the_limit() -> None:
    assert health.verdict(health.Health(1, 1000, 31, 0), LIMITS) == (
        "paused automatically: bounce rate 3.1 % (31 of 1,000 sent) passed bounce_rate_limit 2 %"
    )
    assert health.verdict(health.Health(1, 1000, 0, 2), LIMITS) == (
        "paused automatically: complaint rate 0.2 % (2 of 1,000 sent) passed complaint_rate_limit 0.1 %"
    )


@pytest.fixture
def guarded(settings: Settings, key: EventKey) -> Settings:
    """Limits low enough for a few dozen readers to pass them, and the webhook trusting ``key``."""
    return web_settings(settings, key, health_min_sent=20, bounce_rate_limit=0.1, complaint_rate_limit=0.05)


@pytest.fixture
def app(guarded: Settings, store: Store) -> Starlette:
    """The webhook the bounces arrive at, with the ``guarded`` limits."""
    return create_app(guarded, store)


def bounces(campaign_id: int, sent: list[tuple[int, int]], kind: str = "bounce") -> list[dict[str, object]]:
    return [
        event(kind, f"reader{i:04d}@example.com", campaign_id=campaign_id, subscriber_id=s)
        for i, (_, s) in enumerate(sent)
    ]


def test_bounces_arriving_by_webhook_pause_a_running_campaign(
    client: TestClient, guarded: Settings, store: Store, key: EventKey, tmp_path: Path
) -> None:
    readers(store, tmp_path, 40)
    campaign = new_campaign(store, guarded)
    sent = mark_sent(store, campaign.id, 20)

    calm = post_events(client, bounces(campaign.id, sent[:2]), key)
    assert calm.json()["paused_campaigns"] == 0
    assert campaigns.get_campaign(store, campaign.id).status == "running"

    storm = post_events(client, bounces(campaign.id, sent[2:3]), key)

    assert storm.json()["paused_campaigns"] == 1
    paused = campaigns.get_campaign(store, campaign.id)
    assert paused.status == "paused"
    assert paused.status_reason == REASON


def test_complaints_pause_it_too(
    client: TestClient, guarded: Settings, store: Store, key: EventKey, tmp_path: Path
) -> None:
    readers(store, tmp_path, 40)
    campaign = new_campaign(store, guarded)
    sent = mark_sent(store, campaign.id, 20)

    post_events(client, bounces(campaign.id, sent[:2], "spamreport"), key)

    assert campaigns.get_campaign(store, campaign.id).status_reason.startswith(  # type: ignore[union-attr]
        "paused automatically: complaint rate 10 %"
    )


def test_too_few_sent_to_judge_and_campaigns_not_running_are_left_alone(
    client: TestClient, guarded: Settings, store: Store, key: EventKey, tmp_path: Path
) -> None:
    readers(store, tmp_path, 40)
    young = new_campaign(store, guarded)
    young_sent = mark_sent(store, young.id, 10)
    finished = new_campaign(store, guarded, ("working-moms", "everyone"))
    send_everything(store, guarded, finished.id)

    post_events(client, bounces(young.id, young_sent), key)  # 100 % of 10: too few to judge
    post_events(client, bounces(finished.id, young_sent), key)  # 10 of 40, but it is done

    assert campaigns.get_campaign(store, young.id).status == "running"
    assert campaigns.get_campaign(store, finished.id).status == "finished"
    assert health.enforce(store, finished.id, guarded.web) is None


def judged_healthy(
    store: Store, settings: Settings, tmp_path: Path, clock: Clock
) -> tuple[int, list[tuple[int, int]], health.Watch]:
    """A running campaign sent to 20 readers, one of whom bounced, judged healthy by a new watch:
    (its id, its rows sent, the watch)."""
    readers(store, tmp_path, 40)
    campaign = new_campaign(store, settings)
    sent = mark_sent(store, campaign.id, 20)
    watch = health.Watch(settings.web, fresh_seconds=60, clock=clock)
    record_events(store, bounces(campaign.id, sent[:1]))  # 1 of 20
    assert watch.enforce(store, [(campaign.id, "bounce")]) == []
    return campaign.id, sent, watch


def test_a_campaign_found_healthy_is_judged_again_by_its_next_bounce_or_a_minute_later(
    guarded: Settings, store: Store, tmp_path: Path
) -> None:
    """The watch spares the webhook the ledger count of a healthy campaign's posts of opens and
    clicks, never a post with a bounce, and never trusts a verdict older than ``fresh_seconds``."""
    clock = Clock(1000.0)
    campaign_id, sent, watch = judged_healthy(store, guarded, tmp_path, clock)
    record_events(
        store, bounces(campaign_id, sent[1:3])
    )  # 3 of 20 now, by the mailbox: not seen by the watch

    assert watch.enforce(store, [(campaign_id, "open"), (campaign_id, "click")]) == []
    assert campaigns.get_campaign(store, campaign_id).status == "running"
    clock.advance(61)
    assert watch.enforce(store, [(campaign_id, "open")]) == [(campaign_id, REASON)]
    assert campaigns.get_campaign(store, campaign_id).status == "paused"


def test_a_bounce_is_judged_at_once_and_a_resumed_unhealthy_campaign_pauses_at_its_next_event(
    guarded: Settings, store: Store, tmp_path: Path
) -> None:
    campaign_id, sent, watch = judged_healthy(store, guarded, tmp_path, Clock(1000.0))
    record_events(store, bounces(campaign_id, sent[1:3]))

    assert watch.enforce(store, [(campaign_id, "open"), (campaign_id, "bounce")]) == [(campaign_id, REASON)]
    campaigns.change_status(store, campaign_id, "resume")
    assert watch.enforce(store, [(campaign_id, "delivered")]) == [(campaign_id, REASON)]


def ledger_counts(seen: list[str]) -> list[str]:
    """The statements among ``seen`` that count a campaign's ledger rows."""
    return [sql for sql in seen if "FROM deliveries" in sql and "count(" in sql.lower()]


def test_a_bounce_that_leaves_the_rate_within_its_limit_on_the_last_count_reads_no_ledger(
    guarded: Settings, store: Store, tmp_path: Path
) -> None:
    """A campaign's sent rows only grow, so the count last seen is a floor: a big campaign's ledger is
    not counted again at every post that brings a bounce, only once the bounces pass the limit on it."""
    campaign_id, sent, watch = judged_healthy(store, guarded, tmp_path, Clock(1000.0))
    record_events(store, bounces(campaign_id, sent[1:2]))  # 2 of 20: at the limit, not past it

    with statements(store) as within:
        assert watch.enforce(store, [(campaign_id, "bounce")]) == []
    record_events(store, bounces(campaign_id, sent[2:3]))  # 3 of 20: past it
    with statements(store) as past:
        assert watch.enforce(store, [(campaign_id, "bounce")]) == [(campaign_id, REASON)]

    assert ledger_counts(within) == []
    assert len(ledger_counts(past)) == 1


def test_bounces_past_the_limit_on_the_last_count_are_judged_on_the_ledger_counted_again(
    guarded: Settings, store: Store, tmp_path: Path
) -> None:
    campaign_id, sent, watch = judged_healthy(store, guarded, tmp_path, Clock(1000.0))
    sent += mark_sent(store, campaign_id, 20)
    record_events(store, bounces(campaign_id, sent[1:3]))  # 3 of 40: 15 % of the 20 counted before

    assert watch.enforce(store, [(campaign_id, "bounce")]) == []
    assert campaigns.get_campaign(store, campaign_id).status == "running"
    record_events(store, bounces(campaign_id, sent[3:5]))  # 5 of 40

    assert watch.enforce(store, [(campaign_id, "bounce")]) == [
        (campaign_id, "paused automatically: bounce rate 12.5 % (5 of 40 sent) passed bounce_rate_limit 10 %")
    ]


def test_campaigns_show_tells_why_it_paused(
    guarded: Settings,
    key: EventKey,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    open_client: OpenClient,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k" * 40)
    monkeypatch.setattr(console, "width", 200)
    with open_store(guarded) as store:  # the project's own store: the command below reads it
        client = open_client(create_app(guarded, store))
        readers(store, tmp_path, 30)
        campaign = new_campaign(store, guarded)
        post_events(client, bounces(campaign.id, mark_sent(store, campaign.id, 20)[:5]), key)

    result = cli_invoker(project / "settings.toml")("campaigns", "show", str(campaign.id), expect=None)

    assert result.exit_code == 0, result.output
    assert "status: paused (paused automatically: bounce rate 25 % (5 of 20 sent)" in result.output
