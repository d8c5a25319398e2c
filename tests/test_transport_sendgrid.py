"""The SendGrid transport through the official library, over real HTTP, against the strict emulator."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from pipeline.settings import Settings
from pipeline.transports.sendgrid import SendGridTransport
from tests.emulators.sendgrid import AcceptedMessage, Fault, SendGridEmulator
from tests.fixtures.smtp import SmtpServer
from tests.transport_helpers import make_batch

API_KEY = "SG.transport-test-key"


@pytest.fixture
def emulator() -> Iterator[SendGridEmulator]:
    with SendGridEmulator(api_key=API_KEY) as emu:
        yield emu


def transport_for(
    settings: Settings, emulator: SendGridEmulator, *, retries: int = 4, timeout: float = 5.0
) -> tuple[SendGridTransport, list[float]]:
    config = settings.sendgrid.model_copy(
        update={"host": emulator.url, "max_retries": retries, "timeout": timeout}
    )
    waits: list[float] = []
    transport = SendGridTransport(
        settings.model_copy(update={"sendgrid": config}), API_KEY, sleep=waits.append
    )
    return transport, waits


def emails(n: int) -> list[str]:
    return [f"reader{i}@example.com" for i in range(n)]


def as_delivered(message: AcceptedMessage, index: int) -> tuple[str, str]:
    """The (text, HTML) one recipient receives: SendGrid replaces each substitution key in the content."""
    parts = [part["value"] for part in message.content]
    for key, value in message.personalizations[index]["substitutions"].items():
        parts = [part.replace(key, value) for part in parts]
    text, html_part = parts
    return text, html_part


def test_one_request_carries_the_content_once_and_a_personalization_per_recipient(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    transport, _ = transport_for(settings, emulator)
    batch = make_batch(settings, emails(3), campaign_id=42)
    outcomes = transport.send(batch)

    assert {o.status for o in outcomes} == {"sent"}
    assert len({o.message_id for o in outcomes}) == 1 and outcomes[0].message_id
    (message,) = emulator.messages
    assert [c["type"] for c in message.content] == ["text/plain", "text/html"]
    # No value needs HTML escaping, so one tag per field serves both parts.
    assert "%first_name%" in message.content[0]["value"] and "%first_name%" in message.content[1]["value"]
    assert "%first_name_html%" not in message.content[1]["value"]
    assert sorted(message.personalizations[0]["substitutions"]) == [
        "%email%",
        "%first_name%",
        "%preferences_url%",
        "%unsubscribe_url%",
    ]
    for index, envelope in enumerate(batch.envelopes):
        text, html_part = as_delivered(message, index)
        assert "%" + "first_name" not in text + html_part
        assert envelope.fields.first_name in html_part and envelope.fields.unsubscribe_url in html_part
    assert message.custom_args == {"campaign_id": "42"}
    assert message.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    first = message.personalizations[0]
    envelope = batch.envelopes[0]
    assert first["custom_args"] == {
        "subscriber_id": str(envelope.recipient.subscriber_id),
        "delivery_id": str(envelope.delivery_id),
    }
    assert first["substitutions"]["%unsubscribe_url%"] == envelope.fields.unsubscribe_url
    assert envelope.fields.unsubscribe_url in first["headers"]["List-Unsubscribe"]
    assert emulator.recipients() == emails(3)


def test_html_values_are_escaped_and_text_values_are_not(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    transport, _ = transport_for(settings, emulator)
    batch = make_batch(settings, emails(1))
    envelope = batch.envelopes[0]
    named = type(envelope.recipient)(
        envelope.recipient.subscriber_id, envelope.recipient.email, 'Ada "A&B" Lovelace, Jr'
    )
    fields = type(envelope.fields)(
        'Ada "A&B"', *(getattr(envelope.fields, f) for f in ("email", "unsubscribe_url", "preferences_url"))
    )
    batch = type(batch)(batch.campaign_id, batch.rendered, batch.message, [type(envelope)(1, named, fields)])
    assert transport.send(batch)[0].status == "sent"
    substitutions = emulator.messages[0].personalizations[0]["substitutions"]
    assert substitutions["%first_name%"] == 'Ada "A&B"'
    assert substitutions["%first_name_html%"] == "Ada &quot;A&amp;B&quot;"
    text, html_part = as_delivered(emulator.messages[0], 0)
    assert 'Ada "A&B"' in text and 'Ada "A&B"' not in html_part
    assert "Ada &quot;A&amp;B&quot;" in html_part
    assert emulator.messages[0].personalizations[0]["to"][0]["name"] == 'Ada "A&B" Lovelace Jr'


def test_429_is_retried_after_the_reset_the_api_announced(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    reset = int(time.time()) + 3
    emulator.inject(Fault(status=429, headers={"X-RateLimit-Reset": str(reset)}), Fault(status=503))
    transport, waits = transport_for(settings, emulator)
    outcomes = transport.send(make_batch(settings, emails(2)))

    assert {o.status for o in outcomes} == {"sent"}
    assert 1.0 <= waits[0] <= 3.5  # honoured X-RateLimit-Reset
    assert len(waits) == 2 and transport.stats.retries == 2
    assert emulator.recipients() == emails(2)


def test_a_storm_longer_than_the_retries_returns_the_batch_to_the_queue(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    emulator.inject(*[Fault(status=500)] * 3)
    transport, _ = transport_for(settings, emulator, retries=2)
    outcomes = transport.send(make_batch(settings, emails(2)))

    assert {o.status for o in outcomes} == {"unsent"}
    assert "gave up after 2 retries" in (outcomes[0].error or "")
    assert emulator.recipients() == []


def test_a_400_blaming_one_personalization_fails_it_and_sends_the_rest(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    transport, _ = transport_for(settings, emulator)
    batch = make_batch(settings, ["ok1@example.com", "not-an-address", "ok2@example.com"])
    outcomes = {o.delivery_id: o for o in transport.send(batch)}

    assert outcomes[2].status == "failed" and "personalizations.1" in (outcomes[2].error or "")
    assert outcomes[1].status == outcomes[3].status == "sent"
    assert emulator.recipients() == ["ok1@example.com", "ok2@example.com"]


def test_other_4xx_fail_the_batch_with_the_api_message(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    config = settings.sendgrid.model_copy(update={"host": emulator.url})
    transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), "SG.wrong-key")
    outcomes = transport.send(make_batch(settings, emails(2)))
    assert {o.status for o in outcomes} == {"failed"}
    assert "401" in (outcomes[0].error or "") and "authorization grant is invalid" in (
        outcomes[0].error or ""
    )


def test_a_connection_dropped_after_sending_leaves_the_batch_in_doubt(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    emulator.inject(Fault(drop=True))
    transport, _ = transport_for(settings, emulator)
    outcomes = transport.send(make_batch(settings, emails(2)))
    assert {o.status for o in outcomes} == {"in_doubt"}
    assert emulator.requests_seen == 1  # never resent blindly


def test_an_answer_that_is_not_http_leaves_the_batch_in_doubt_instead_of_crashing(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    """A host that answers the request in another protocol (here an SMTP server's banner) raised
    ``http.client.BadStatusLine``, which is no ``OSError``: the batch crashed with its rows `sending`."""
    config = settings.sendgrid.model_copy(
        update={"host": f"http://{smtp_server.host}:{smtp_server.port}", "max_retries": 0, "timeout": 5.0}
    )
    transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), API_KEY)

    outcomes = transport.send(make_batch(settings, emails(2)))

    assert {o.status for o in outcomes} == {"in_doubt"}
    assert "may have been accepted" in (outcomes[0].error or "")


def test_a_slow_api_times_out_and_is_in_doubt_not_resent(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    emulator.inject(Fault(delay=2.0))
    transport, _ = transport_for(settings, emulator, timeout=0.5)
    outcomes = transport.send(make_batch(settings, emails(1)))
    assert outcomes[0].status == "in_doubt"
    assert emulator.requests_seen == 1


def test_the_api_key_never_reaches_the_logs(
    settings: Settings, emulator: SendGridEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.inject(Fault(status=503))
    with caplog.at_level(logging.DEBUG):
        transport, _ = transport_for(settings, emulator)
        assert Counter(o.status for o in transport.send(make_batch(settings, emails(1)))) == {"sent": 1}
    assert caplog.records, "the retry should have been logged"
    assert API_KEY not in caplog.text


def test_recipient_addresses_stay_out_of_the_logs_even_with_the_library_at_debug(
    settings: Settings, emulator: SendGridEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The library formats each request body into a DEBUG line; ours prints as a one-line summary."""
    library = logging.getLogger("python_http_client")
    before = library.level
    library.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            transport, _ = transport_for(settings, emulator)
            assert {o.status for o in transport.send(make_batch(settings, emails(3)))} == {"sent"}
    finally:
        library.setLevel(before)
    payload_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("PAYLOAD")]
    assert payload_lines and "not logged" in payload_lines[0]
    assert not any(address in caplog.text for address in emails(3))
    assert emulator.recipients() == emails(3)


def test_a_stored_name_with_control_characters_reaches_no_request_raw(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    """Issue 12 item 10 on the SendGrid path: a name stored before imports refused control characters
    (NUL, ESC) goes out without them, as the SMTP and outbox To: header does."""
    transport, _ = transport_for(settings, emulator)
    batch = make_batch(settings, emails(1))
    envelope = batch.envelopes[0]
    named = envelope.recipient._replace(name="Ana\x00 \x1b[31mLima")
    batch = type(batch)(
        batch.campaign_id, batch.rendered, batch.message, [envelope._replace(recipient=named)]
    )

    assert transport.send(batch)[0].status == "sent"
    assert emulator.messages[0].personalizations[0]["to"][0]["name"] == "Ana [31mLima"
