"""Addresses outside ASCII, on every transport: a Unicode domain travels as its IDNA form, a Unicode
local part over SMTPUTF8 (and as a UTF-8 header) where the path has it, and where it does not, that
one recipient fails with the reason: never the batch, never a row left `sending`."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_string, policy
from pathlib import Path

import pytest

from pipeline.render.addresses import ascii_address
from pipeline.settings import Settings
from pipeline.transports.base import Batch, Outcome
from pipeline.transports.outbox import OutboxTransport
from pipeline.transports.sendgrid import SendGridTransport
from pipeline.transports.smtp import SmtpTransport
from tests.emulators.sendgrid import SendGridEmulator
from tests.fixtures.smtp import SmtpServer, running_smtp_server
from tests.transport_helpers import make_batch

PLAIN = "ana@example.com"
UNICODE_DOMAIN = "zoe@bücher.de"
UNICODE_LOCAL = "josé@example.com"
EVERYONE = [PLAIN, UNICODE_DOMAIN, UNICODE_LOCAL]


@pytest.fixture(params=[False, True], ids=["plain-smtp", "smtputf8"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[SmtpServer, bool]]:
    with running_smtp_server(enable_SMTPUTF8=request.param) as sink:
        yield sink, request.param


def by_address(outcomes: list[Outcome], batch: Batch) -> dict[str, tuple[str, str | None]]:
    emails = {e.delivery_id: e.recipient.email for e in batch.envelopes}
    return {emails[o.delivery_id]: (o.status, o.error) for o in outcomes}


def test_the_wire_form_of_an_address() -> None:
    assert ascii_address(PLAIN) == PLAIN
    assert ascii_address(UNICODE_DOMAIN) == "zoe@xn--bcher-kva.de"
    assert ascii_address(UNICODE_LOCAL) is None


def test_the_outbox_writes_every_one_and_the_messages_read_back(settings: Settings, tmp_path: Path) -> None:
    batch = make_batch(settings, EVERYONE)
    outbox = OutboxTransport(tmp_path, fsync=False)

    outcomes = outbox.send(batch)

    assert {o.status for o in outcomes} == {"sent"}
    # An RFC 6532 reader decodes the header as UTF-8; Python's email package does so from text.
    messages = [
        message_from_string(f.read_bytes().decode("utf-8"), policy=policy.default)
        for f in tmp_path.rglob("*.eml")
    ]
    to = {message["To"].addresses[0].addr_spec for message in messages}
    assert to == {PLAIN, "zoe@xn--bcher-kva.de", UNICODE_LOCAL}


def test_smtp_sends_what_the_server_can_take_and_fails_only_the_rest(
    settings: Settings, server: tuple[SmtpServer, bool]
) -> None:
    sink, smtputf8 = server
    smtp = settings.smtp.model_copy(update={"host": sink.host, "port": sink.port, "security": "none"})
    transport = SmtpTransport(settings.model_copy(update={"smtp": smtp}), None)
    batch = make_batch(settings, EVERYONE)
    try:
        outcomes = by_address(transport.send(batch), batch)
    finally:
        transport.close()

    assert outcomes[PLAIN] == ("sent", None)
    assert outcomes[UNICODE_DOMAIN] == ("sent", None)
    if smtputf8:
        assert outcomes[UNICODE_LOCAL] == ("sent", None)
        assert sorted(sink.handler.recipients()) == sorted([PLAIN, "zoe@xn--bcher-kva.de", UNICODE_LOCAL])
    else:
        status, reason = outcomes[UNICODE_LOCAL]
        assert status == "failed" and reason is not None and "SMTPUTF8" in reason
        assert sorted(sink.handler.recipients()) == sorted([PLAIN, "zoe@xn--bcher-kva.de"])


def test_sendgrid_gets_the_idna_domain_and_refuses_only_a_unicode_local_part(settings: Settings) -> None:
    with SendGridEmulator(api_key="SG.unicode") as emulator:
        config = settings.sendgrid.model_copy(update={"host": emulator.url})
        transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), "SG.unicode")
        batch = make_batch(settings, EVERYONE)
        outcomes = by_address(transport.send(batch), batch)
        transport.close()
        accepted = sorted(emulator.recipients())

    assert outcomes[PLAIN][0] == outcomes[UNICODE_DOMAIN][0] == "sent"
    status, reason = outcomes[UNICODE_LOCAL]
    assert status == "failed" and reason is not None and "not ASCII" in reason
    assert accepted == sorted([PLAIN, "zoe@xn--bcher-kva.de"])
