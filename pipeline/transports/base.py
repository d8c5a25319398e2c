"""What every transport shares: a batch in, one outcome per recipient out.

A transport never touches the store. ``Outcome.status`` is ``sent`` (the server accepted the message),
``failed`` (it refused it, with the reason), ``unsent`` (it was never handed over: the server could not
be reached or kept asking us to wait; the row goes back to the queue) or ``in_doubt`` (it may have been
accepted: a connection lost after the message was handed over). In-doubt rows are never retried silently.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.message import MessageTemplate
from pipeline.render.renderer import RenderedIssue
from pipeline.settings import Settings

OutcomeStatus = Literal["sent", "failed", "in_doubt", "unsent"]


class Envelope(NamedTuple):
    """One recipient's copy within a batch; ``delivery_id`` is its ledger row (0 for test sends)."""

    delivery_id: int
    recipient: Recipient
    fields: PersonalFields


@dataclass(frozen=True, slots=True)
class Batch:
    campaign_id: int | None
    rendered: RenderedIssue
    message: MessageTemplate
    envelopes: list[Envelope]
    send_at: int | None = None
    """Unix time at which the provider should deliver (SendGrid ``send_at``); None means now."""


class Outcome(NamedTuple):
    delivery_id: int
    status: OutcomeStatus
    message_id: str | None = None
    error: str | None = None


@dataclass(slots=True)
class TransportStats:
    """Counters a benchmark or progress display can read; transports update them."""

    requests: int = 0
    retries: int = 0
    reconnects: int = 0
    waited_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Transport(Protocol):
    name: str
    concurrency: int
    """How many ``send`` calls may run at once (parallel connections or requests)."""
    max_batch: int
    """The most envelopes one ``send`` call takes (SendGrid: 1000 personalizations)."""
    send_ahead: dt.timedelta | None
    """How far ahead the provider accepts a delivery time (``Batch.send_at``); None: send only what is due."""
    stats: TransportStats

    def send(self, batch: Batch) -> list[Outcome]:
        """Deliver the batch; one outcome per envelope, in any order. Thread-safe."""
        ...

    def close(self) -> None: ...

    def interrupt(self) -> None:
        """Cut the sends in progress short (a stop that has waited long enough): what is not yet
        handed over comes back ``unsent``; a message caught mid-handover is ``in_doubt``."""
        ...

    def settle(self, campaign_id: int, slug: str, rows: list[tuple[int, str]]) -> list[Outcome]:
        """What the transport can tell for certain about rows in doubt, (delivery id, address): ``sent``
        or ``unsent`` (never handed over, safe to send). Rows it cannot tell about are left out."""
        ...


class OpensFromSettings(Protocol):
    """A transport class: it opens itself from the settings, its secret from the environment."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Transport: ...


def all_outcomes(batch: Batch, status: OutcomeStatus, error: str | None = None) -> list[Outcome]:
    return [Outcome(e.delivery_id, status, None, error) for e in batch.envelopes]
