"""The SendGrid emulator, driven by the official ``sendgrid`` client over real HTTP.

Why: the pipeline's delivery tests and benchmark trust this emulator to behave like SendGrid (strict
validation, auth, rate limits, outages, dropped connections, faithful recording), so pin that down here.
"""

from __future__ import annotations

import copy
import json
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from python_http_client.client import Response
from python_http_client.exceptions import (
    BadRequestsError,
    HTTPError,
    InternalServerError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Mail

from tests.emulators.sendgrid import (
    AcceptedMessage,
    Fault,
    SendGridEmulator,
    build_slim_record,
    expand_slim_record,
)
from tests.emulators.sendgrid_rules import is_valid_email, validate_mail
from tests.paths import REPO

API_KEY = "SG.test-key"
MESSAGE_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError)

Body = dict[str, Any]


@pytest.fixture
def emu() -> Iterator[SendGridEmulator]:
    with SendGridEmulator(api_key=API_KEY) as emulator:
        yield emulator


def send(emu: SendGridEmulator, body: Body, key: str = API_KEY, timeout: float | None = None) -> Response:
    """POST a raw body exactly as the pipeline does, through the official client."""
    client = SendGridAPIClient(key, host=emu.url)
    return client.client.mail.send.post(request_body=body, timeout=timeout)


def valid_body(**overrides: Any) -> Body:
    body: Body = {
        "personalizations": [
            {
                "to": [{"email": "Ada@Example.com", "name": "Ada Lovelace"}],
                "substitutions": {"%first_name%": "Ada"},
                "custom_args": {"subscriber_id": "1"},
            }
        ],
        "from": {"email": "news@example.org", "name": "The Weekly"},
        "subject": "Issue 1",
        "content": [
            {"type": "text/plain", "value": "Hi %first_name%"},
            {"type": "text/html", "value": "<p>Hi %first_name%</p>"},
        ],
    }
    return body | overrides


def one_recipient(email: str, **extra: Any) -> Body:
    return {"to": [{"email": email}], **extra}


def error_list(exc: HTTPError) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = json.loads(exc.body)["errors"]
    return errors


def error_fields(exc: HTTPError) -> list[str | None]:
    return [error["field"] for error in error_list(exc)]


# --- acceptance and recording -------------------------------------------------------------------


def test_valid_mail_is_accepted_with_202_empty_body_and_message_id(emu: SendGridEmulator) -> None:
    body = valid_body(categories=["weekly"], custom_args={"campaign_id": "7"}, headers={"X-Issue": "1"})
    response = send(emu, body)

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22 and set(message_id) <= MESSAGE_ID_CHARS
    [message] = emu.messages
    assert isinstance(message, AcceptedMessage)
    assert message.message_id == message_id
    assert (message.from_email, message.subject, message.sandbox) == ("news@example.org", "Issue 1", False)
    assert message.categories == ["weekly"]
    assert message.custom_args == {"campaign_id": "7"}
    assert message.headers == {"X-Issue": "1"}
    assert message.content[1] == {"type": "text/html", "value": "<p>Hi %first_name%</p>"}
    [personalization] = message.personalizations
    assert personalization["to"] == [{"email": "Ada@Example.com", "name": "Ada Lovelace"}]
    assert personalization["substitutions"] == {"%first_name%": "Ada"}
    assert personalization["custom_args"] == {"subscriber_id": "1"}
    assert personalization["send_at"] is None
    assert abs(message.received_at - time.time()) < 5
    assert emu.recipients() == ["ada@example.com"]
    assert emu.requests_seen == 1


def test_mail_helper_send_is_accepted(emu: SendGridEmulator) -> None:
    mail = Mail(
        from_email="news@example.org",
        to_emails=["a@example.com", "b@example.com"],
        subject="Helper",
        plain_text_content="text",
        html_content="<p>html</p>",
    )
    response = SendGridAPIClient(API_KEY, host=emu.url).send(mail)

    assert response.status_code == 202
    assert emu.recipients() == ["a@example.com", "b@example.com"]
    assert [c["type"] for c in emu.messages[0].content] == ["text/plain", "text/html"]


def test_recipients_keep_order_and_duplicates_across_requests(emu: SendGridEmulator) -> None:
    responses = [send(emu, valid_body(personalizations=[one_recipient(f"{c}@x.io")])) for c in "abca"]

    assert len({r.headers["X-Message-Id"] for r in responses}) == 4
    assert [m.message_id for m in emu.messages] == [r.headers["X-Message-Id"] for r in responses]
    assert emu.recipients() == ["a@x.io", "b@x.io", "c@x.io", "a@x.io"]


def test_every_to_of_every_personalization_is_a_recipient_but_cc_is_not(emu: SendGridEmulator) -> None:
    people = [
        {"to": [{"email": "One@x.io"}, {"email": "two@x.io"}], "cc": [{"email": "boss@x.io"}]},
        {"to": [{"email": "three@x.io"}], "bcc": [{"email": "audit@x.io"}]},
    ]
    send(emu, valid_body(personalizations=people))

    assert emu.recipients() == ["one@x.io", "two@x.io", "three@x.io"]
    assert emu.messages[0].personalizations[0]["cc"] == [{"email": "boss@x.io"}]


def test_a_full_batch_of_1000_personalizations_is_accepted(emu: SendGridEmulator) -> None:
    people = [one_recipient(f"user{i}@example.com", custom_args={"id": str(i)}) for i in range(1000)]
    send(emu, valid_body(personalizations=people))

    assert emu.recipients() == [f"user{i}@example.com" for i in range(1000)]
    assert emu.messages[0].personalizations[999]["custom_args"] == {"id": "999"}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"subject": None}, id="subject-only-in-every-personalization"),
        pytest.param(
            {"content": None, "template_id": "d-123", "subject": None}, id="template-without-content"
        ),
        pytest.param({"content": [{"type": "text/html", "value": "<p>x</p>"}]}, id="html-only"),
        pytest.param({"send_at": int(time.time()) + 71 * 3600}, id="send-at-71-hours-ahead"),
        pytest.param({"reply_to_list": [{"email": "r1@x.io"}, {"email": "r2@x.io"}]}, id="reply-to-list"),
        pytest.param({"categories": [f"c{i}" for i in range(10)]}, id="ten-categories"),
    ],
)
def test_valid_variants_are_accepted(emu: SendGridEmulator, overrides: Body) -> None:
    body = {k: v for k, v in valid_body(**overrides).items() if v is not None}
    body["personalizations"][0]["subject"] = "Per-recipient subject"

    assert send(emu, body).status_code == 202
    assert len(emu.messages) == 1


# --- auth, sandbox, size, malformed bodies ------------------------------------------------------


def test_wrong_api_key_is_401_with_sendgrid_body(emu: SendGridEmulator) -> None:
    with pytest.raises(UnauthorizedError) as caught:
        send(emu, valid_body(), key="SG.wrong")

    assert caught.value.status_code == 401
    assert json.loads(caught.value.body) == {
        "errors": [
            {
                "field": None,
                "message": "The provided authorization grant is invalid, expired, or revoked",
                "help": None,
            }
        ]
    }
    assert emu.messages == [] and emu.requests_seen == 1


def test_missing_authorization_header_is_401(emu: SendGridEmulator) -> None:
    response = httpx.post(f"{emu.url}/v3/mail/send", json=valid_body())

    assert response.status_code == 401
    assert emu.messages == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_by_its_content_type_is_415(
    emu: SendGridEmulator, content_type: str | None
) -> None:
    headers = {"Authorization": f"Bearer {emu.api_key}"} | (
        {"Content-Type": content_type} if content_type else {}
    )
    response = httpx.post(f"{emu.url}/v3/mail/send", content=json.dumps(valid_body()), headers=headers)

    assert response.status_code == 415
    assert response.json()["errors"][0]["message"] == "Content-Type should be application/json."
    assert emu.messages == []


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON; charset=UTF-8", True),
        ("application/json; charset=iso-8859-1", False),
    ],
)
def test_json_is_taken_with_or_without_a_utf8_charset(
    emu: SendGridEmulator, content_type: str, accepted: bool
) -> None:
    headers = {"Authorization": f"Bearer {emu.api_key}", "Content-Type": content_type}
    response = httpx.post(f"{emu.url}/v3/mail/send", content=json.dumps(valid_body()), headers=headers)

    assert response.status_code == (202 if accepted else 415)
    assert len(emu.messages) == (1 if accepted else 0)


def test_sandbox_mode_validates_answers_200_and_delivers_nothing(emu: SendGridEmulator) -> None:
    response = send(emu, valid_body(mail_settings={"sandbox_mode": {"enable": True}}))

    assert response.status_code == 200
    assert response.body == b""
    assert emu.messages == [] and emu.recipients() == []
    [sandboxed] = emu.sandbox_messages
    assert sandboxed.sandbox is True


def test_sandbox_mode_still_rejects_invalid_mail(emu: SendGridEmulator) -> None:
    with pytest.raises(BadRequestsError):
        send(emu, valid_body(subject=None, mail_settings={"sandbox_mode": {"enable": True}}))

    assert emu.sandbox_messages == []


def test_body_over_30_mb_is_413(emu: SendGridEmulator) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(
        f"{emu.url}/v3/mail/send", content=b" " * (30 * 1024 * 1024 + 1), headers=headers, timeout=60
    )

    assert response.status_code == 413
    assert "too large" in response.json()["errors"][0]["message"]
    assert emu.messages == [] and emu.requests_seen == 1


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"", "\u00e9".encode("latin-1")])
def test_malformed_json_is_400(emu: SendGridEmulator, raw: bytes) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{emu.url}/v3/mail/send", content=raw, headers=headers)

    assert response.status_code == 400
    assert response.json()["errors"]
    assert emu.messages == []


def test_unknown_path_is_404_and_get_on_mail_send_is_405(emu: SendGridEmulator) -> None:
    assert httpx.post(f"{emu.url}/v3/nope", json={}).status_code == 404
    assert httpx.get(f"{emu.url}/v3/mail/send").status_code == 405


# --- validation: every rule, with the field SendGrid would name ---------------------------------

Mutation = Callable[[Body], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets a dotted path (list indexes as numbers) in the body."""

    def mutate(body: Body) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(key: str) -> Mutation:
    return lambda body: body.pop(key)


def _many_personalizations(count: int, per: int = 1) -> Mutation:
    def mutate(body: Body) -> None:
        body["personalizations"] = [
            {"to": [{"email": f"u{i}.{j}@example.com"} for j in range(per)]} for i in range(count)
        ]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(body: Body) -> None:
        for mutation in mutations:
            mutation(body)

    return mutate


FAR_FUTURE = int(time.time()) + 73 * 3600
P0 = "personalizations.0"

INVALID_CASES: list[tuple[str, Mutation, str]] = [
    ("personalizations-missing", _delete("personalizations"), "personalizations"),
    ("personalizations-empty", _set("personalizations", []), "personalizations"),
    ("personalizations-over-1000", _many_personalizations(1001), "personalizations"),
    ("recipients-over-1000", _many_personalizations(400, per=3), "personalizations"),
    ("personalization-not-object", _set("personalizations", ["ada@example.com"]), P0),
    ("to-missing", _set(P0, {"subject": "x"}), f"{P0}.to"),
    ("to-empty", _set(f"{P0}.to", []), f"{P0}.to"),
    ("to-not-a-list", _set(f"{P0}.to", {"email": "a@x.io"}), f"{P0}.to"),
    ("to-second-invalid", _set(f"{P0}.to", [{"email": "ok@x.io"}, {"email": "nope"}]), f"{P0}.to.1.email"),
    ("to-address-not-object", _set(f"{P0}.to", ["ada@example.com"]), f"{P0}.to.0"),
    ("to-email-missing", _set(f"{P0}.to", [{"name": "Ada"}]), f"{P0}.to.0.email"),
    ("to-name-not-string", _set(f"{P0}.to.0.name", 7), f"{P0}.to.0.name"),
    ("to-name-with-comma", _set(f"{P0}.to.0.name", "Lovelace, Ada"), f"{P0}.to.0.name"),
    ("to-two-ats", _set(f"{P0}.to.0.email", "a@b@example.com"), f"{P0}.to.0.email"),
    ("to-no-dot-domain", _set(f"{P0}.to.0.email", "a@localhost"), f"{P0}.to.0.email"),
    ("to-space", _set(f"{P0}.to.0.email", "a b@example.com"), f"{P0}.to.0.email"),
    ("to-double-dot", _set(f"{P0}.to.0.email", "a..b@example.com"), f"{P0}.to.0.email"),
    ("cc-invalid", _set(f"{P0}.cc", [{"email": "boss@"}]), f"{P0}.cc.0.email"),
    ("bcc-invalid", _set(f"{P0}.bcc", [{"email": "@example.com"}]), f"{P0}.bcc.0.email"),
    ("cc-not-a-list", _set(f"{P0}.cc", "boss@x.io"), f"{P0}.cc"),
    ("duplicate-to-and-cc", _set(f"{P0}.cc", [{"email": "ADA@example.COM"}]), P0),
    ("duplicate-within-to", _set(f"{P0}.to", [{"email": "a@x.io"}, {"email": "A@x.io"}]), P0),
    (
        "duplicate-cc-and-bcc",
        _set(P0, {"to": [{"email": "t@x.io"}], "cc": [{"email": "c@x.io"}], "bcc": [{"email": "C@X.IO"}]}),
        P0,
    ),
    ("substitutions-not-object", _set(f"{P0}.substitutions", ["x"]), f"{P0}.substitutions"),
    ("substitutions-non-string", _set(f"{P0}.substitutions", {"%n%": 5}), f"{P0}.substitutions.%n%"),
    (
        "substitutions-over-10000-bytes",
        _set(f"{P0}.substitutions", {"%k%": "é" * 5000}),
        f"{P0}.substitutions",
    ),
    ("custom-args-non-string", _set(f"{P0}.custom_args", {"id": 1}), f"{P0}.custom_args.id"),
    ("custom-args-not-object", _set(f"{P0}.custom_args", "id=1"), f"{P0}.custom_args"),
    (
        "custom-args-over-10000-bytes-merged",
        _both(_set("custom_args", {"a": "x" * 6000}), _set(f"{P0}.custom_args", {"b": "y" * 5000})),
        f"{P0}.custom_args",
    ),
    ("top-custom-args-non-string", _set("custom_args", {"campaign": True}), "custom_args.campaign"),
    ("top-custom-args-over-10000-bytes", _set("custom_args", {"a": "x" * 10_001}), "custom_args"),
    ("send-at-beyond-72-hours", _set("send_at", FAR_FUTURE), "send_at"),
    ("send-at-float", _set("send_at", time.time()), "send_at"),
    ("send-at-negative", _set("send_at", -1), "send_at"),
    ("personalization-send-at-string", _set(f"{P0}.send_at", "tomorrow"), f"{P0}.send_at"),
    ("personalization-send-at-beyond-72-hours", _set(f"{P0}.send_at", FAR_FUTURE), f"{P0}.send_at"),
    ("from-missing", _delete("from"), "from.email"),
    ("from-without-email", _set("from", {"name": "News"}), "from.email"),
    ("from-invalid", _set("from", {"email": "news at example.org"}), "from.email"),
    ("subject-missing", _delete("subject"), "subject"),
    ("subject-empty", _set("subject", ""), "subject"),
    (
        "subject-missing-in-one-personalization",
        _both(
            _delete("subject"),
            _set("personalizations", [one_recipient("a@x.io", subject="Hi"), one_recipient("b@x.io")]),
        ),
        "subject",
    ),
    ("content-missing", _delete("content"), "content"),
    ("content-empty", _set("content", []), "content"),
    ("content-type-missing", _set("content", [{"value": "x"}]), "content.0.type"),
    ("content-type-with-semicolon", _set("content.0.type", "text/plain; charset=x"), "content.0.type"),
    ("content-value-empty", _set("content.0.value", ""), "content.0.value"),
    ("content-value-not-string", _set("content.1.value", None), "content.1.value"),
    (
        "content-html-before-plain",
        _set("content", [{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]),
        "content.1.type",
    ),
    ("content-plain-twice", _set("content.1", {"type": "text/plain", "value": "y"}), "content.1.type"),
    (
        "content-other-before-html",
        _set("content", [{"type": "text/calendar", "value": "x"}, {"type": "text/html", "value": "y"}]),
        "content.1.type",
    ),
    ("categories-not-list", _set("categories", "weekly"), "categories"),
    ("categories-over-10", _set("categories", [f"c{i}" for i in range(11)]), "categories"),
    ("categories-duplicate", _set("categories", ["weekly", "weekly"]), "categories"),
    ("categories-non-ascii", _set("categories", ["café"]), "categories"),
    ("categories-over-255-chars", _set("categories", ["x" * 256]), "categories"),
    ("categories-empty-string", _set("categories", [""]), "categories"),
    ("categories-not-string", _set("categories", [3]), "categories"),
    (
        "reply-to-with-reply-to-list",
        _both(_set("reply_to", {"email": "r@x.io"}), _set("reply_to_list", [{"email": "s@x.io"}])),
        "reply_to_list",
    ),
    ("reply-to-invalid", _set("reply_to", {"email": "r@"}), "reply_to.email"),
    (
        "reply-to-list-invalid",
        _set("reply_to_list", [{"email": "r@x.io"}, {"email": "s"}]),
        "reply_to_list.1.email",
    ),
    ("headers-non-string", _set("headers", {"X-Count": 1}), "headers.X-Count"),
    ("headers-not-object", _set("headers", ["X-Count: 1"]), "headers"),
    ("personalization-headers-non-string", _set(f"{P0}.headers", {"X-Id": 2}), f"{P0}.headers.X-Id"),
    ("template-id-not-string", _set("template_id", 5), "template_id"),
]


@pytest.mark.parametrize(("mutation", "field"), [pytest.param(m, f, id=name) for name, m, f in INVALID_CASES])
def test_invalid_mail_is_400_naming_the_field(emu: SendGridEmulator, mutation: Mutation, field: str) -> None:
    body = valid_body()
    mutation(body)

    with pytest.raises(BadRequestsError) as caught:
        send(emu, body)

    assert caught.value.status_code == 400
    assert field in error_fields(caught.value)
    for error in error_list(caught.value):
        assert error["message"]
        assert error["help"] is None or error["help"].startswith("https://sendgrid.com/docs/API_Reference/")
    assert emu.messages == [] and emu.recipients() == []
    assert emu.requests_seen == 1


def test_all_problems_of_a_request_are_reported_at_once(emu: SendGridEmulator) -> None:
    body = valid_body(
        personalizations=[one_recipient("ok@x.io"), one_recipient("broken"), {"to": []}],
        content=[],
        categories=["a", "a"],
    )
    del body["from"]

    with pytest.raises(BadRequestsError) as caught:
        send(emu, body)

    assert set(error_fields(caught.value)) == {
        "personalizations.1.to.0.email",
        "personalizations.2.to",
        "from.email",
        "content",
        "categories",
    }


def test_duplicate_error_names_the_address_and_location(emu: SendGridEmulator) -> None:
    body = valid_body(personalizations=[{"to": [{"email": "a@x.io"}], "bcc": [{"email": "A@X.io"}]}])

    with pytest.raises(BadRequestsError) as caught:
        send(emu, body)

    [error] = error_list(caught.value)
    assert error["field"] == "personalizations.0"
    assert "unique between to, cc, and bcc" in error["message"]
    assert "[A@X.io] in the personalizations.0.bcc field" in error["message"]


# --- faults -------------------------------------------------------------------------------------


def test_429_fault_carries_rate_limit_headers(emu: SendGridEmulator) -> None:
    emu.inject(Fault(status=429))
    before = int(time.time())

    with pytest.raises(TooManyRequestsError) as caught:
        send(emu, valid_body())

    headers = caught.value.headers
    assert caught.value.status_code == 429
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Limit"]) > 0
    assert before + 1 <= int(headers["X-RateLimit-Reset"]) <= int(time.time()) + 1
    assert json.loads(caught.value.body)["errors"][0]["message"] == "too many requests"
    assert emu.messages == [] and emu.requests_seen == 1
    assert send(emu, valid_body()).status_code == 202  # consumed: the next request goes through


def test_429_fault_headers_can_be_overridden(emu: SendGridEmulator) -> None:
    emu.inject(Fault(status=429, headers={"X-RateLimit-Reset": "1700000000", "Retry-After": "7"}))

    with pytest.raises(TooManyRequestsError) as caught:
        send(emu, valid_body())

    assert caught.value.headers["X-RateLimit-Reset"] == "1700000000"
    assert caught.value.headers["Retry-After"] == "7"
    assert caught.value.headers["X-RateLimit-Remaining"] == "0"


@pytest.mark.parametrize(("status", "error"), [(500, InternalServerError), (503, ServiceUnavailableError)])
def test_server_error_faults(emu: SendGridEmulator, status: int, error: type[HTTPError]) -> None:
    emu.inject(Fault(status=status))

    with pytest.raises(error) as caught:
        send(emu, valid_body())

    assert caught.value.status_code == status
    assert json.loads(caught.value.body)["errors"]
    assert emu.messages == []


def test_faults_are_consumed_one_per_request_in_order(emu: SendGridEmulator) -> None:
    emu.inject(Fault(status=429), Fault(status=503), Fault(status=500))
    seen = []
    for _ in range(4):
        try:
            seen.append(send(emu, valid_body()).status_code)
        except HTTPError as exc:
            seen.append(exc.status_code)

    assert seen == [429, 503, 500, 202]
    assert len(emu.messages) == 1 and emu.requests_seen == 4


def test_faults_apply_before_auth_and_validation(emu: SendGridEmulator) -> None:
    emu.inject(Fault(status=503))

    with pytest.raises(ServiceUnavailableError):
        send(emu, {"not": "a mail"}, key="SG.wrong")


def test_delay_fault_slows_a_normal_answer(emu: SendGridEmulator) -> None:
    emu.inject(Fault(delay=0.4))
    started = time.monotonic()

    response = send(emu, valid_body())

    assert time.monotonic() - started >= 0.4
    assert response.status_code == 202
    assert len(emu.messages) == 1  # answered normally, so it was accepted


def test_delay_with_status_answers_late_with_the_error(emu: SendGridEmulator) -> None:
    emu.inject(Fault(delay=0.3, status=503))
    started = time.monotonic()

    with pytest.raises(ServiceUnavailableError):
        send(emu, valid_body())

    assert time.monotonic() - started >= 0.3


def test_client_timeout_during_a_delay_leaves_the_mail_accepted(emu: SendGridEmulator) -> None:
    """The ambiguous case SendGrid users must handle: the client gave up, the server still accepted."""
    emu.inject(Fault(delay=0.6))

    with pytest.raises(NETWORK_ERRORS):
        send(emu, valid_body(), timeout=0.15)

    deadline = time.monotonic() + 5
    while not emu.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emu.recipients() == ["ada@example.com"]


def test_drop_fault_closes_the_connection_without_a_response(emu: SendGridEmulator) -> None:
    emu.inject(Fault(drop=True))

    with pytest.raises(NETWORK_ERRORS) as caught:
        send(emu, valid_body())

    assert not isinstance(caught.value, HTTPError)
    assert emu.messages == [] and emu.requests_seen == 1
    assert send(emu, valid_body()).status_code == 202


def test_drop_fault_also_closes_keep_alive_connections(emu: SendGridEmulator) -> None:
    """httpx keeps connections open; a drop must still end the exchange instead of hanging it."""
    emu.inject(Fault(drop=True))
    headers = {"Authorization": f"Bearer {API_KEY}"}

    with httpx.Client(timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(f"{emu.url}/v3/mail/send", json=valid_body(), headers=headers)
        assert client.post(f"{emu.url}/v3/mail/send", json=valid_body(), headers=headers).status_code == 202


def test_inject_every_faults_every_nth_request_until_cleared(emu: SendGridEmulator) -> None:
    emu.inject_every(3, Fault(status=503))
    statuses = []
    for _ in range(6):
        try:
            statuses.append(send(emu, valid_body()).status_code)
        except ServiceUnavailableError as exc:
            statuses.append(exc.status_code)
    emu.clear_faults()

    assert statuses == [202, 202, 503, 202, 202, 503]
    assert send(emu, valid_body()).status_code == 202
    assert len(emu.messages) == 5


def test_inject_every_rejects_a_non_positive_period(emu: SendGridEmulator) -> None:
    with pytest.raises(ValueError):
        emu.inject_every(0, Fault(status=500))


def test_reset_forgets_messages_faults_and_counts(emu: SendGridEmulator) -> None:
    send(emu, valid_body())
    emu.inject(Fault(status=500))
    emu.reset()

    assert (emu.messages, emu.recipients(), emu.requests_seen) == ([], [], 0)
    assert send(emu, valid_body()).status_code == 202


# --- concurrency, lifecycle ---------------------------------------------------------------------


def test_concurrent_senders_are_all_recorded_exactly_once(emu: SendGridEmulator) -> None:
    def worker(n: int) -> None:
        for i in range(5):
            send(emu, valid_body(personalizations=[one_recipient(f"w{n}.{i}@x.io")]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(emu.recipients()) == sorted(f"w{n}.{i}@x.io" for n in range(8) for i in range(5))
    assert len({m.message_id for m in emu.messages}) == 40
    assert emu.requests_seen == 40


def test_context_manager_starts_and_stops_the_server() -> None:
    with SendGridEmulator(api_key=API_KEY) as emulator:
        url = emulator.url
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert send(emulator, valid_body()).status_code == 202

    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v3/mail/send", json=valid_body())
    with pytest.raises(RuntimeError):
        _ = emulator.url


def test_stop_does_not_wait_for_a_long_delay() -> None:
    emulator = SendGridEmulator(api_key=API_KEY).start()
    emulator.inject(Fault(delay=30))
    outcome: list[BaseException] = []

    def sender_thread() -> None:
        try:
            send(emulator, valid_body())
        except NETWORK_ERRORS as exc:
            outcome.append(exc)

    sender = threading.Thread(target=sender_thread)
    sender.start()
    time.sleep(0.2)
    started = time.monotonic()

    emulator.stop()
    sender.join(timeout=5)

    assert time.monotonic() - started < 5 and not sender.is_alive()
    assert len(outcome) == 1  # the pending request was dropped, not answered


def test_unknown_record_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        SendGridEmulator(record="everything")  # type: ignore[arg-type]


# --- control endpoints --------------------------------------------------------------------------


def test_control_endpoints_queue_faults_list_messages_and_reset(emu: SendGridEmulator) -> None:
    queued = httpx.post(f"{emu.url}/_emulator/faults", json=[{"status": 429}, {"drop": True}])
    assert queued.status_code == 200 and queued.json() == {"queued": 2}

    with pytest.raises(TooManyRequestsError):
        send(emu, valid_body())
    with pytest.raises(NETWORK_ERRORS):
        send(emu, valid_body())
    message_id = send(emu, valid_body()).headers["X-Message-Id"]

    [listed] = httpx.get(f"{emu.url}/_emulator/messages").json()
    assert listed["message_id"] == message_id
    assert listed["personalizations"][0]["to"] == [{"email": "Ada@Example.com", "name": "Ada Lovelace"}]
    assert httpx.get(f"{emu.url}/_emulator/recipients").json() == ["ada@example.com"]
    stats = httpx.get(f"{emu.url}/_emulator/stats").json()
    assert stats["requests_seen"] == 3 and stats["accepted"] == 1

    assert httpx.post(f"{emu.url}/_emulator/reset").status_code == 200
    assert httpx.get(f"{emu.url}/_emulator/messages").json() == []
    assert emu.requests_seen == 0


def test_control_endpoint_every_and_bad_input(emu: SendGridEmulator) -> None:
    assert httpx.post(f"{emu.url}/_emulator/faults", json={"status": 500, "every": 2}).status_code == 200
    assert httpx.post(f"{emu.url}/_emulator/faults", content=b"{oops").status_code == 400
    assert httpx.post(f"{emu.url}/_emulator/faults", json=[{"delay": "soon"}]).status_code == 400

    assert send(emu, valid_body()).status_code == 202
    with pytest.raises(InternalServerError):
        send(emu, valid_body())


# --- recipients-only recording ------------------------------------------------------------------


def test_recipients_mode_keeps_addresses_and_custom_args_only() -> None:
    people = [
        one_recipient("First@X.io", custom_args={"subscriber_id": "1"}),
        {"to": [{"email": "second@x.io", "name": "Two"}, {"email": "THIRD@x.io"}]},
    ]
    with SendGridEmulator(api_key=API_KEY, record="recipients") as emulator:
        send(emulator, valid_body(personalizations=people, custom_args={"campaign_id": "9"}))
        send(emulator, valid_body(mail_settings={"sandbox_mode": {"enable": True}}))
        [message] = emulator.messages
        listed = httpx.get(f"{emulator.url}/_emulator/messages").json()

    assert emulator.recipients() == ["first@x.io", "second@x.io", "third@x.io"]
    assert message.personalizations == [
        {"to": [{"email": "first@x.io"}], "custom_args": {"subscriber_id": "1"}},
        {"to": [{"email": "second@x.io"}, {"email": "third@x.io"}], "custom_args": {}},
    ]
    assert (message.content, message.headers, message.raw) == ([], {}, None)
    assert message.custom_args == {"campaign_id": "9"} and message.subject == "Issue 1"
    assert listed[0]["personalizations"] == message.personalizations
    assert len(emulator.sandbox_messages) == 1


# --- the standalone entry point -----------------------------------------------------------------


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the child's first stdout line without risking a hung test."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("the emulator did not print its URL in time")
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_standalone_module_serves_until_signalled(stop_signal: signal.Signals) -> None:
    command = [sys.executable, "-m", "tests.emulators.sendgrid", "--port", "0", "--api-key", API_KEY]
    with subprocess.Popen(
        [*command, "--record", "recipients"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            url = _read_line(proc, timeout=15)
            assert url.startswith("http://127.0.0.1:")
            response = SendGridAPIClient(API_KEY, host=url).client.mail.send.post(request_body=valid_body())
            assert response.status_code == 202
            assert httpx.get(f"{url}/_emulator/recipients").json() == ["ada@example.com"]
        finally:
            proc.send_signal(stop_signal)
            _, stderr = proc.communicate(timeout=15)

    assert proc.returncode == 0
    assert stderr == ""  # quiet: no per-request logging


# --- properties of the validator ----------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
BODY_PATHS = [
    "personalizations", "personalizations.0", "personalizations.0.to", "personalizations.0.to.0",
    "personalizations.0.to.0.email", "personalizations.0.substitutions", "personalizations.0.custom_args",
    "from", "subject", "content", "content.0", "content.0.type", "categories", "custom_args", "headers",
    "send_at", "reply_to", "reply_to_list", "mail_settings", "template_id",
]  # fmt: skip


@settings(max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(BODY_PATHS), value=JSON)
def test_validator_never_crashes_and_valid_bodies_can_be_recorded(path: str, value: Any) -> None:
    body = copy.deepcopy(valid_body())
    _set(path, value)(body)

    errors = validate_mail(body)

    for error in errors:
        assert set(error) == {"message", "field", "help"} and error["message"]
    if not errors:  # whatever passed validation must be recordable in both modes
        assert expand_slim_record(build_slim_record(body, sandbox=False)).personalizations


@settings(max_examples=300, database=None)
@given(st.emails())
def test_syntactically_valid_addresses_are_accepted(address: str) -> None:
    assert is_valid_email(address)


@settings(max_examples=300, database=None)
@given(st.text(max_size=40))
def test_addresses_without_exactly_one_usable_at_are_rejected(text: str) -> None:
    if text.count("@") != 1:
        assert not is_valid_email(text)
