"""Issue 12, items 1-4: every link a credential that opens only its own door.

Reused subscriber ids, preview links, tokens in the access log, and a store other users can read.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from pipeline.audience.optin import CONFIRM
from pipeline.audience.subscribers import add_subscriber, erase, find_subscriber, subscriber_log
from pipeline.dispatch.single import send_test
from pipeline.recipient import Recipient
from pipeline.render.links import PREFERENCES, UNSUBSCRIBE, Links
from pipeline.settings import Settings
from pipeline.store.engine import Store, connect, open_store
from pipeline.tokens import PREVIEW_ID, Signer
from pipeline.web import create_app, server
from tests.fixtures.project import FIRST_ISSUE, cli_invoker
from tests.fixtures.store import TEST_KEY, snapshot, store_at
from tests.fixtures.web import OpenClient
from tests.mail import outbox_messages, outbox_transport, parse_message
from tests.paths import REPO
from tests.system import free_port
from tests.web_support import heading, link_in, path_of, person, serving

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
WAIT = 30.0
PREVIEW_PAGE = "This is a preview link: nothing was changed"


def legacy_token(purpose: str, subscriber_id: int, key: bytes = TEST_KEY) -> str:
    """A link token exactly as the pipeline signed them before this issue: for the subscriber id alone."""
    mac_key = hashlib.blake2b(key, digest_size=32, person=b"newsletter-tags").digest()
    payload = str(subscriber_id).encode()
    tag = hashlib.blake2b(purpose.encode() + b"\0" + payload, key=mac_key, digest_size=16).digest()
    return ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in (payload, tag))


def visit_every_way(client: TestClient, unsubscribe: str, preferences: str) -> list[tuple[int, str]]:
    """(status, heading) of the unsubscribe page, its one-click POST, the preferences page and its
    unsubscribe-from-everything POST (with no CSRF token: a preview has none to offer)."""
    responses = [
        client.get(unsubscribe),
        client.post(unsubscribe, data=ONE_CLICK),
        client.get(preferences),
        client.post(preferences, data={"action": "unsubscribe"}),
    ]
    return [(response.status_code, heading(response.text)) for response in responses]


# --- item 1: reused ids ---------------------------------------------------------------------------


def test_an_erased_persons_links_never_open_the_next_persons_page(
    client: TestClient, settings: Settings, store: Store
) -> None:
    """Issue 12 item 1: add old, sign its links, erase old, add new: the old links show and change
    nothing of the new person's, and the new person has an id nobody had before."""
    old = person(store, "old@example.com", name="Old Person")
    links = Links(settings, store.signer)
    unsubscribe = path_of(links.unsubscribe(old.id, old.email))
    preferences = path_of(links.preferences(old.id, old.email))
    erase(store, old.email)
    new = person(store, "new@example.com", name="New Person")
    before = snapshot(store)

    pages = [
        client.get(unsubscribe),
        client.post(unsubscribe, data=ONE_CLICK),
        client.get(preferences),
        client.post(preferences, data={"action": "unsubscribe"}),
    ]

    assert new.id > old.id
    assert [page.status_code for page in pages] == [400, 400, 400, 400]
    assert not [page for page in pages if "n***@example.com" in page.text or "New" in page.text]
    assert snapshot(store) == before
    assert find_subscriber(store, new.id).status == "active"  # type: ignore[union-attr]


def test_a_link_opens_only_for_the_address_it_was_signed_for(
    client: TestClient, settings: Settings, store: Store
) -> None:
    """Issue 12 item 1: a token carries an id, but is signed for the address too; the same id with
    another address (a store rebuilt from an export under the same key, say) opens nothing."""
    ana = person(store)
    elsewhere = path_of(Links(settings, store.signer).unsubscribe(ana.id, "someone.else@example.com"))
    before = snapshot(store)

    own = client.get(path_of(Links(settings, store.signer).unsubscribe(ana.id, ana.email)))
    other = client.post(elsewhere, data=ONE_CLICK)

    assert own.status_code == 200 and heading(own.text) == "Unsubscribe?"
    assert other.status_code == 400 and heading(other.text) == "This link does not work"
    assert snapshot(store) == before


def test_ids_are_never_handed_out_again_even_after_the_newest_person_is_erased(store: Store) -> None:
    """Issue 12 item 1: SQLite (AUTOINCREMENT) and PostgreSQL (its sequence) alike."""
    first = add_subscriber(store, "first@example.com")
    newest = add_subscriber(store, "newest@example.com")
    erase(store, newest.email)

    after = add_subscriber(store, "after@example.com")

    assert first.id < newest.id < after.id


def test_old_id_only_links_still_open_for_their_person_but_never_for_a_stranger(
    client: TestClient, store: Store
) -> None:
    """Issue 12 item 1: links in inboxes from before (signed for the id alone) keep working for the
    person who has the id, unless the id may have meant someone else: id 1 (every old preview was
    signed for it), or an erased person's; an erased person's own old link says they are not on the list."""
    first = person(store, "first@example.com")
    ana = person(store)
    gone = person(store, "gone@example.com")
    erase(store, gone.email)
    assert first.id == 1
    before = snapshot(store)

    opens = client.get(f"/u/{legacy_token(UNSUBSCRIBE, ana.id)}")
    preferences = client.get(f"/preferences/{legacy_token(PREFERENCES, ana.id)}")
    first_page = client.post(f"/u/{legacy_token(UNSUBSCRIBE, first.id)}", data=ONE_CLICK)
    gone_page = client.get(f"/u/{legacy_token(UNSUBSCRIBE, gone.id)}")

    assert (opens.status_code, heading(opens.text)) == (200, "Unsubscribe?")
    assert "a***@example.com" in opens.text
    assert (preferences.status_code, heading(preferences.text)) == (200, "Your preferences")
    assert (first_page.status_code, heading(first_page.text)) == (400, "This link is out of date")
    assert (gone_page.status_code, heading(gone_page.text)) == (200, "You are not on our list")
    assert snapshot(store) == before
    unsubscribed = client.post(f"/u/{legacy_token(UNSUBSCRIBE, ana.id)}", data=ONE_CLICK)
    assert heading(unsubscribed.text) == "You are unsubscribed"
    assert find_subscriber(store, ana.id).status == "unsubscribed"  # type: ignore[union-attr]


def test_upgrading_a_sqlite_store_stops_id_reuse_and_refuses_old_links_of_reused_ids(
    tmp_path: Path, settings: Settings, open_client: OpenClient
) -> None:
    """Issue 12 item 1: a store of before, where SQLite already gave an erased person's id to someone
    else, keeps every row and tag through the upgrade; the reused id's old links open nothing, the
    other old links still work, and no id that was ever used is handed out again."""
    url = f"sqlite:///{tmp_path / 'var' / 'old.db'}"
    with store_at(url, "0004") as old:
        add_subscriber(old, "first@example.com", tags=["toddler"])
        ana = add_subscriber(old, "ana@example.com", tags=["teen", "vip"])
        erased = add_subscriber(old, "erased@example.com")
        erase(old, erased.email)
        reused = add_subscriber(old, "reused@example.com")
        newest = add_subscriber(old, "newest@example.com")
        erase(old, newest.email)
        assert reused.id == erased.id, "SQLite reused the id before the upgrade"

    with connect(url, TEST_KEY) as store:
        client = open_client(create_app(settings, store))
        before = snapshot(store)
        pages = [
            client.get(f"/u/{legacy_token(UNSUBSCRIBE, reused.id)}"),
            client.post(f"/u/{legacy_token(UNSUBSCRIBE, reused.id)}", data=ONE_CLICK),
            client.get(f"/preferences/{legacy_token(PREFERENCES, reused.id)}"),
        ]
        ana_page = client.get(f"/u/{legacy_token(UNSUBSCRIBE, ana.id)}")
        assert [(page.status_code, heading(page.text)) for page in pages] == [
            (400, "This link is out of date")
        ] * 3
        assert not [page for page in pages if "r***@example.com" in page.text]
        assert heading(ana_page.text) == "Unsubscribe?" and "a***@example.com" in ana_page.text
        assert snapshot(store) == before
        assert find_subscriber(store, ana.id).tags == ("teen", "vip")  # type: ignore[union-attr]
        assert [event.kind for event in subscriber_log(store, ana.id)] == ["added"]

        later = add_subscriber(store, "later@example.com")

        assert later.id > newest.id


# --- item 2: previews signed for a real person ----------------------------------------------------


def _links_of(message: EmailMessage) -> tuple[str, str]:
    """The unsubscribe link of ``List-Unsubscribe`` (what Gmail's button posts to) and the preferences
    link of the text part, as paths."""
    header = str(message["List-Unsubscribe"])
    unsubscribe = header.split(">")[0].lstrip("<")
    assert unsubscribe == link_in(message, "u"), "the header and the body carry the same link"
    return path_of(unsubscribe), path_of(link_in(message, "preferences"))


def test_a_rendered_preview_changes_nothing_for_the_first_subscriber(
    client: TestClient, store: Store, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12 item 2: `newsletter render` signed its links for subscriber 1, so a forwarded preview
    unsubscribed the first real subscriber; now every page says it is a preview and changes nothing."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", TEST_KEY.decode())
    first = person(store)
    assert first.id == 1
    out = project / "rendered"
    cli_invoker(project / "settings.toml")("render", str(project / "issues" / FIRST_ISSUE), "--out", str(out))
    (eml,) = out.glob("*.eml")
    unsubscribe, preferences = _links_of(parse_message(eml.read_bytes()))
    html = next(out.glob("*.html")).read_text(encoding="utf-8")
    assert unsubscribe.rpartition("/")[2] in html
    before = snapshot(store)

    answers = visit_every_way(client, unsubscribe, preferences)

    assert answers == [(200, PREVIEW_PAGE)] * 4
    assert snapshot(store) == before
    assert find_subscriber(store, first.id).status == "active"  # type: ignore[union-attr]


def test_a_test_copy_changes_nothing_even_for_the_subscriber_it_went_to(
    client: TestClient, settings: Settings, store: Store, project: Path
) -> None:
    """Issue 12 item 2: a [TEST] copy's links (List-Unsubscribe included, RFC 8058 one-click POST
    too) are preview links: forwarded or clicked, they unsubscribe nobody."""
    ana = person(store)
    links = Links(settings, store.signer)
    outcome = send_test(
        store, settings, project / "issues" / FIRST_ISSUE, ana.email, outbox_transport(settings), links
    )
    (message,) = outbox_messages(settings)
    unsubscribe, preferences = _links_of(message)
    before = snapshot(store)

    answers = visit_every_way(client, unsubscribe, preferences)

    assert outcome.status == "sent" and str(message["Subject"]).startswith("[TEST] ")
    assert answers == [(200, PREVIEW_PAGE)] * 4
    assert snapshot(store) == before
    assert find_subscriber(store, ana.id).status == "active"  # type: ignore[union-attr]


def test_a_preview_link_signed_with_another_key_is_not_a_preview(
    client: TestClient, settings: Settings
) -> None:
    """Issue 12 item 2: only our own preview links get the preview page; a forged one is a 400."""
    forged = Links(settings, Signer(b"another-key-" * 4))
    fields = forged.preview_fields(Recipient(PREVIEW_ID, "editor@example.org"))

    response = client.get(path_of(fields.unsubscribe_url))

    assert (response.status_code, heading(response.text)) == (400, "This link does not work")


# --- item 3: tokens in the access log ------------------------------------------------------------


def test_the_access_log_names_token_routes_without_their_tokens(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12 item 3: uvicorn's access log of real requests shows `/u/…`, never a working token."""
    ana = person(store)
    links = Links(settings, store.signer)
    unsubscribe = path_of(links.unsubscribe(ana.id, ana.email))
    preferences = path_of(links.preferences(ana.id, ana.email))
    expires_at = int(dt.datetime.now(dt.UTC).timestamp()) + 3600
    confirm = f"/confirm/{store.signer.sign(CONFIRM, ana.id, expires_at=expires_at)}"
    tokens = [path.rpartition("/")[2] for path in (unsubscribe, preferences, confirm)]
    port = free_port()
    caplog.set_level(logging.INFO, logger="uvicorn.access")

    with (
        serving(server(create_app(settings, store), "127.0.0.1", port)),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client,
    ):
        statuses = [
            client.get(unsubscribe).status_code,
            client.get(f"{preferences}?done=saved").status_code,
            client.get(confirm).status_code,
            client.post(unsubscribe, data=ONE_CLICK).status_code,
            client.get("/subscribe").status_code,
        ]

    lines = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert statuses == [200, 200, 200, 200, 200]
    assert len(lines) == 5, lines
    assert not [line for line in lines if any(token in line for token in tokens)], lines
    assert [line.split(" - ", 1)[1] for line in lines] == [
        '"GET /u/… HTTP/1.1" 200',
        '"GET /preferences/…?done=saved HTTP/1.1" 200',
        '"GET /confirm/… HTTP/1.1" 200',
        '"POST /u/… HTTP/1.1" 200',
        '"GET /subscribe HTTP/1.1" 200',
    ]


# --- item 4: the store is world-readable ----------------------------------------------------------


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """The umask of a usual login shell (022), under which new files are readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("shell_umask")
def test_a_new_store_and_its_folder_are_private(settings: Settings, project: Path) -> None:
    """Issue 12 item 4: var/ is made 0700, the database and its -wal and -shm files 0600."""
    with open_store(settings) as store:
        add_subscriber(store, "ana@example.com")  # a write: SQLite now has its -wal and -shm open
        var = project / "var"
        files = sorted(var.glob("newsletter.db*"))

        assert [path.name for path in files] == ["newsletter.db", "newsletter.db-shm", "newsletter.db-wal"]
        assert mode(var) == 0o700
        assert {path.name: mode(path) for path in files} == dict.fromkeys((p.name for p in files), 0o600)
        assert mode(var / "secret.key") == 0o600


@pytest.mark.usefixtures("shell_umask")
def test_an_existing_open_store_is_tightened_and_an_open_folder_reported(
    settings: Settings, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12 item 4: a database left 0644 by an older version becomes 0600; a 0755 var/ is reported
    with the command that fixes it (the folder may hold more than ours, so it is not changed)."""
    var = project / "var"
    var.mkdir(mode=0o755)
    sqlite3.connect(var / "newsletter.db").close()
    assert mode(var / "newsletter.db") == 0o644
    caplog.set_level(logging.WARNING, logger="pipeline.store.engine")

    with open_store(settings) as store:
        add_subscriber(store, "ana@example.com")

    assert mode(var / "newsletter.db") == 0o600
    messages = [record.getMessage() for record in caplog.records]
    assert f"{var} is open to other users (mode 0755): run `chmod 700 {var}`" in messages
    assert f"{var / 'newsletter.db'} was open to other users (mode 0644): it is 0600 now" in messages


def test_the_service_creates_its_files_private() -> None:
    """Issue 12 item 4: systemd runs the scheduler with UMask=0077, so nothing it writes is readable
    by other users (outbox, journals, the store)."""
    section, service = "", []
    for line in (REPO / "deploy" / "newsletter.service").read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            service.append(line)

    assert "UMask=0077" in service
