"""The SMTP transport against a real SMTP server (aiosmtpd), including refusals and dropped connections."""

from __future__ import annotations

from collections import Counter

from pipeline.settings import Settings
from pipeline.transports.smtp import SmtpTransport
from tests.fixtures.smtp import SmtpServer
from tests.system import free_port
from tests.transport_helpers import make_batch


def smtp_settings(settings: Settings, port: int, connections: int = 2) -> Settings:
    smtp = settings.smtp.model_copy(
        update={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "connections": connections,
            "timeout": 5.0,
        }
    )
    return settings.model_copy(update={"smtp": smtp})


def emails(n: int) -> list[str]:
    return [f"reader{i}@example.com" for i in range(n)]


def test_every_message_arrives_once_with_its_own_unsubscribe_link(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    transport = SmtpTransport(smtp_settings(settings, smtp_server.port), None)
    batch = make_batch(settings, emails(5))
    outcomes = transport.send(batch)
    transport.close()

    assert [o.status for o in outcomes] == ["sent"] * 5
    assert sorted(smtp_server.handler.recipients()) == sorted(emails(5))
    first = smtp_server.handler.received[0].message
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert batch.envelopes[0].fields.unsubscribe_url in first["List-Unsubscribe"]
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert outcomes[0].message_id == first["Message-ID"]


def test_connections_are_reused_across_messages_and_batches(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    transport = SmtpTransport(smtp_settings(settings, smtp_server.port, connections=1), None)
    transport.send(make_batch(settings, emails(3)))
    transport.send(make_batch(settings, emails(3)))
    transport.close()
    assert transport.stats.reconnects == 0
    assert len(smtp_server.handler.received) == 6


def test_a_refused_recipient_fails_alone(settings: Settings, smtp_server: SmtpServer) -> None:
    smtp_server.handler.refuse.add("reader1@example.com")
    transport = SmtpTransport(smtp_settings(settings, smtp_server.port), None)
    outcomes = transport.send(make_batch(settings, emails(3)))
    transport.close()

    by_id = {o.delivery_id: o for o in outcomes}
    assert by_id[2].status == "failed" and "550" in (by_id[2].error or "")
    assert by_id[1].status == by_id[3].status == "sent"
    assert sorted(smtp_server.handler.recipients()) == ["reader0@example.com", "reader2@example.com"]


def test_a_connection_dropped_before_data_is_reopened_and_nothing_is_lost(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.drop_rcpt.extend([2, 1])  # drop at the 3rd RCPT, then again two later
    transport = SmtpTransport(smtp_settings(settings, smtp_server.port), None)
    outcomes = transport.send(make_batch(settings, emails(6)))
    transport.close()

    assert Counter(o.status for o in outcomes) == {"sent": 6}
    assert Counter(smtp_server.handler.recipients()) == Counter(emails(6))
    assert transport.stats.reconnects == 2


def test_a_connection_dropped_after_data_leaves_that_message_in_doubt(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.drop_data.append(1)  # the 2nd message is accepted, then the line goes dead
    transport = SmtpTransport(smtp_settings(settings, smtp_server.port), None)
    outcomes = transport.send(make_batch(settings, emails(4)))
    transport.close()

    by_id = {o.delivery_id: o.status for o in outcomes}
    assert by_id == {1: "sent", 2: "in_doubt", 3: "sent", 4: "sent"}
    assert Counter(smtp_server.handler.recipients()) == Counter(emails(4))


def test_an_unreachable_server_returns_every_message_unsent(settings: Settings) -> None:
    transport = SmtpTransport(smtp_settings(settings, free_port()), None)
    outcomes = transport.send(make_batch(settings, emails(3)))
    assert {o.status for o in outcomes} == {"unsent"}
    assert "unreachable" in (outcomes[0].error or "")
