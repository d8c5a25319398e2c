"""Campaigns end to end in the library, on SQLite and PostgreSQL: freeze, claim, send, record, resume."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from multiprocessing import forkserver
from pathlib import Path

import pytest
from sqlalchemy import select, update

from pipeline.audience.subscribers import add_subscriber, unsubscribe
from pipeline.content.issue import load_issue
from pipeline.dispatch import campaigns, ledger
from pipeline.dispatch.dispatcher import Dispatcher
from pipeline.dispatch.ratelimit import RateLimiter, SharedPace
from pipeline.render.links import Links
from pipeline.render.renderer import render
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect
from pipeline.store.tables import deliveries, dispatch_runs
from pipeline.transports.sendgrid import SendGridTransport
from pipeline.transports.smtp import SmtpTransport
from tests.emulators.sendgrid import Fault, SendGridEmulator
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.store import TEST_KEY
from tests.mail import outbox_transport, unknowing_outbox
from tests.system import dead_pid, free_port
from tests.transport_helpers import ISSUE, dispatcher, new_campaign
from tests.web_support import readers


@pytest.fixture
def audience(store: Store, tmp_path: Path) -> list[str]:
    """Sixty active working moms, every campaign's audience here; their addresses."""
    return readers(store, tmp_path, 60, tags="working-mom")


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Small batches so a 60-person campaign takes several claims."""
    delivery = settings.delivery.model_copy(update={"batch_size": 7, "rate_per_second": 1e6})
    return settings.model_copy(update={"delivery": delivery})


def ledger_rows(store: Store, campaign_id: int) -> dict[str, str]:
    with store.read() as conn:
        rows = conn.execute(
            select(deliveries.c.email, deliveries.c.status).where(deliveries.c.campaign_id == campaign_id)
        )
        return {email: status for email, status in rows}


def delivered_in(settings: Settings, campaign: campaigns.Campaign) -> Counter[str]:
    """The addresses in ``campaign``'s outbox folder, counted: more than 1 is a resend."""
    folder = outbox_transport(settings).folder(campaign.id, campaign.issue_slug)
    return Counter(path.name.split("-", 1)[1].removesuffix(".eml") for path in folder.glob("*.eml"))


def test_starting_freezes_the_audience_into_one_ledger_row_each(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    campaign = new_campaign(store, fast)
    add_subscriber(store, "late@example.com", tags=["working-mom"])

    assert sorted(ledger_rows(store, campaign.id)) == sorted(audience)
    assert set(ledger_rows(store, campaign.id).values()) == {"queued"}
    issue_file = load_issue(fast.path(fast.newsletter.issues_dir) / ISSUE)
    again, created = campaigns.create_campaign(store, render(issue_file, fast), ("everyone",), "outbox")
    assert (again.id, created) == (campaign.id, False)


def test_a_campaign_reaches_everyone_once_and_a_second_run_sends_nothing(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    campaign = new_campaign(store, fast)
    report = dispatcher(store, fast, outbox_transport(fast)).run(campaign.id)

    assert report.counts == {"sent": 60}
    assert report.campaign.status == "finished"
    assert delivered_in(fast, campaign) == Counter(audience)
    with pytest.raises(Exception, match="finished, not running"):
        dispatcher(store, fast, outbox_transport(fast)).run(campaign.id)
    assert delivered_in(fast, campaign) == Counter(audience)


def test_an_unsubscribe_during_the_campaign_is_honoured_at_the_next_claim(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    campaign = new_campaign(store, fast)
    leaver = audience[-1]
    done = threading.Event()

    def unsubscribe_once(counts: Counter[str]) -> None:
        if not done.is_set():
            done.set()
            unsubscribe(store, leaver, actor="test")

    report = dispatcher(store, fast, outbox_transport(fast), on_progress=unsubscribe_once).run(campaign.id)

    assert report.counts == {"sent": 59, "skipped": 1}
    assert leaver not in delivered_in(fast, campaign)
    with store.read() as conn:
        error = conn.execute(select(deliveries.c.error).where(deliveries.c.email == leaver)).scalar_one()
    assert "unsubscribed" in error


def test_rows_a_dead_process_left_sending_are_in_doubt_never_resent_silently(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    """With a transport that cannot tell what became of them (SMTP, SendGrid without its events)."""
    campaign = new_campaign(store, fast)
    crashed = ledger.start_run(store, campaign.id)
    claim = ledger.claim(store, campaign.id, crashed, 7)  # marked sending, then the process "died"
    with store.write() as conn:
        conn.execute(update(dispatch_runs).where(dispatch_runs.c.id == crashed).values(pid=dead_pid()))

    report = dispatcher(store, fast, unknowing_outbox(fast)).run(campaign.id)

    doubtful = {row[2] for row in claim.rows}
    assert report.found_in_doubt == 7
    assert report.counts == {"sent": 53}
    assert not doubtful & set(delivered_in(fast, campaign))
    assert campaigns.report(store, campaign.id).counts["in_doubt"] == 7
    assert report.campaign.status == "finished"

    assert campaigns.resolve_in_doubt(store, campaign.id, resend=True) == 7
    assert campaigns.get_campaign(store, campaign.id).status == "running"
    dispatcher(store, fast, outbox_transport(fast)).run(campaign.id)
    assert delivered_in(fast, campaign) == Counter(audience)


def test_mark_sent_resolves_in_doubt_rows_without_sending(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    campaign = new_campaign(store, fast)
    crashed = ledger.start_run(store, campaign.id)
    ledger.claim(store, campaign.id, crashed, 5)
    ledger.end_run(store, crashed)
    dispatcher(store, fast, unknowing_outbox(fast)).run(campaign.id)

    assert campaigns.resolve_in_doubt(store, campaign.id, resend=False) == 5
    counts = campaigns.report(store, campaign.id).counts
    assert counts == {"sent": 60}
    assert sum(delivered_in(fast, campaign).values()) == 55


def test_pause_stops_after_the_batch_in_flight_and_resume_finishes(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    campaign = new_campaign(store, fast)

    def pause_after_first_batch(counts: Counter[str]) -> None:
        if counts["sent"] and campaigns.get_campaign(store, campaign.id).status == "running":
            campaigns.change_status(store, campaign.id, "pause", "test")

    report = dispatcher(store, fast, outbox_transport(fast), on_progress=pause_after_first_batch).run(
        campaign.id
    )
    assert report.end == "paused"
    assert report.counts["sent"] == 7

    campaigns.change_status(store, campaign.id, "resume")
    assert dispatcher(store, fast, outbox_transport(fast)).run(campaign.id).campaign.status == "finished"
    assert delivered_in(fast, campaign) == Counter(audience)


def test_cancel_marks_what_was_still_queued(store: Store, fast: Settings, audience: list[str]) -> None:
    campaign = new_campaign(store, fast)
    campaigns.change_status(store, campaign.id, "cancel", "wrong issue")
    assert set(ledger_rows(store, campaign.id).values()) == {"cancelled"}
    with pytest.raises(Exception, match="cannot resume"):
        campaigns.change_status(store, campaign.id, "resume")


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_pause_and_cancel_stop_a_sendgrid_send_that_answers_faster_than_the_pace(
    store: Store, fast: Settings, audience: list[str], action: str
) -> None:
    """Four requests in flight and a provider that answers at once: the dispatcher never waits for a
    batch, so it must look at the campaign before every claim, not only when it waits."""
    with SendGridEmulator(api_key="SG.pause") as emulator:
        sendgrid = fast.sendgrid.model_copy(update={"host": emulator.url, "concurrency": 4})
        settings = fast.model_copy(update={"sendgrid": sendgrid})
        campaign = new_campaign(store, settings)

        def operator(counts: Counter[str]) -> None:
            if counts["sent"] and campaigns.get_campaign(store, campaign.id).status == "running":
                campaigns.change_status(store, campaign.id, action, "by the test")

        transport = SendGridTransport(settings, "SG.pause")
        report = dispatcher(store, settings, transport, on_progress=operator).run(campaign.id)
        transport.close()
        delivered = sum(len(m.personalizations) for m in emulator.messages)

    assert report.end == {"pause": "paused", "cancel": "cancelled"}[action]
    # The batch whose progress triggered the action, plus at most the three others in flight then.
    assert report.in_flight_at_stop <= 3
    assert delivered == report.counts["sent"] <= 7 * 4
    left = campaigns.report(store, campaign.id).counts
    assert left[{"pause": "queued", "cancel": "cancelled"}[action]] == 60 - delivered
    assert not left["sending"]


@pytest.mark.parametrize("processes", [1, 2])
def test_stop_event_finishes_in_flight_batches_and_leaves_nothing_sending(
    store: Store, fast: Settings, audience: list[str], processes: int
) -> None:
    """On threads, or with worker processes (``delivery.processes``): no claim after the stop."""
    settings = fast.model_copy(update={"delivery": fast.delivery.model_copy(update={"processes": processes})})
    campaign = new_campaign(store, settings)
    stop = threading.Event()
    report = dispatcher(
        store, settings, outbox_transport(settings), stop=stop, on_progress=lambda _: stop.set()
    ).run(campaign.id)

    assert report.end == "interrupted"
    counts = campaigns.report(store, campaign.id).counts
    assert counts["sending"] == 0 and counts["in_doubt"] == 0
    assert counts["sent"] == report.counts["sent"] > 0
    assert counts["sent"] < 60
    assert (
        dispatcher(store, settings, outbox_transport(settings)).run(campaign.id).campaign.status == "finished"
    )
    assert delivered_in(settings, campaign) == Counter(audience)


def test_an_unreachable_smtp_server_returns_rows_to_the_queue(
    store: Store, fast: Settings, audience: list[str], smtp_server: SmtpServer
) -> None:
    campaign = new_campaign(store, fast)
    down = fast.smtp.model_copy(
        update={"host": "127.0.0.1", "port": free_port(), "security": "none", "timeout": 2.0}
    )
    report = dispatcher(store, fast, SmtpTransport(fast.model_copy(update={"smtp": down}), None)).run(
        campaign.id
    )
    assert report.end == "transport unavailable" and report.detail
    assert set(ledger_rows(store, campaign.id).values()) == {"queued"}

    up = down.model_copy(update={"port": smtp_server.port})
    transport = SmtpTransport(fast.model_copy(update={"smtp": up}), None)
    assert dispatcher(store, fast, transport).run(campaign.id).campaign.status == "finished"
    transport.close()
    assert Counter(smtp_server.handler.recipients()) == Counter(audience)


def test_a_429_and_503_storm_through_sendgrid_still_reaches_everyone_once(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    with SendGridEmulator(api_key="SG.dispatch") as emulator:
        emulator.inject_every(2, Fault(status=429, headers={"X-RateLimit-Reset": "0"}))
        emulator.inject(Fault(status=503), Fault(status=503))
        config = fast.sendgrid.model_copy(update={"host": emulator.url, "concurrency": 3, "max_retries": 8})
        transport = SendGridTransport(
            fast.model_copy(update={"sendgrid": config}), "SG.dispatch", sleep=lambda s: None
        )
        report = dispatcher(store, fast, transport).run(new_campaign(store, fast).id)
        assert report.campaign.status == "finished", report
        assert Counter(emulator.recipients()) == Counter(audience)
        assert transport.stats.retries >= 4


def test_two_workers_on_one_campaign_never_send_anyone_twice(
    store: Store, fast: Settings, audience: list[str], smtp_server: SmtpServer
) -> None:
    campaign = new_campaign(store, fast)
    smtp = fast.smtp.model_copy(update={"host": "127.0.0.1", "port": smtp_server.port, "security": "none"})
    workers = [SmtpTransport(fast.model_copy(update={"smtp": smtp}), None) for _ in range(2)]
    threads = [threading.Thread(target=dispatcher(store, fast, t).run, args=(campaign.id,)) for t in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for transport in workers:
        transport.close()
    assert Counter(smtp_server.handler.recipients()) == Counter(audience)
    assert campaigns.finish_if_done(store, campaign.id).status == "finished"


def test_the_rate_is_the_whole_campaigns_across_senders_with_their_own_connections(
    store: Store, store_url: str, project: Path, fast: Settings, audience: list[str]
) -> None:
    """Two senders (each its own engine, as two processes or machines would have) at 30/s share one
    pace kept in the store: together they take as long as one would, not half as long. (A lower bound
    on the time: a busy machine can only make it slower.)"""
    rate = 30.0
    settings = fast.model_copy(
        update={"delivery": fast.delivery.model_copy(update={"rate_per_second": rate})}
    )
    campaign = new_campaign(store, settings)
    engines = [
        connect(store_url, TEST_KEY, segments_file=project / "subscribers" / "segments.toml")
        for _ in range(2)
    ]
    senders = [
        Dispatcher(engine, settings, outbox_transport(settings), Links(settings, engine.signer))
        for engine in engines
    ]
    started = time.monotonic()
    threads = [threading.Thread(target=sender.run, args=(campaign.id,)) for sender in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    for engine in engines:
        engine.close()

    assert delivered_in(settings, campaign) == Counter(audience)
    # The first batch of 7 goes at once (the burst); the other 53 are paced at 30/s in all.
    assert elapsed >= 0.95 * (60 - 7) / rate, f"{60 / elapsed:.0f}/s together, the limit is {rate:.0f}/s"


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stop_against_a_server_that_hangs_ends_after_stop_seconds_with_only_the_handover_in_doubt(
    store: Store, fast: Settings, audience: list[str], smtp_server: SmtpServer, processes: int
) -> None:
    """The server takes 20 s per message (the client's timeout is 30 s); SIGTERM comes; after
    ``stop_seconds`` the send is cut short, long before the server would have answered. On threads the
    connection is cut: the one message mid-DATA is in doubt, the rest of its batch goes back to the
    queue. Worker processes are killed: their whole batches are in doubt (nobody knows how far they got)."""
    smtp_server.handler.data_seconds = 20.0
    smtp = fast.smtp.model_copy(
        update={"host": "127.0.0.1", "port": smtp_server.port, "security": "none", "connections": 1}
    )
    delivery = fast.delivery.model_copy(update={"stop_seconds": 0.5, "processes": processes})
    settings = fast.model_copy(update={"smtp": smtp, "delivery": delivery})
    campaign = new_campaign(store, settings)
    transport = SmtpTransport(settings, None)
    stop = threading.Event()

    def sigterm_once_a_batch_is_out() -> None:
        while not campaigns.report(store, campaign.id).counts["sending"]:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=sigterm_once_a_batch_is_out, daemon=True).start()
    started = time.monotonic()
    report = dispatcher(store, settings, transport, stop=stop).run(campaign.id)
    elapsed = time.monotonic() - started
    transport.close()

    assert report.end == "interrupted"
    assert elapsed < 10.0, f"the stop took {elapsed:.1f} s"
    counts = campaigns.report(store, campaign.id).counts
    if processes == 1:
        assert counts == {"in_doubt": 1, "queued": 59}, counts
    else:  # each worker had its 7-row batch out, or the first one only
        assert counts["in_doubt"] in (7, 14) and counts["queued"] == 60 - counts["in_doubt"], counts


def test_the_pace_is_paid_only_for_rows_that_are_waiting(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    """60 recipients at 10/s with a burst of one 7-row batch: 5.3 s of pacing, none for an empty queue."""
    elapsed = [0.0]
    limiter = RateLimiter(
        10.0, burst=7, clock=lambda: elapsed[0], sleep=lambda s: elapsed.__setitem__(0, elapsed[0] + s)
    )
    campaign = new_campaign(store, fast)
    report = dispatcher(store, fast, outbox_transport(fast), limiter=limiter).run(campaign.id)
    assert report.counts == {"sent": 60}
    assert elapsed[0] == pytest.approx((60 - 7) / 10.0)


def test_the_shared_pace_in_the_store_charges_the_same_as_the_bucket_of_one_process(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    """The default pace (the campaign's row) on a clock that moves only when it sleeps: the same 5.3 s."""
    start = dt.datetime(2027, 1, 4, 12, 0, tzinfo=dt.UTC)
    elapsed = [0.0]
    campaign = new_campaign(store, fast)
    pace = SharedPace(
        store,
        campaign.id,
        10.0,
        burst=7,
        now=lambda: start + dt.timedelta(seconds=elapsed[0]),
        sleep=lambda s: elapsed.__setitem__(0, elapsed[0] + s),
    )
    report = dispatcher(store, fast, outbox_transport(fast), limiter=pace).run(campaign.id)
    assert report.counts == {"sent": 60}
    assert elapsed[0] == pytest.approx((60 - 7) / 10.0)


def test_a_stop_that_lands_while_a_claim_waits_for_the_pace_is_reported_as_interrupted(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    """SIGTERM during the pause before a claim: nothing more is claimed, and the run says why it ended."""
    stop = threading.Event()
    elapsed = [0.0]

    def signal_while_pacing(seconds: float) -> None:
        elapsed[0] += seconds
        stop.set()

    limiter = RateLimiter(10.0, burst=7, clock=lambda: elapsed[0], sleep=signal_while_pacing)
    campaign = new_campaign(store, fast)
    report = dispatcher(store, fast, outbox_transport(fast), limiter=limiter, stop=stop).run(campaign.id)

    assert report.end == "interrupted"
    assert report.counts == {"sent": 7}, "the burst went; the paced claim did not"
    assert campaigns.report(store, campaign.id).counts == {"sent": 7, "queued": 53}


def test_a_pause_that_lands_while_a_claim_waits_for_the_pace_sends_nothing_more(
    store: Store, fast: Settings, audience: list[str]
) -> None:
    """The operator pauses while the dispatcher sleeps out the pace before its next claim: the claim
    itself reads the campaign's status, so that batch stays queued (it used to go out, read too early)."""
    elapsed = [0.0]
    campaign = new_campaign(store, fast)

    def pause_while_pacing(seconds: float) -> None:
        elapsed[0] += seconds
        campaigns.change_status(store, campaign.id, "pause", "by the test")

    limiter = RateLimiter(10.0, burst=7, clock=lambda: elapsed[0], sleep=pause_while_pacing)
    report = dispatcher(store, fast, outbox_transport(fast), limiter=limiter).run(campaign.id)

    assert report.end == "paused"
    assert report.counts == {"sent": 7}, "the burst went; the paced claim did not"
    assert campaigns.report(store, campaign.id).counts == {"sent": 7, "queued": 53}
    assert len(delivered_in(fast, campaign)) == 7


def test_worker_processes_reach_everyone_once_through_sendgrid_faults_included(
    store: Store, fast: Settings, audience: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delivery.processes`` > 1: links signed and requests sent by worker processes, which open their
    own transport from the settings and the secrets this process has at the start of the run, even
    when the forkserver they come from was started before the key was set (a long-lived scheduler)."""
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    forkserver.ensure_running()
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.dispatch")
    with SendGridEmulator(api_key="SG.dispatch") as emulator:
        emulator.inject_every(3, Fault(status=429, headers={"Retry-After": "0"}))
        emulator.inject(Fault(status=503))
        sendgrid = fast.sendgrid.model_copy(update={"host": emulator.url, "max_retries": 8})
        delivery = fast.delivery.model_copy(update={"processes": 2})
        settings = fast.model_copy(update={"sendgrid": sendgrid, "delivery": delivery})
        campaign = new_campaign(store, settings)
        report = dispatcher(store, settings, SendGridTransport(settings, "SG.dispatch")).run(campaign.id)

        assert report.counts == {"sent": 60} and report.campaign.status == "finished"
        assert Counter(emulator.recipients()) == Counter(audience)
        sent = [p for message in emulator.messages for p in message.personalizations]
    with store.read() as conn:
        rows = conn.execute(
            select(deliveries.c.email, deliveries.c.subscriber_id).where(
                deliveries.c.campaign_id == campaign.id
            )
        )
        subscriber_ids = {email: subscriber_id for email, subscriber_id in rows}
    links = Links(settings, store.signer)  # the workers signed with the same key
    for personalization in sent:
        email = personalization["to"][0]["email"]
        assert personalization["substitutions"]["%unsubscribe_url%"] == links.unsubscribe(
            subscriber_ids[email], email
        )
