"""Mail as the tests read it: .eml bytes parsed as a mail client would, and the outbox transport's folder
(one sub-folder per campaign), opened and read the same way by every test that sends through it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from pipeline.settings import Settings
from pipeline.transports.base import Outcome, Transport
from pipeline.transports.outbox import OutboxTransport


def parse_message(data: bytes) -> EmailMessage:
    """``data`` parsed with the modern policy, so headers and bodies read as a mail client shows them."""
    parsed = message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def outbox_transport(settings: Settings) -> OutboxTransport:
    """The outbox transport writing where ``settings`` say, without fsync: tests need no durability."""
    return OutboxTransport(settings.path(settings.delivery.outbox_dir), fsync=False)


class UnknowingOutbox(OutboxTransport):
    """The outbox, blind to its own files when asked about rows in doubt, as SMTP is to what a server
    did with a message: rows in doubt stay in doubt, for the operator."""

    def settle(self, campaign_id: int, slug: str, rows: list[tuple[int, str]]) -> list[Outcome]:
        return []


def unknowing_outbox(settings: Settings) -> UnknowingOutbox:
    """An outbox transport that cannot settle rows in doubt (see ``UnknowingOutbox``)."""
    return UnknowingOutbox(settings.path(settings.delivery.outbox_dir), fsync=False)


def outbox_opener(settings: Settings) -> Callable[[str], Transport]:
    """A scheduler's ``transports=``: whatever transport a campaign names, it goes to the outbox."""

    def open_outbox(_name: str) -> Transport:
        return outbox_transport(settings)

    return open_outbox


def outbox_files(folder: Path) -> list[Path]:
    """Every .eml under the outbox ``folder``, sorted by campaign folder and then file name."""
    return sorted(folder.glob("*/*.eml"))


def outbox_messages(settings: Settings) -> list[EmailMessage]:
    """Every message the outbox transport wrote where ``settings`` say, parsed, oldest name first."""
    return [
        parse_message(path.read_bytes()) for path in outbox_files(settings.path(settings.delivery.outbox_dir))
    ]


def delivered(settings: Settings) -> Counter[tuple[str, str]]:
    """(issue slug, address) of every message in the outbox, counted: more than 1 is a resend."""
    found: Counter[tuple[str, str]] = Counter()
    for path in outbox_files(settings.path(settings.delivery.outbox_dir)):
        slug = path.parent.name.split("-", 1)[1]
        found[(slug, path.stem.split("-", 1)[1])] += 1
    return found
