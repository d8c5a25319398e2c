"""Bounces and complaints for SMTP senders: VERP return paths, the mailbox read by `newsletter bounces`."""

from __future__ import annotations

import logging
import mailbox
import re
import tomllib
from collections import Counter
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from pipeline.audience.subscribers import (
    add_subscriber,
    find_subscriber,
    list_subscribers,
    subscriber_log,
    unsubscribe,
)
from pipeline.dispatch import campaigns
from pipeline.feedback import dsn
from pipeline.feedback.bounces import process_mailbox, tick_chore
from pipeline.feedback.mailbox import MaildirMailbox, uid_set
from pipeline.feedback.reports import campaign_stats
from pipeline.render.links import Links
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect
from pipeline.store.statuses import CampaignStatus, SubscriberStatus
from pipeline.store.tables import delivery_events
from pipeline.tokens import Signer
from pipeline.transports.returnpath import PURPOSE, ReturnPath
from pipeline.transports.smtp import SmtpTransport
from tests.bounce_support import FIXTURES, fill, sample_message
from tests.fixtures.imap import ImapAccount
from tests.fixtures.project import CliInvoker, cli_invoker
from tests.fixtures.smtp import Received, SmtpServer
from tests.fixtures.store import TEST_KEY, snapshot
from tests.sendproc import dump_settings
from tests.transport_helpers import ISSUE, make_batch, new_campaign
from tests.web_support import mark_sent, web_settings

KEY = "bounce-tests-signing-key-0123456789abcdef"
RETURN_PATH = "bounces@news.example.org"


def with_bounces(settings: Settings, **bounces: object) -> Settings:
    return settings.model_copy(update={"bounces": settings.bounces.model_copy(update=bounces)})


def smtp_to(settings: Settings, server: SmtpServer) -> Settings:
    smtp = settings.smtp.model_copy(update={"host": server.host, "port": server.port, "security": "none"})
    return settings.model_copy(update={"smtp": smtp})


# -- VERP: the envelope sender names the message --------------------------------------------------


def test_each_message_goes_out_from_its_own_signed_return_path(
    settings: Settings, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)
    verp = with_bounces(smtp_to(settings, smtp_server), return_path=RETURN_PATH)
    batch = make_batch(verp, ["ana@example.com", "Bo@Example.com"], first_id=41)
    transport = SmtpTransport(verp, None)
    transport.send(batch)
    transport.close()

    senders = {r.rcpt_tos[0]: r.mail_from for r in smtp_server.handler.received}
    path = ReturnPath(RETURN_PATH, Signer(KEY.encode()))
    for delivery_id, email in ((41, "ana@example.com"), (42, "Bo@Example.com")):
        token = path.token_in(senders[email])
        assert token is not None and senders[email] == f"bounces+{token}@news.example.org"
        # Case-proof: a relay that lower- or upper-cases the local part changes nothing.
        assert path.signer.verify_compact(PURPOSE, token.upper(), address=email) == delivery_id
    assert senders["ana@example.com"] != senders["Bo@Example.com"]


def test_without_a_return_path_and_for_test_copies_the_sender_address_is_the_envelope_sender(
    settings: Settings, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)
    plain = smtp_to(settings, smtp_server)
    verp = with_bounces(plain, return_path=RETURN_PATH)
    test_copy = make_batch(verp, ["ed@example.com"], campaign_id=None, first_id=0)
    for chosen, batch in ((plain, make_batch(plain, ["ana@example.com"])), (verp, test_copy)):
        transport = SmtpTransport(chosen, None)
        transport.send(batch)
        transport.close()

    assert [r.mail_from for r in smtp_server.handler.received] == [settings.sender.from_email] * 2


# -- reading reports: every provider's shape -------------------------------------------------------

VERP = "bounces+abc234@news.example.org"
READER = "ana@example.net"
SENT_ID = "<sample.1@news.example.org>"
EXPECTED = {
    "gmail-hard.eml": ("delivery-status", dsn.HARD, "5.1.1"),
    "gmail-full.eml": ("delivery-status", dsn.SOFT, "5.2.2"),
    "gmail-delayed.eml": ("delivery-status", dsn.DEFERRED, "4.4.1"),
    "outlook-hard.eml": ("delivery-status", dsn.HARD, "5.1.10"),
    "yahoo-notice.eml": ("notice", dsn.HARD, "5.0.0"),
    "postfix-hard.eml": ("delivery-status", dsn.HARD, "5.1.1"),
    "postfix-soft.eml": ("delivery-status", dsn.SOFT, "4.4.1"),
    "postfix-blocked.eml": ("delivery-status", dsn.BLOCKED, "5.7.9"),
    "yahoo-arf.eml": ("feedback-report", dsn.COMPLAINT, None),
    "outlook-arf.eml": ("feedback-report", dsn.COMPLAINT, None),
    "outlook-jmrp.eml": ("jmrp", dsn.COMPLAINT, None),
}
NO_REPORT = {"auto-reply.eml"}


def filled(name: str, *, verp: str = VERP, rcpt: str = READER, sent: bytes | None = None) -> bytes:
    return fill(name, verp=verp, rcpt=rcpt, sent=sent or sample_message(rcpt, message_id=SENT_ID))


def test_every_fixture_is_expected_to_read_one_way_or_another() -> None:
    assert set(FIXTURES) == set(EXPECTED) | NO_REPORT


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_provider_shape_reads_as_what_happened_and_names_the_message(name: str, newline: bytes) -> None:
    form, kind, status = EXPECTED[name]
    report = dsn.read_report(filled(name).replace(b"\n", newline))

    assert report.form == form
    assert [(f.kind, f.status) for f in report.findings] == [(kind, status)]
    assert report.returned_message_id == SENT_ID
    if name != "outlook-jmrp.eml":  # the older JMRP form keeps no envelope sender
        assert VERP in report.envelope
    if kind != dsn.COMPLAINT or name == "outlook-jmrp.eml":
        assert report.findings[0].addresses[0] == READER
    else:  # Yahoo leaves the recipient out, Microsoft redacts it: only VERP or the copy can tell
        assert report.findings[0].addresses == ()


def test_mail_that_is_no_report_is_not_read_as_one() -> None:
    with pytest.raises(dsn.NotAReport, match="not a delivery status notification"):
        dsn.read_report(filled("auto-reply.eml"))


@pytest.mark.parametrize(
    ("action", "status", "kind"),
    [
        ("failed", "5.1.1", dsn.HARD),  # no such mailbox
        ("failed", "5.1.10", dsn.HARD),  # Exchange's recipient not found
        ("failed", "5.2.1", dsn.HARD),  # mailbox disabled
        ("failed", "5.4.4", dsn.HARD),  # no route to the domain
        ("failed", "5.0.0", dsn.HARD),  # a relay's code for "550 no such user" without an enhanced code
        ("failed", "5.1.7", dsn.BLOCKED),  # about our own sender address, not theirs
        ("failed", "5.2.2", dsn.SOFT),  # mailbox full
        ("failed", "5.7.1", dsn.BLOCKED),  # policy: the address may be fine
        ("failed", "5.7.26", dsn.BLOCKED),  # DMARC: our authentication, not their address
        ("failed", "5.3.4", dsn.BLOCKED),  # message too big
        ("failed", "4.2.2", dsn.SOFT),
        ("failed", "4.4.1", dsn.SOFT),
        ("Delayed", "4.4.1", dsn.DEFERRED),
        ("delivered", "2.0.0", dsn.DELIVERED),
        ("expanded", "2.0.0", dsn.DELIVERED),
        ("x-unheard-of", "5.1.1", dsn.OTHER),
    ],
)
def test_only_codes_about_the_address_make_a_hard_bounce(action: str, status: str, kind: str) -> None:
    assert dsn.classify(action, status) == kind


def test_a_failure_without_a_status_code_is_no_report_to_act_on() -> None:
    broken = filled("postfix-hard.eml").replace(b"Status: 5.1.1\n", b"")
    with pytest.raises(dsn.NotAReport, match="without a status code"):
        dsn.read_report(broken)


def test_utf8_delivery_status_of_rfc_6533_reads_like_the_ascii_one() -> None:
    utf8 = filled("postfix-hard.eml").replace(
        b"Content-Type: message/delivery-status", b"Content-Type: message/global-delivery-status"
    )
    report = dsn.read_report(utf8)
    assert [(f.kind, f.status, f.addresses) for f in report.findings] == [(dsn.HARD, "5.1.1", (READER,))]


def test_a_mailer_daemon_notice_without_an_smtp_reply_is_no_report() -> None:
    text = filled("yahoo-notice.eml").replace(b"554: delivery error", b"delivery error")
    with pytest.raises(dsn.NotAReport, match="without an SMTP reply"):
        dsn.read_report(text)


# -- recording: tied to the message, stored once, statuses changed by the webhook's rules ----------


@dataclass(frozen=True)
class Sent:
    """One message of a campaign as the ledger recorded it, and its copy as it went out."""

    campaign_id: int
    delivery_id: int
    subscriber_id: int
    email: str
    verp: str
    message: bytes


def send(store: Store, settings: Settings, issue: str = ISSUE) -> dict[str, Sent]:
    """A campaign of ``issue`` to everyone, recorded as sent (Message-ID ``<mID@x>``), by address."""
    campaign = new_campaign(store, settings, issue=issue)
    links = Links(settings, store.signer)
    path = ReturnPath(RETURN_PATH, store.signer)
    sent = {}
    for delivery_id, subscriber_id in mark_sent(store, campaign.id, 1000):
        email = next(s.email for s in list_subscribers(store) if s.id == subscriber_id)
        message = sample_message(
            email, message_id=f"<m{delivery_id}@x>", unsubscribe=links.unsubscribe(subscriber_id, email)
        )
        verp = path.for_delivery(delivery_id, email)
        sent[email] = Sent(campaign.id, delivery_id, subscriber_id, email, verp, message)
    return sent


def bounce(name: str, copy: Sent, **changes: object) -> bytes:
    """Fixture ``name`` about ``copy``; ``verp=`` and ``sent=`` change what the report carries."""
    verp = str(changes.get("verp", copy.verp))
    sent = changes.get("sent", copy.message)
    assert isinstance(sent, bytes)
    return fill(name, verp=verp, rcpt=str(changes.get("rcpt", copy.email)), sent=sent)


def maildir(tmp_path: Path, *messages: bytes) -> MaildirMailbox:
    folder = tmp_path / "bounces"
    folder.parent.mkdir(parents=True, exist_ok=True)
    box = mailbox.Maildir(folder, create=True)
    for message in messages:
        box.add(message)
    return MaildirMailbox(folder, "Processed")


def status(store: Store, email: str) -> str:
    found = find_subscriber(store, email)
    assert found is not None
    return found.status


def events(store: Store) -> list[tuple[str, int | None, int | None]]:
    e = delivery_events.c
    with store.read() as conn:
        query = select(e.kind, e.campaign_id, e.subscriber_id).order_by(e.id)
        return [(kind, campaign, subscriber) for kind, campaign, subscriber in conn.execute(query)]


@pytest.fixture
def readers(store: Store) -> list[str]:
    emails = ["ana@example.com", "bo@example.com", "cy@example.com", "di@example.com", "ed@example.com"]
    for email in emails:
        add_subscriber(store, email, name=email.split("@")[0].title())
    return emails


@pytest.fixture
def verp_settings(settings: Settings) -> Settings:
    return with_bounces(settings, return_path=RETURN_PATH, mailbox="maildir", path=Path("bounces"))


def test_a_report_is_tied_by_verp_then_message_id_then_its_link_then_its_address(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    ana, bo, cy, di = (sent[email] for email in readers[:4])
    plain = RETURN_PATH  # a report that lost its token (or was sent before VERP was on)
    reports = [
        bounce("postfix-hard.eml", ana),
        bounce("gmail-hard.eml", bo, verp=plain),
        bounce("outlook-hard.eml", cy, verp=plain, sent=strip(cy.message, b"Message-ID")),
        bounce("gmail-hard.eml", di, verp=plain, sent=strip(di.message, b"Message-ID", b"List-Unsubscribe")),
    ]
    run = process_mailbox(store, verp_settings, maildir(tmp_path, *reports))

    assert run.counts == Counter(hard=4) and run.status_changes == 4
    assert {status(store, email) for email in readers[:4]} == {SubscriberStatus.BOUNCED}
    assert status(store, readers[4]) == SubscriberStatus.ACTIVE
    campaign = ana.campaign_id
    assert sorted(events(store), key=str) == sorted(
        [
            ("bounce", campaign, ana.subscriber_id),  # VERP: the message itself
            ("bounce", campaign, bo.subscriber_id),  # the returned Message-ID: the message too
            ("bounce", None, cy.subscriber_id),  # the signed unsubscribe link: the person only
            ("bounce", None, di.subscriber_id),  # the Final-Recipient address: the person only
        ],
        key=str,
    )


def strip(message: bytes, *names: bytes) -> bytes:
    """``message`` without the header lines ``names``."""
    return b"".join(
        line
        for line in message.splitlines(keepends=True)
        if not any(line.startswith(n + b":") for n in names)
    )


def test_a_forged_or_reused_token_names_nobody(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    ana = sent["ana@example.com"]
    forger = ReturnPath(RETURN_PATH, Signer(b"somebody-else-s-key-0123456789abcdef"))
    forged = forger.for_delivery(ana.delivery_id, ana.email)
    reused = ReturnPath(RETURN_PATH, store.signer).for_delivery(ana.delivery_id, "bo@example.com")
    anonymous = sample_message("x@example.org")  # no Message-ID, no link: only the token could tell
    reports = [
        bounce("postfix-hard.eml", ana, verp=verp, rcpt="x@example.org", sent=anonymous).replace(
            b"Message-Id: <",
            f"Message-Id: <{n}.".encode(),  # two reports, each with its own id
        )
        for n, verp in enumerate((forged, reused))
    ]
    run = process_mailbox(store, verp_settings, maildir(tmp_path, *reports))

    assert status(store, ana.email) == SubscriberStatus.ACTIVE
    assert run.counts == Counter() and run.ignored == Counter({"nobody on the list": 2})


def test_a_complaint_is_final_and_a_bounce_never_brings_anyone_back(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    ana, bo = sent["ana@example.com"], sent["bo@example.com"]
    unsubscribe(store, bo.email)
    reports = [bounce("yahoo-arf.eml", ana), bounce("outlook-jmrp.eml", bo)]
    run = process_mailbox(store, verp_settings, maildir(tmp_path, *reports))
    later = process_mailbox(store, verp_settings, maildir(tmp_path / "later", bounce("gmail-hard.eml", ana)))

    assert run.counts == Counter(complaints=2) and later.counts == Counter(hard=1)
    assert (
        status(store, ana.email) == SubscriberStatus.COMPLAINED
    )  # not bounced over it: a complaint is final
    assert status(store, bo.email) == SubscriberStatus.COMPLAINED
    assert later.status_changes == 0


def test_soft_bounces_make_a_bounce_only_in_a_row_over_the_last_messages(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    issues = sorted(p.name for p in verp_settings.path(verp_settings.newsletter.issues_dir).glob("*.yaml"))
    first, second, third = (send(store, verp_settings, issue) for issue in issues[:3])
    soft = "postfix-soft.eml"
    # ana's three last messages all soft-bounce, the newest first (reports come in any order);
    # bo's second message got through (no report came back), so his run is broken.
    rounds = [
        [bounce(soft, third["ana@example.com"]), bounce(soft, first["bo@example.com"])],
        [bounce(soft, first["ana@example.com"]), bounce("gmail-full.eml", third["bo@example.com"])],
        [bounce("gmail-full.eml", second["ana@example.com"])],
    ]
    runs = [
        process_mailbox(store, verp_settings, maildir(tmp_path / str(n), *reports))
        for n, reports in enumerate(rounds)
    ]

    assert [run.counts["soft"] for run in runs] == [2, 2, 1]
    assert [run.soft_to_hard for run in runs] == [0, 0, 1]
    assert status(store, "ana@example.com") == SubscriberStatus.BOUNCED
    assert status(store, "bo@example.com") == SubscriberStatus.ACTIVE
    log = subscriber_log(store, first["ana@example.com"].subscriber_id)
    assert log[-1].actor == "bounces" and log[-1].detail["in_a_row"] == 3


def test_a_report_read_again_counts_once(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    report = bounce("gmail-hard.eml", sent["ana@example.com"])
    first = process_mailbox(store, verp_settings, maildir(tmp_path / "first", report, report))
    assert first.counts == Counter(hard=1) and first.ignored == Counter({"already counted": 1})
    before = snapshot(store)
    # A crash between recording and moving leaves the report in the mailbox: the next run reads it
    # again, and a provider may send the same bounce twice.
    again = process_mailbox(store, verp_settings, maildir(tmp_path / "again", report, report))

    assert again.read == 2 and again.counts == Counter() and again.status_changes == 0
    assert again.ignored == Counter({"already counted": 2})
    assert snapshot(store) == before


def test_bounces_and_complaints_feed_the_report_and_pause_an_unhealthy_campaign(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    guarded = web_settings(verp_settings, health_min_sent=5, bounce_rate_limit=0.1)
    sent = send(store, guarded)
    ana = sent["ana@example.com"]
    reports = [bounce("outlook-hard.eml", ana), bounce("outlook-arf.eml", sent["bo@example.com"])]
    run = process_mailbox(store, guarded, maildir(tmp_path, *reports))

    total = campaign_stats(store, ana.campaign_id).rows[-1]
    assert (total.sent, total.bounced, total.complained) == (5, 1, 1)
    assert run.paused == [(ana.campaign_id, campaigns.get_campaign(store, ana.campaign_id).status_reason)]
    assert campaigns.get_campaign(store, ana.campaign_id).status == CampaignStatus.PAUSED


def test_delays_blocks_and_mail_that_is_no_report(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    ana = sent["ana@example.com"]
    box = maildir(
        tmp_path,
        bounce("gmail-delayed.eml", ana),
        bounce("postfix-blocked.eml", sent["bo@example.com"]),
        bounce("auto-reply.eml", sent["cy@example.com"]),
    )
    run = process_mailbox(store, verp_settings, box)

    assert run.read == 3 and run.counts == Counter(blocked=1) and run.ignored == Counter(delayed=1)
    assert run.status_changes == 0
    assert [(u.sender, u.subject) for u in run.unknown] == [
        ("Ana Example <cy@example.com>", "Automatic reply: Name it to tame it")
    ]
    # What was read moved to .Processed (marked seen); the auto-reply waits in the inbox for a person.
    # Read back by the standard library's Maildir, as a mail client or Dovecot would see the folder.
    folder = mailbox.Maildir(box.path, create=False)
    assert len(folder.get_folder("Processed")) == 2
    assert all("S" in m.get_flags() for m in folder.get_folder("Processed"))
    assert [m["Subject"] for m in folder] == ["Automatic reply: Name it to tame it"]
    assert status(store, ana.email) == SubscriberStatus.ACTIVE


def test_control_characters_in_a_report_are_stored_as_spaces_and_addresses_never(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    report = bounce("postfix-hard.eml", sent["ana@example.com"]).replace(
        b"Recipient address rejected: User", b"Recipient\x00address\x1b[31m rejected: User"
    )
    process_mailbox(store, verp_settings, maildir(tmp_path, report))

    with store.read() as conn:
        reason = conn.execute(select(delivery_events.c.reason)).scalar_one()
    assert (
        reason
        == "550 5.1.1 <[address]>: Recipient address [31m rejected: User unknown in virtual mailbox table"
    )


# -- `newsletter bounces` against a real IMAP server, and `run` doing it every tick -----------------

SAMPLE_ISSUE = "issues/2026-12-01-name-it-to-tame-it.yaml"


def configure(project: Path, sections: dict[str, dict[str, object]]) -> Path:
    """The project's settings.toml with ``sections`` (dotted names for nested tables) changed; a
    value of None takes the key out."""
    path = project / "settings.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for dotted, values in sections.items():
        table = data
        for part in dotted.split("."):
            table = table.setdefault(part, {})
        table.update(values)
        for key in [key for key, value in values.items() if value is None]:
            del table[key]
    path.write_text(dump_settings(data), encoding="utf-8")
    return path


@dataclass(frozen=True)
class MailProject:
    """A project that sent the first sample issue over SMTP with VERP, its bounces read from ``box``."""

    invoke: CliInvoker
    store_url: str
    box: ImapAccount
    received: dict[str, Received]
    """What the SMTP server accepted, by recipient."""

    def store(self) -> Store:
        return connect(self.store_url, TEST_KEY)

    def report(self, name: str, email: str) -> bytes:
        copy = self.received[email]
        return fill(name, verp=copy.mail_from, rcpt=email, sent=copy.data)


def imap_bounces(account: ImapAccount) -> dict[str, dict[str, object]]:
    return {
        "bounces": {"return_path": RETURN_PATH, "mailbox": "imap"},
        "bounces.imap": {
            "host": account.host,
            "port": account.port,
            "security": "none",
            "username": account.username,
        },
    }


@pytest.fixture
def sent_by_smtp(
    operator_shell: Path,
    smtp_server: SmtpServer,
    imap_account: ImapAccount,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> MailProject:
    monkeypatch.setenv("IMAP_PASSWORD", imap_account.password)
    smtp = {"host": smtp_server.host, "port": smtp_server.port, "security": "none"}
    settings_file = configure(
        operator_shell,
        {
            "store": {"url": store_url},
            "delivery": {"transport": "smtp", "rate_per_second": 10000.0},
            "smtp": smtp,
            **imap_bounces(imap_account),
        },
    )
    invoke = cli_invoker(settings_file)
    invoke("subscribers", "import", "subscribers/sample.csv")
    assert "50 sent" in invoke("send", SAMPLE_ISSUE, "--yes").output
    received = {r.rcpt_tos[0].lower(): r for r in smtp_server.handler.received}
    return MailProject(invoke, store_url, imap_account, received)


def test_a_bounce_and_a_complaint_in_the_mailbox_change_the_right_people_and_a_second_run_nothing(
    sent_by_smtp: MailProject,
) -> None:
    project, box = sent_by_smtp, sent_by_smtp.box
    bounced, complained, bystander = (
        "maya.chen@example.com",
        "zoe.martin@example.org",
        "jose.ramirez@example.net",
    )
    box.append(
        project.report("gmail-hard.eml", bounced),
        project.report("yahoo-arf.eml", complained),
        project.report("auto-reply.eml", bystander),
    )

    first = project.invoke("bounces")
    assert "3 read from imap://" in first.output
    assert "1 hard, 0 soft, 1 complaint, 0 blocked; 0 ignored; 1 unknown; 2 status changes" in first.output
    assert f"from Ana Example <{bystander}>" in first.output  # the auto-reply, left for a person
    with closing(project.store()) as store:
        assert status(store, bounced) == SubscriberStatus.BOUNCED
        assert status(store, complained) == SubscriberStatus.COMPLAINED
        assert status(store, bystander) == SubscriberStatus.ACTIVE
        assert sum(s.status == SubscriberStatus.ACTIVE for s in list_subscribers(store)) == 48
        before = snapshot(store)
    assert len(box.messages("Processed")) == 2
    assert all(b"\\Seen" in flags for flags, _raw in box.messages("Processed"))
    assert [b"Automatic reply" in raw for _flags, raw in box.messages()] == [True]

    second = project.invoke("bounces")
    assert "1 read from imap://" in second.output and "0 status changes" in second.output
    with closing(project.store()) as store:
        assert snapshot(store) == before
    report = project.invoke("report", "1").output
    assert re.search(r"all\s+│\s+50\s+│\s+0\s+│\s+1\s+│\s+1\s+│", report), report


def test_run_reads_the_mailbox_every_tick_when_asked(sent_by_smtp: MailProject) -> None:
    project = sent_by_smtp
    configure(project.invoke.settings_file.parent, {"bounces": {"every_tick": True}})  # type: ignore[union-attr]
    project.box.append(project.report("outlook-hard.eml", "maya.chen@example.com"))

    project.invoke("run", "--once")

    with closing(project.store()) as store:
        assert status(store, "maya.chen@example.com") == SubscriberStatus.BOUNCED
    assert project.box.messages() == []


def test_the_mailbox_must_be_reachable_and_the_password_is_never_shown(
    operator_shell: Path, imap_account: ImapAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke = cli_invoker(configure(operator_shell, {"bounces": {"processed_folder": "Processed"}}))
    assert "bounces.mailbox: not set" in invoke("bounces", expect=1).output

    configure(operator_shell, imap_bounces(imap_account))
    assert "IMAP_PASSWORD: not set" in invoke("bounces", expect=1).output

    monkeypatch.setenv("IMAP_PASSWORD", "wrong-password-1234")
    refused = invoke("bounces", expect=1).output
    assert "bounces.imap: imap://" in refused and "wrong-password-1234" not in refused

    configure(operator_shell, {"bounces": {"every_tick": True, "mailbox": None}})
    assert "bounces.every_tick" in invoke("run", "--once", expect=1).output


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_a_local_maildir_or_mbox_is_read_the_same_way(sent_by_smtp: MailProject, kind: str) -> None:
    project = sent_by_smtp
    settings_file = project.invoke.settings_file
    assert settings_file is not None
    path = settings_file.parent / "var" / f"bounces.{kind}"
    local: mailbox.Mailbox[mailbox.Message] = (
        mailbox.Maildir(path) if kind == "maildir" else mailbox.mbox(path)
    )
    for name, email in (
        ("postfix-hard.eml", "maya.chen@example.com"),
        ("outlook-jmrp.eml", "zoe.martin@example.org"),
    ):
        local.add(project.report(name, email))
    local.close()
    configure(settings_file.parent, {"bounces": {"mailbox": kind, "path": f"var/bounces.{kind}"}})

    first = project.invoke("bounces").output
    second = project.invoke("bounces").output

    assert "1 hard, 0 soft, 1 complaint" in first and "2 status changes" in first
    assert f"0 read from {path}" in second
    with closing(project.store()) as store:
        assert status(store, "maya.chen@example.com") == SubscriberStatus.BOUNCED
        assert status(store, "zoe.martin@example.org") == SubscriberStatus.COMPLAINED
    processed = (
        mailbox.Maildir(path).get_folder("Processed")
        if kind == "maildir"
        else mailbox.mbox(f"{path}.Processed")
    )
    with closing(processed):
        assert len(processed) == 2


def test_every_tick_a_message_left_in_the_mailbox_is_reported_once(
    store: Store,
    verp_settings: Settings,
    readers: list[str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = send(store, verp_settings)
    maildir(verp_settings.root, bounce("auto-reply.eml", sent["cy@example.com"]))
    chore = tick_chore(store, verp_settings)
    with caplog.at_level(logging.INFO, logger="pipeline.feedback.bounces"):
        chore()
        chore()
        maildir(verp_settings.root, bounce("gmail-hard.eml", sent["ana@example.com"]))
        chore()

    left = [r for r in caplog.records if "left in the mailbox" in r.getMessage()]
    summaries = [r.getMessage() for r in caplog.records if " read from " in r.getMessage()]
    assert len(left) == 1
    assert len(summaries) == 2 and "1 hard" in summaries[1]  # the quiet second tick logged nothing


def test_uid_sets_stay_short() -> None:
    assert uid_set(["7", "1", "2", "3", "9", "10", "3"]) == "1:3,7,9:10"


MUTATIONS = st.lists(
    st.tuples(
        st.floats(0, 1),
        st.sampled_from(["set", "cut", "insert"]),
        st.sampled_from(
            [
                b"\n",
                b"\r\n",
                b"\x00",
                b"\xff\xfe",
                b"\xc3\xa9",
                b"=?utf-8?b?",
                b"--",
                b";",
                b'"',
                b"<",
                b"(",
                b"report-type*=utf-8''x",
                b"Content-Type: message/global-delivery-status; charset=\x00\n",
                b"Content-Transfer-Encoding: base64\n",
                b"Content-Type: message/feedback-report\n\n",
            ]
        ),
    ),
    min_size=1,
    max_size=12,
)


@hypothesis.settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(FIXTURES), mutations=MUTATIONS)
def test_a_mangled_report_is_read_or_refused_but_never_crashes_the_reader(
    name: str, mutations: list[tuple[float, str, bytes]]
) -> None:
    raw = bytearray(filled(name))
    for where, how, piece in mutations:
        at = int(where * (len(raw) - 1))
        if how == "set":
            raw[at : at + 1] = piece[:1]
        elif how == "cut":
            del raw[at : at + len(piece) * 20]
        else:
            raw[at:at] = piece
    with suppress(dsn.NotAReport):  # left in the mailbox for a person: the one way a report may fail
        dsn.read_report(bytes(raw))


def test_hostile_values_in_a_report_change_nobody_and_stop_nothing(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    ana = sent["ana@example.com"]
    stranger = Signer(b"somebody-else-s-key-0123456789abcdef")
    huge_row = ReturnPath(RETURN_PATH, stranger).for_delivery(2**64 - 1, ana.email)  # past any id
    huge_link = f"https://news.example.org/u/{stranger.sign('unsubscribe', 10**30, address=ana.email)}"
    copy = sample_message("x@example.org", message_id="<m1\x00@x>", unsubscribe=huge_link)
    reports = [
        bounce("postfix-hard.eml", ana, verp=huge_row, rcpt="x\x00@example.org", sent=copy),
        bounce("gmail-hard.eml", ana, verp=huge_row, rcpt="ana@example.com\x00", sent=copy),
    ]
    before = {email: status(store, email) for email in readers}
    run = process_mailbox(store, verp_settings, maildir(tmp_path, *reports))

    assert run.read == 2 and run.ignored == Counter({"nobody on the list": 2}) and not run.unknown
    assert {email: status(store, email) for email in readers} == before


def nested_parts(depth: int) -> bytes:
    """A mailer daemon's message whose parts nest ``depth`` deep: a MIME bomb of a few dozen KB."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    head = b"From: MAILER-DAEMON@mail.example.net\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    return head + opening + b"Content-Type: text/plain\r\n\r\n550 5.1.1 gone\r\n" + closing


def test_parts_nested_too_deeply_are_left_in_the_mailbox_not_a_crash(
    store: Store, verp_settings: Settings, readers: list[str], tmp_path: Path
) -> None:
    sent = send(store, verp_settings)
    box = maildir(tmp_path, nested_parts(5000), bounce("gmail-hard.eml", sent["ana@example.com"]))
    run = process_mailbox(store, verp_settings, box)

    assert [u.why for u in run.unknown] == ["parts nested too deeply to read"]
    assert run.counts == Counter(hard=1)
