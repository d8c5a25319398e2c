"""The .eml a recipient gets: parsed back with the standard library, as a mail client would."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from typing import cast

import pytest

from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate, list_id
from pipeline.render.renderer import RenderedIssue, personalise
from pipeline.settings import Settings
from pipeline.tokens import Signer

FIRST = "2026-12-01-name-it-to-tame-it"
KEY = b"test-message: a fixed key for these tests"
WHEN = datetime(2026, 12, 1, 13, 30, tzinfo=UTC)
SAM = Recipient(subscriber_id=31, email="sam.rivera@example.com", name="Sam Rivera")


def build(
    settings: Settings,
    rendered: RenderedIssue,
    recipient: Recipient = SAM,
    fields: PersonalFields | None = None,
    **options: object,
) -> bytes:
    fields = fields or Links(settings, Signer(KEY)).personal_fields(recipient)
    template = MessageTemplate(settings, rendered)
    return template.build(
        recipient,
        fields,
        message_id=cast(str, options.get("message_id", "<issue-1.31@news.example.org>")),
        date=cast(datetime, options.get("date", WHEN)),
        extra_headers=cast("dict[str, str] | None", options.get("extra_headers")),
    )


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=default).parsebytes(raw)


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body((subtype,))
    assert body is not None
    return cast(str, body.get_content())


def test_message_is_multipart_alternative_text_first(settings: Settings, rendered: RenderedIssue) -> None:
    message = parse(build(settings, rendered))

    assert message.get_content_type() == "multipart/alternative"
    assert message["MIME-Version"] == "1.0"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert message.defects == [] and all(p.defects == [] for p in parts)


def test_parts_carry_the_personalised_copy(settings: Settings, rendered: RenderedIssue) -> None:
    fields = Links(settings, Signer(KEY)).personal_fields(SAM)
    copy = personalise(rendered, fields)

    message = parse(build(settings, rendered, SAM, fields))

    assert part(message, "plain").replace("\r\n", "\n") == copy.text
    assert part(message, "html").replace("\r\n", "\n") == copy.html.replace("\r\n", "\n")
    assert "Hi Sam," in part(message, "plain")


def test_addresses_subject_date_and_message_id(settings: Settings, rendered: RenderedIssue) -> None:
    message = parse(build(settings, rendered))

    [sender] = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("The Juggle", "hello@news.example.org")
    [to] = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Sam Rivera", "sam.rivera@example.com")
    [reply_to] = message["Reply-To"].addresses
    assert reply_to.addr_spec == "editors@news.example.org"
    assert message["Subject"] == "Guilt isn't a verdict: start by naming it"
    assert message["Date"].datetime == WHEN
    assert message["Message-ID"] == "<issue-1.31@news.example.org>"


def test_one_click_unsubscribe_headers(settings: Settings, rendered: RenderedIssue) -> None:
    message = parse(build(settings, rendered))

    match = re.fullmatch(
        r"<https://news\.example\.org/u/([\w-]+\.[\w-]+)>, <mailto:unsubscribe@news\.example\.org\?subject=unsubscribe>",
        str(message["List-Unsubscribe"]),
    )
    assert match, message["List-Unsubscribe"]
    assert Signer(KEY).verify("unsubscribe", match[1], address=SAM.email) == SAM.subscriber_id
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "The Juggle <the-juggle.news.example.org>"
    assert list_id(settings) == "The Juggle <the-juggle.news.example.org>"


def test_list_unsubscribe_url_is_the_one_in_the_footer(settings: Settings, rendered: RenderedIssue) -> None:
    message = parse(build(settings, rendered))

    url = str(message["List-Unsubscribe"]).split(">")[0].lstrip("<")
    assert f"Unsubscribe: {url}" in part(message, "plain")
    assert f'href="{url}"' in part(message, "html")


def test_without_unsubscribe_mailbox_only_the_https_url_is_listed(
    settings: Settings, rendered: RenderedIssue
) -> None:
    bare = settings.model_copy(
        update={"sender": settings.sender.model_copy(update={"unsubscribe_mailto": None, "reply_to": None})}
    )

    message = parse(build(bare, rendered))

    assert re.fullmatch(r"<https://news\.example\.org/u/[\w.-]+>", str(message["List-Unsubscribe"]))
    assert message["Reply-To"] is None


def test_recipient_without_name_gets_a_bare_address(settings: Settings, rendered: RenderedIssue) -> None:
    message = parse(build(settings, rendered, Recipient(8, "anon@example.com")))

    [to] = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("", "anon@example.com")
    assert "Hi there," in part(message, "plain")


@pytest.mark.parametrize(
    "subject",
    [
        "Zoë\u2019s plan: «café» ✓, a subject long enough that the header has to be folded somewhere",
        "Guilt isn\u2019t a verdict",
        "Café ☕",
    ],
)
def test_non_ascii_names_and_subjects_are_encoded_and_decode_back(
    settings: Settings, rendered: RenderedIssue, subject: str
) -> None:
    unicode_issue = RenderedIssue(rendered.slug, subject, rendered.preheader, rendered.html, rendered.text)
    recipient = Recipient(9, "zoe@example.com", "Zoë Ångström, Jr.")
    named = settings.model_copy(
        update={"sender": settings.sender.model_copy(update={"from_name": "Die Jonglöre"})}
    )

    raw = build(named, unicode_issue, recipient)
    message = parse(raw)

    head = raw.split(b"\r\n\r\n", 1)[0]
    head.decode("ascii")  # headers are 7-bit: RFC 2047 encoded words
    assert message["Subject"] == subject
    assert message["To"].addresses[0].display_name == "Zoë Ångström, Jr."
    assert message["To"].addresses[0].addr_spec == "zoe@example.com"
    assert message["From"].addresses[0].display_name == "Die Jonglöre"
    assert "Hi Zoë," in part(message, "plain")
    assert "Hi Zoë," in part(message, "html")


def test_lines_end_in_crlf_and_stay_short(settings: Settings, rendered: RenderedIssue) -> None:
    raw = build(settings, rendered)

    assert b"\n" not in raw.replace(b"\r\n", b"")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


@pytest.mark.parametrize("length", [1, 40, 74, 75, 76, 77, 120, 151, 152])
def test_quoted_printable_lines_stay_within_76_characters_for_any_value_length(
    settings: Settings, rendered: RenderedIssue, length: int
) -> None:
    """RFC 2045 limits encoded lines to 76 characters, whatever the length of a substituted value."""
    name = "n" * length
    email = "e" * max(length - len("@example.com"), 1) + "@example.com"
    fields = PersonalFields(name, email, "https://news.example.org/u/" + "u" * length, "https://p.example/x")

    raw = build(settings, rendered, Recipient(1, email, None), fields)

    body = raw.split(b"\r\n\r\n", 1)[1]
    too_long = [line for line in body.split(b"\r\n") if len(line) > 76]
    assert too_long == [], f"{len(too_long)} lines over 76 characters, e.g. {too_long[0]!r}"
    assert f"Hi {name}," in part(parse(raw), "plain")


def test_name_with_line_break_cannot_inject_headers(settings: Settings, rendered: RenderedIssue) -> None:
    recipient = Recipient(1, "eve@example.com", "Eve\r\nBcc: victim@example.org")

    message = parse(build(settings, rendered, recipient))

    assert message["Bcc"] is None
    assert [a.addr_spec for a in message["To"].addresses] == ["eve@example.com"]


def test_extra_headers_are_added_and_encoded(settings: Settings, rendered: RenderedIssue) -> None:
    raw = build(settings, rendered, extra_headers={"X-Campaign": FIRST, "X-Note": "Café ✓"})
    message = parse(raw)

    assert message["X-Campaign"] == FIRST
    assert message["X-Note"] == "Café ✓"
    raw.split(b"\r\n\r\n", 1)[0].decode("ascii")


def test_subject_prefix(settings: Settings, rendered: RenderedIssue) -> None:
    template = MessageTemplate(settings, rendered, subject_prefix="[TEST] ")
    fields = Links(settings, Signer(KEY)).personal_fields(SAM)

    message = parse(template.build(SAM, fields, message_id="<t@news.example.org>", date=WHEN))

    assert message["Subject"] == f"[TEST] {rendered.subject}"


def test_message_ids_are_unique_on_the_sender_domain(settings: Settings, rendered: RenderedIssue) -> None:
    template = MessageTemplate(settings, rendered)

    ids = {template.message_id() for _ in range(200)}

    assert len(ids) == 200
    assert all(re.fullmatch(r"<[^@<>\s]+@news\.example\.org>", mid) for mid in ids)


def test_date_defaults_to_now(settings: Settings, rendered: RenderedIssue) -> None:
    template = MessageTemplate(settings, rendered)
    fields = Links(settings, Signer(KEY)).personal_fields(SAM)
    before = datetime.now(UTC).replace(microsecond=0)

    message = parse(template.build(SAM, fields, message_id="<t@news.example.org>"))

    assert before <= message["Date"].datetime <= datetime.now(UTC)


def test_one_template_builds_many_recipients(settings: Settings, rendered: RenderedIssue) -> None:
    template = MessageTemplate(settings, rendered)
    links = Links(settings, Signer(KEY))
    people = [Recipient(i, f"reader{i}@example.com", f"Reader{i} Person") for i in range(1, 4)]

    messages = [
        parse(template.build(p, links.personal_fields(p), message_id=f"<m{p.subscriber_id}@x>", date=WHEN))
        for p in people
    ]

    for person, message in zip(people, messages, strict=True):
        assert message["To"].addresses[0].addr_spec == person.email
        assert f"Hi Reader{person.subscriber_id}," in part(message, "plain")
        assert f"{person.email} subscribed" in part(message, "html")
        token = str(message["List-Unsubscribe"]).split("/u/")[1].split(">")[0]
        assert Signer(KEY).verify("unsubscribe", token, address=person.email) == person.subscriber_id


def test_boundary_does_not_occur_in_the_content(settings: Settings, rendered: RenderedIssue) -> None:
    raw = build(settings, rendered)
    message = parse(raw)

    boundary = message.get_boundary()
    assert boundary
    assert raw.count(f"--{boundary}".encode()) == 3
