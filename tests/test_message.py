"""The .eml a recipient gets: parsed back with the standard library, as a mail client would; what each
transport sends of it (Feedback-ID, List-Archive); line lengths of its headers and text part."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_string
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import cast

import pytest

from pipeline.audience.subscribers import add_subscriber
from pipeline.content.issue import load_issue
from pipeline.dispatch.single import send_confirmation
from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate, feedback_id, feedback_sender_id, list_id
from pipeline.render.renderer import RenderedIssue, Renderer, personalise, render
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import SubscriberStatus
from pipeline.tokens import Signer
from pipeline.transports.sendgrid import SendGridTransport
from pipeline.transports.smtp import SmtpTransport
from tests.emulators.sendgrid import SendGridEmulator
from tests.fixtures.project import CliInvoker
from tests.fixtures.smtp import SmtpServer
from tests.mail import outbox_files, outbox_transport
from tests.paths import REPO
from tests.transport_helpers import dispatcher, make_batch, new_campaign
from tests.web_support import readers

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
    assert f"Unsubscribe:\r\n{url}\r\n" in part(message, "plain")
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


# Feedback-ID (Gmail's feedback loop) and List-Archive (RFC 2369): on every campaign message, nothing else

SLUGS = sorted(path.stem for path in (REPO / "issues").glob("*.yaml"))
ISSUE = f"issues/{FIRST}.yaml"


ARCHIVE = "<https://news.example.org/archive/>"


def expected_feedback_id(campaign_id: int, slug: str = FIRST) -> str:
    return f"{campaign_id}:{slug}:the-juggle:newsexampleorg"


def test_campaign_messages_in_the_outbox_carry_feedback_id_list_id_and_list_archive(
    run: CliInvoker, project: Path
) -> None:
    run("send", ISSUE, "--yes", "--segment", "toddlers")

    messages = [parse(path.read_bytes()) for path in outbox_files(project / "outbox")]

    assert len(messages) == 14
    for message in messages:
        assert message.get_all("Feedback-ID") == [expected_feedback_id(1)]
        assert message["List-Id"] == "The Juggle <the-juggle.news.example.org>"
        assert message.get_all("List-Archive") == [ARCHIVE]
        assert message.defects == []


def test_a_test_copy_carries_no_feedback_id_nor_list_archive(run: CliInvoker, project: Path) -> None:
    """Not part of the bulk stream Gmail reports on, no campaign to name, and no posting to the list:
    its issue may never go out."""
    run("send", ISSUE, "--to", "editor@example.org")

    (path,) = outbox_files(project / "outbox")
    message = parse(path.read_bytes())
    assert message["Subject"].startswith("[TEST] ")
    assert message["Feedback-ID"] is None and message["List-Archive"] is None
    assert message["List-Id"] == "The Juggle <the-juggle.news.example.org>"


def test_a_signup_confirmation_carries_no_list_archive(settings: Settings, store: Store) -> None:
    """A message to one person about joining, not a posting to the list: no archive holds it."""
    person = add_subscriber(store, "new@example.com", status=SubscriberStatus.UNCONFIRMED)
    transport = outbox_transport(settings)
    outcome = send_confirmation(settings, store, Renderer(settings), transport, person.id, WHEN)

    assert outcome is not None and outcome.status == "sent"
    (path,) = outbox_files(settings.path(settings.delivery.outbox_dir))
    message = parse(path.read_bytes())
    assert message["Subject"].startswith("Please confirm")
    assert message["List-Archive"] is None and message["Feedback-ID"] is None


def test_campaign_messages_over_smtp_carry_feedback_id_and_list_archive(
    store: Store, settings: Settings, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    readers(store, tmp_path, 3)
    campaign = new_campaign(store, settings)
    smtp = settings.smtp.model_copy(
        update={"host": "127.0.0.1", "port": smtp_server.port, "security": "none"}
    )
    transport = SmtpTransport(settings.model_copy(update={"smtp": smtp}), None)

    dispatcher(store, settings, transport).run(campaign.id)
    transport.close()

    received = [item.message for item in smtp_server.handler.received]
    assert len(received) == 3
    assert {message["Feedback-ID"] for message in received} == {expected_feedback_id(campaign.id)}
    assert {message["List-Archive"] for message in received} == {ARCHIVE}


def test_a_sendgrid_request_carries_feedback_id_and_list_archive_for_a_campaign_only(
    settings: Settings,
) -> None:
    with SendGridEmulator(api_key="SG.message-test") as emulator:
        config = settings.sendgrid.model_copy(update={"host": emulator.url, "timeout": 5.0})
        transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), "SG.message-test")
        transport.send(make_batch(settings, ["a@example.com", "b@example.com"], campaign_id=42))
        transport.send(make_batch(settings, ["editor@example.org"], campaign_id=None))

    campaign_request, test_copy = emulator.messages
    assert campaign_request.headers["Feedback-ID"] == expected_feedback_id(42)
    assert campaign_request.headers["List-Id"] == "The Juggle <the-juggle.news.example.org>"
    assert campaign_request.headers["List-Archive"] == ARCHIVE
    assert "Feedback-ID" not in test_copy.headers and "List-Archive" not in test_copy.headers


def test_feedback_id_has_gmail_s_shape(settings: Settings) -> None:
    """``a:b:c:SenderId``: at most four colon-separated fields, the last 5 to 15 characters; a slug
    with a colon or a space cannot add a field."""
    value = feedback_id(settings, 7, "2027-01-05-a:b c")

    fields = value.split(":")
    assert fields == ["7", "2027-01-05-a-b-c", "the-juggle", "newsexampleorg"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", field) for field in fields)


@pytest.mark.parametrize(
    ("from_email", "sender_id"),
    [
        ("hello@news.example.org", "newsexampleorg"),
        ("a@x.io", "xio00"),
        ("news@mail.the-juggle-newsletter.example.com", "mailthejugglene"),
        ("hallo@bücher.de", "xnbcherkvade"),
    ],
)
def test_feedback_sender_id_is_5_to_15_characters_from_the_from_domain(
    settings: Settings, from_email: str, sender_id: str
) -> None:
    sender = settings.sender.model_copy(update={"from_email": from_email})

    assert feedback_sender_id(settings.model_copy(update={"sender": sender})) == sender_id
    assert 5 <= len(sender_id) <= 15


# Line lengths: the To header folded, the text part within 78 characters

LONG_NAMES = [
    "Alexandra Catherine Montgomery-Smythe Worthington, Third of Her Name",
    "Zoë Ångström-Løvdahl Þórðardóttir Ünterbërg-Häßler and Family",
    "Maximilianus Bartholomew Featherstonehaugh-Cholmondeley",
]


def to_lines(raw: bytes) -> list[bytes]:
    """The To header's lines as sent (its first line and the folded ones after it)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(head) if line.startswith(b"To: "))
    end = next(i for i in range(start + 1, len(head)) if not head[i].startswith(b" "))
    return head[start:end]


def read_to(raw: bytes) -> tuple[str, str]:
    """(display name, address) as RFC 2047 6.2 reads them: the space between two encoded words is
    not part of the name. Python 3.11's address parser keeps it (CPython gh-128110, fixed later), so
    the name is decoded by ``email.header``, which follows the RFC; the address by the modern parser."""
    [to] = message_from_string(raw.decode("utf-8"), policy=default)["To"].addresses  # UTF-8 as RFC 6532
    value = b"".join(to_lines(raw)).decode("utf-8").removeprefix("To: ")
    name = value.rpartition(" <")[0]
    decoded = str(make_header(decode_header(name)))
    return (decoded.strip('"') if name.startswith('"') else decoded), to.addr_spec


@pytest.mark.parametrize("name", LONG_NAMES)
def test_a_long_to_header_is_folded_and_reads_back(
    settings: Settings, rendered: RenderedIssue, name: str
) -> None:
    recipient = Recipient(9, "alexandra.montgomery-smythe@example.com", name)

    raw = build(settings, rendered, recipient)

    lines = to_lines(raw)
    assert len(lines) > 1, "folded"
    assert max(len(line) for line in lines) <= 78
    assert read_to(raw) == (name, recipient.email)


def test_a_long_to_header_with_a_unicode_local_part_is_folded_too(
    settings: Settings, rendered: RenderedIssue
) -> None:
    recipient = Recipient(9, "zoë.ångström-løvdahl@example.com", LONG_NAMES[1])

    raw = build(settings, rendered, recipient)

    lines = to_lines(raw)
    assert len(lines) > 1, "folded"
    assert max(len(line) for line in lines) <= 78
    assert read_to(raw) == (LONG_NAMES[1], recipient.email)


def test_a_short_to_header_stays_on_one_line(settings: Settings, rendered: RenderedIssue) -> None:
    head = build(settings, rendered).split(b"\r\n\r\n", 1)[0]

    assert b"To: Sam Rivera <sam.rivera@example.com>\r\n" in head


def long_lines(text: str) -> list[str]:
    """Lines over 78 characters, except one URL or address standing alone (with its brackets or a
    full stop), which cannot be broken."""
    return [line for line in text.splitlines() if len(line) > 78 and " " in line.strip().strip("()<>.,;:")]


@pytest.mark.parametrize("slug", SLUGS)
def test_text_part_lines_stay_within_78_characters(settings: Settings, project: Path, slug: str) -> None:
    rendered = render(load_issue(project / "issues" / f"{slug}.yaml"), settings)
    recipient = Recipient(4217, "sam.rivera@example.com", "Sam Rivera")

    text = part(parse(build(settings, rendered, recipient)), "plain")

    assert max(len(line) for line in text.splitlines()) <= 78
    urls = [line for line in text.splitlines() if "https://" in line]
    assert urls and all(line.strip().startswith("https://") for line in urls), "every URL on its own line"


def test_text_part_wraps_long_titles_and_keeps_long_urls_and_addresses_alone(
    settings: Settings, project: Path
) -> None:
    long_url = "https://www.example.org/research/" + "working-parents-and-the-long-week/" * 3
    path = project / "issues" / f"{FIRST}.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in (
        ('title: "Name it to tame it"', 'title: "Name it to tame it, and then name it once more, out loud"'),
        (
            'attribution: "Priya, emergency room nurse and mom of one"',
            'attribution: "Priya, emergency room nurse on nights, mom of one, and a reluctant runner"',
        ),
        (
            'title: "Research on parenting and family life"',
            'title: "Research on parenting, family life and work"',
        ),
        ('by: "Pew Research Center"', 'by: "the Pew Research Center, a nonpartisan fact tank in Washington"'),
        ('link: "https://www.pewresearch.org/"', f'link: "{long_url}"'),
        ("    care.\n", f"    care. Read [the long study]({long_url}) when you can.\n"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    recipient = Recipient(
        4217, "alexandra.catherine.montgomery-smythe.worthington@example.com", LONG_NAMES[0]
    )

    plain = part(parse(build(settings, render(load_issue(path), settings), recipient)), "plain")

    assert long_lines(plain.replace("\r\n", "\n")) == []
    lines = [line.strip() for line in plain.splitlines()]
    assert long_url in lines, "the button link alone on its line"
    assert f"({long_url})" in lines, "a Markdown link's URL alone on its line"
    assert recipient.email in lines
    assert "Name it to tame it, and then name it once more, out loud" in " ".join(plain.split())
