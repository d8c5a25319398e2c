"""The bounce mailbox: an IMAP folder, or a local Maildir or mbox; read, then what was read moved away.

Each kind lists the messages waiting (``pending``), hands them over in batches (``fetch``) and moves
the ones that were read to the processed folder (``done``), so the next run never sees them again.
Messages that are no report are never moved: they stay where they arrived, for a person to read.

IMAP messages are fetched with ``BODY.PEEK`` (nothing is marked read on the way), then marked
``\\Seen`` and moved with ``UID MOVE`` (RFC 6851, offered by Gmail, Outlook.com, Yahoo, Dovecot and
Cyrus), which moves them in one step: no message is ever in both folders, or in neither. A Maildir's
processed folder is its Maildir++ subfolder (``.Processed``, each message renamed into it); an mbox's
is a second mbox beside it (the standard library's ``mailbox``, which locks it as MTAs do).
The password comes from ``IMAP_PASSWORD`` and appears in no message.
"""

from __future__ import annotations

import contextlib
import imaplib
import mailbox
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import SettingsError
from pipeline.settings import ImapSettings, Settings, secret

_UID = re.compile(rb"UID (\d+)")


@dataclass(frozen=True, slots=True)
class Mail:
    ref: str
    """Where the message is in its mailbox (IMAP UID, Maildir key, mbox key)."""
    raw: bytes


class Mailbox(Protocol):
    where: str
    """The mailbox as the operator knows it (``imap://user@host:993/INBOX``, a path)."""

    def pending(self) -> list[str]:
        """The refs of every message waiting in the mailbox."""
        ...

    def fetch(self, refs: Sequence[str]) -> list[Mail]: ...

    def done(self, refs: Sequence[str]) -> None:
        """Move these messages to the processed folder: they were read and recorded."""
        ...

    def close(self) -> None: ...


def open_mailbox(settings: Settings) -> Mailbox:
    """The mailbox ``[bounces]`` names; ``SettingsError`` naming the key when it cannot be opened."""
    config = settings.bounces
    if config.mailbox is None:
        raise SettingsError(
            'bounces.mailbox: not set; set it to "imap" (with [bounces.imap]) or to "maildir" or "mbox" '
            "(with bounces.path)"
        )
    if config.mailbox == "imap":
        return ImapMailbox(config.imap, secret("IMAP_PASSWORD"), config.processed_folder)
    if config.path is None:
        raise SettingsError(f"bounces.path: not set, but bounces.mailbox is {config.mailbox}")
    path = settings.path(config.path)
    if config.mailbox == "maildir":
        return MaildirMailbox(path, config.processed_folder)
    return MboxMailbox(path, config.processed_folder)


def _quoted(name: str) -> str:
    """An IMAP mailbox name as a quoted string (names may hold spaces)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(refs: Sequence[str]) -> str:
    """``["1", "2", "3", "7"]`` → ``"1:3,7"``: a UID set that stays short for thousands of messages."""
    numbers = sorted({int(ref) for ref in refs})
    ranges: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        ranges.append(str(start) if start == previous else f"{start}:{previous}")
        if number is not None:
            start = previous = number
    return ",".join(ranges)


class ImapMailbox:
    def __init__(self, config: ImapSettings, password: str | None, processed: str) -> None:
        if not config.username:
            raise SettingsError("bounces.imap.username: not set; the password comes from IMAP_PASSWORD")
        if not password:
            raise SettingsError(
                "IMAP_PASSWORD: not set, but bounces.mailbox is imap (set it in the environment)"
            )
        self.config = config
        self.processed = processed
        self.where = f"imap://{config.username}@{config.host}:{config.port}/{config.folder}"
        self.connection = self._connect()
        try:
            self._check(self.connection.login(config.username, password), "login")
            capabilities = self._check(self.connection.capability(), "CAPABILITY")
            if b"MOVE" not in b" ".join(capabilities).upper().split():
                raise SettingsError(
                    f"bounces.imap: {config.host} does not offer MOVE (RFC 6851), which moving read "
                    "reports to the processed folder needs"
                )
            self._check(self.connection.select(_quoted(config.folder)), f"SELECT {config.folder}")
            self._ensure_folder(processed)
        except (imaplib.IMAP4.error, OSError, SettingsError) as exc:
            self.close()
            if isinstance(exc, SettingsError):
                raise
            raise SettingsError(f"bounces.imap: {self.where}: {exc}") from None

    def _connect(self) -> imaplib.IMAP4:
        config = self.config
        try:
            if config.security == "tls":
                context = ssl.create_default_context()
                return imaplib.IMAP4_SSL(
                    config.host, config.port, ssl_context=context, timeout=config.timeout
                )
            connection = imaplib.IMAP4(config.host, config.port, timeout=config.timeout)
            if config.security == "starttls":
                connection.starttls(ssl.create_default_context())
            return connection
        except (OSError, imaplib.IMAP4.error) as exc:
            raise SettingsError(f"bounces.imap: cannot reach {config.host}:{config.port}: {exc}") from None

    @staticmethod
    def _check(answer: tuple[str, list[Any]], what: str) -> list[Any]:
        """imaplib's data (bytes, and (header, literal) pairs for FETCH) if the server said OK."""
        status, data = answer
        if status != "OK":
            text = b" ".join(item for item in data if isinstance(item, bytes)).decode("utf-8", "replace")
            raise imaplib.IMAP4.error(f"{what} refused: {text}")
        return data

    def _ensure_folder(self, name: str) -> None:
        _status, listed = self.connection.list('""', _quoted(name))
        if not [item for item in listed if item]:
            self._check(self.connection.create(_quoted(name)), f"CREATE {name}")

    def _uid(self, command: str, *args: str) -> list[Any]:
        """``UID command args``; a refusal or a dropped connection is an error naming the mailbox (what
        was recorded before it stays recorded, and the next run reads the rest)."""
        try:
            return self._check(self.connection.uid(command, *args), command)
        except (imaplib.IMAP4.error, OSError) as exc:
            raise SettingsError(f"bounces.imap: {self.where}: {exc}") from None

    def pending(self) -> list[str]:
        data = self._uid("SEARCH", "UNDELETED")
        return [ref.decode("ascii") for ref in b" ".join(data).split()]

    def fetch(self, refs: Sequence[str]) -> list[Mail]:
        if not refs:
            return []
        data = self._uid("FETCH", uid_set(refs), "(UID BODY.PEEK[])")
        found: list[Mail] = []
        for item in data:
            if isinstance(item, tuple) and (uid := _UID.search(item[0])):
                found.append(Mail(uid[1].decode("ascii"), item[1]))
        return found

    def done(self, refs: Sequence[str]) -> None:
        if not refs:
            return
        refs_set = uid_set(refs)
        self._uid("STORE", refs_set, "+FLAGS.SILENT", r"(\Seen)")
        self._uid("MOVE", refs_set, _quoted(self.processed))

    def close(self) -> None:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):  # already gone: no goodbye to say
            self.connection.logout()


class MaildirMailbox:
    """A Maildir read as files: each message is one, and done ones are renamed (atomically, never
    copied) into the Maildir++ subfolder ``.FOLDER`` with the Seen flag, as Dovecot and mail clients
    read it."""

    def __init__(self, path: Path, processed: str) -> None:
        if not all((path / sub).is_dir() for sub in ("cur", "new", "tmp")):
            raise SettingsError(f"bounces.path: {path} is not a Maildir (it needs cur/, new/ and tmp/)")
        self.where = str(path)
        self.path = path
        self.target = path / f".{processed}"

    def pending(self) -> list[str]:
        return [
            f"{sub}/{entry.name}"
            for sub in ("new", "cur")
            for entry in sorted(os.scandir(self.path / sub), key=lambda e: e.name)
            if entry.is_file() and not entry.name.startswith(".")
        ]

    def fetch(self, refs: Sequence[str]) -> list[Mail]:
        return [Mail(ref, (self.path / ref).read_bytes()) for ref in refs]

    def done(self, refs: Sequence[str]) -> None:
        for sub in ("cur", "new", "tmp"):
            (self.target / sub).mkdir(parents=True, exist_ok=True)
        (self.target / "maildirfolder").touch()
        for ref in refs:
            name, _, flags = ref.partition("/")[2].partition(":2,")
            seen = "".join(sorted(set(flags) | {"S"}))
            os.rename(self.path / ref, self.target / "cur" / f"{name}:2,{seen}")

    def close(self) -> None:
        return None  # nothing held open between calls


class MboxMailbox:
    """An mbox file, locked while it is read (as MTAs and mail clients lock it); read messages move to
    the mbox ``PATH.FOLDER`` beside it."""

    def __init__(self, path: Path, processed: str) -> None:
        if not path.is_file():
            raise SettingsError(f"bounces.path: {path} is not an mbox file")
        self.where = str(path)
        self.box = mailbox.mbox(path, create=False)
        self.box.lock()
        self.target = path.with_name(f"{path.name}.{processed}")
        self.keys = {str(key): key for key in self.box.iterkeys()}
        """The mailbox's own keys (numbers, whatever typeshed says) by the refs handed out."""

    def pending(self) -> list[str]:
        return list(self.keys)

    def fetch(self, refs: Sequence[str]) -> list[Mail]:
        return [Mail(ref, self.box.get_bytes(self.keys[ref])) for ref in refs]

    def done(self, refs: Sequence[str]) -> None:
        target = mailbox.mbox(self.target, create=True)
        target.lock()
        try:
            for ref in refs:
                target.add(self.box.get_message(self.keys[ref]))
            target.flush()
        finally:
            target.unlock()
            target.close()
        for ref in refs:
            self.box.discard(self.keys.pop(ref))
        self.box.flush()

    def close(self) -> None:
        self.box.unlock()
        self.box.close()
