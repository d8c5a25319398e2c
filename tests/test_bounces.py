"""Bounces and complaints for SMTP senders: VERP return paths, the mailbox read by `newsletter bounces`."""

from __future__ import annotations

import pytest

from pipeline.settings import Settings
from pipeline.tokens import Signer
from pipeline.transports.returnpath import PURPOSE, ReturnPath
from pipeline.transports.smtp import SmtpTransport
from tests.fixtures.smtp import SmtpServer
from tests.transport_helpers import make_batch

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
