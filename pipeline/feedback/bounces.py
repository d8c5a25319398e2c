"""`newsletter bounces`: the bounce mailbox read, each report tied to its message, recorded like SendGrid's.

Each report is tied to the message it is about, most certain way first:

1. the VERP token in an address it was sent to (``bounces+TOKEN@…``: the ledger row, signed for the
   address the row was sent to; ``pipeline.transports.returnpath``);
2. the returned message's Message-ID, when exactly one ledger row has it (SMTP gives every message
   its own);
3. the returned message's List-Unsubscribe link, signed for its subscriber and address (the person
   is known, the campaign is not);
4. the recipient address the report names (Original-Recipient, Final-Recipient, Original-Rcpt-To).

What it found becomes a ``delivery_events`` row through ``feedback.events.store_events``, the path of
SendGrid's webhook: hard bounces and complaints change the subscriber's status (never bringing
anyone back), reports and the health guard count them. The key of a report tied to its ledger row is
``mail:ROW:KIND`` (one hard bounce per message, however many reports say so); any other report's is
``mail:`` and a hash of its own Message-ID: a report read twice is stored once.

Soft bounces count toward ``bounces.soft_bounce_limit``: when the person's last N sent messages all
soft-bounced (or bounced), the address counts as bounced. Any message sent to them since that did not
come back breaks the run: over SMTP the only sign of a delivery is a bounce that never came, and a
bounce that comes late re-judges the run when it is read, so the order reports arrive in does not
matter. Only reports tied to their campaign count (the run is over messages).

Messages that are no report are left in the mailbox and listed; everything read is moved away.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import distinct, func, select

from pipeline.audience.fields import is_control, parse_email
from pipeline.audience.subscribers import set_status
from pipeline.errors import AudienceError, SettingsError, TokenError
from pipeline.feedback import dsn, health
from pipeline.feedback.events import MAX_ID, STATUS_BY_KIND, ProviderEvent, Recorded, scrub, store_events
from pipeline.feedback.mailbox import Mail, Mailbox, open_mailbox
from pipeline.render.links import UNSUBSCRIBE
from pipeline.settings import Settings
from pipeline.store.engine import Store, in_chunks, utcnow
from pipeline.store.statuses import DeliveryStatus, SubscriberStatus
from pipeline.store.tables import deliveries, delivery_events, subscribers
from pipeline.tokens import compact_claim
from pipeline.transports.returnpath import PURPOSE, ReturnPath

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int], None]
"""Told (messages read, messages waiting) after each batch."""
ACTOR = "bounces"
BATCH = 200
"""Messages fetched, recorded and moved at a time: a crash loses at most one batch's move (and the
re-read then finds every event stored already)."""
SEVERITY = (dsn.COMPLAINT, dsn.HARD, dsn.SOFT, dsn.BLOCKED, dsn.DEFERRED, dsn.DELIVERED, dsn.OTHER)
"""When one report names several findings about one message, the first of these is what happened."""
COUNTED = {dsn.HARD: "hard", dsn.SOFT: "soft", dsn.COMPLAINT: "complaints", dsn.BLOCKED: "blocked"}
IGNORED = {dsn.DEFERRED: "delayed", dsn.DELIVERED: "delivered", dsn.OTHER: "nothing to do"}
STREAK_KINDS = (dsn.SOFT, dsn.HARD)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message left in the mailbox: it is no report this reader understands."""

    ref: str
    sender: str
    subject: str
    why: str


@dataclass(slots=True)
class BounceRun:
    """What one read of the mailbox did."""

    where: str
    read: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    """Reports about people on the list: ``hard``, ``soft``, ``complaints``, ``blocked``."""
    ignored: Counter[str] = field(default_factory=Counter)
    """Reports that change nothing, by why: delayed, delivered, nobody on the list, already counted…"""
    unknown: list[Unreadable] = field(default_factory=list)
    status_changes: int = 0
    soft_to_hard: int = 0
    """People whose soft bounces reached ``soft_bounce_limit`` in a row now."""
    paused: list[tuple[int, str]] = field(default_factory=list)
    """Campaigns the health guard paused, with why."""
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class _Row:
    delivery_id: int
    campaign_id: int
    subscriber_id: int
    email: str


@dataclass(frozen=True, slots=True)
class _Found:
    """One report's events before they are stored, with the label each counts under once it is."""

    event: ProviderEvent
    label: str


def read_mailbox(
    store: Store, settings: Settings, *, on_progress: ProgressCallback | None = None
) -> BounceRun:
    """``newsletter bounces``: open the mailbox ``[bounces]`` names, process it, close it."""
    box = open_mailbox(settings)
    try:
        return process_mailbox(store, settings, box, on_progress=on_progress)
    finally:
        box.close()


def tick_chore(store: Store, settings: Settings) -> Callable[[], None]:
    """What `newsletter run` does on each tick with ``bounces.every_tick``: read the mailbox and log
    what it found. A mailbox that is not configured is an error now, not on every tick."""
    if settings.bounces.mailbox is None:
        raise SettingsError("bounces.every_tick: on, but bounces.mailbox is not set")

    told: set[str] = set()
    """Messages left in the mailbox that were logged already: once each, not once a minute."""

    def chore() -> None:
        run = read_mailbox(store, settings)
        new = [unread for unread in run.unknown if unread.ref not in told]
        if run.read > len(run.unknown) - len(new):
            log.info("%s", summary(run))
        for unread in new:
            log.warning("%s: left in the mailbox: %s", run.where, describe(unread))
        told.clear()
        told.update(unread.ref for unread in run.unknown)
        for campaign_id, reason in run.paused:
            log.warning("campaign %s %s", campaign_id, reason)

    return chore


def summary(run: BounceRun) -> str:
    """One line: ``12 read from WHERE: 3 hard, 2 soft, 1 complaint, 1 blocked; 4 ignored (…); 1 unknown``."""
    shown = {
        label: label.removesuffix("s") if run.counts[label] == 1 else label for label in COUNTED.values()
    }
    counts = ", ".join(f"{run.counts[label]:,} {shown[label]}" for label in COUNTED.values())
    ignored = sum(run.ignored.values())
    why = ", ".join(f"{n:,} {label}" for label, n in sorted(run.ignored.items()))
    line = f"{run.read:,} read from {run.where}: {counts}; {ignored:,} ignored" + (f" ({why})" if why else "")
    line += f"; {len(run.unknown):,} unknown; {run.status_changes:,} status changes"
    if run.soft_to_hard:
        line += f" ({run.soft_to_hard:,} after soft bounces in a row)"
    return line


def describe(unread: Unreadable) -> str:
    """A message left in the mailbox, as a person finds it there."""
    return f'#{unread.ref} from {unread.sender or "(nobody)"}, "{unread.subject}": {unread.why}'


def process_mailbox(
    store: Store,
    settings: Settings,
    box: Mailbox,
    *,
    on_progress: ProgressCallback | None = None,
    now: dt.datetime | None = None,
) -> BounceRun:
    """Read every report waiting in ``box``, record what each says and move it to the processed folder."""
    started = time.monotonic()
    run = BounceRun(box.where)
    refs = box.pending()
    reader = _Reader(store, settings)
    for chunk in _batches(refs, BATCH):
        mails = box.fetch(chunk)
        left = reader.read(mails, run, now or utcnow())
        box.done([mail.ref for mail in mails if mail.ref not in left])
        if on_progress is not None:
            on_progress(run.read, len(refs))
    run.elapsed = time.monotonic() - started
    return run


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    return (items[start : start + size] for start in range(0, len(items), size))


class _Reader:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        path = settings.bounces.return_path
        self.return_path = ReturnPath(path, store.signer) if path else None
        self.unsubscribe = re.compile(re.escape(settings.newsletter.base_url) + r"/u/([\w-]+\.[\w-]+)")
        self.soft_limit = settings.bounces.soft_bounce_limit

    def read(self, mails: Sequence[Mail], run: BounceRun, now: dt.datetime) -> set[str]:
        """Record what ``mails`` report; the refs of those that are no report (to leave in place)."""
        reports: list[tuple[Mail, dsn.Report]] = []
        left: set[str] = set()
        for mail in mails:
            run.read += 1
            try:
                reports.append((mail, dsn.read_report(mail.raw)))
            except dsn.NotAReport as exc:
                run.unknown.append(_unreadable(mail, str(exc)))
                left.add(mail.ref)
        lookup = _Lookup(self, [report for _mail, report in reports])
        found = [item for mail, report in reports for item in self._events(mail, report, lookup, now)]
        recorded = store_events(self.store, [item.event for item in found], now=now, actor=ACTOR)
        run.status_changes += recorded.status_changes
        counted: set[str] = set()
        for item in found:
            if item.event.sg_event_id not in recorded.new or item.event.sg_event_id in counted:
                run.ignored["already counted"] += 1
                continue
            counted.add(item.event.sg_event_id)
            if item.label in COUNTED.values():
                run.counts[item.label] += 1
            else:
                run.ignored[item.label] += 1
        self._judge_streaks(found, recorded, run)
        for campaign_id in sorted(recorded.campaigns):
            reason = health.enforce(self.store, campaign_id, self.settings.web)
            if reason is not None:
                run.paused.append((campaign_id, reason))
        return left

    def _events(self, mail: Mail, report: dsn.Report, lookup: _Lookup, now: dt.datetime) -> list[_Found]:
        """The events of one report: one for its ledger row when it is tied to one, else one per finding."""
        row = lookup.row_of(report)
        occurred = report.date.astimezone(dt.UTC) if report.date else now
        if row is not None:
            finding = min(report.findings, key=lambda f: SEVERITY.index(f.kind))
            address_key = _key(row.email)
            who = (row.subscriber_id, address_key) if address_key else None
            return self._found(
                finding, f"mail:{row.delivery_id}:{finding.kind}", who, row.campaign_id, occurred
            )
        base = hashlib.sha256((report.message_id or "").encode() or mail.raw).hexdigest()[:40]
        found = []
        for index, finding in enumerate(report.findings):
            who = lookup.subscriber_of(report, finding)
            found += self._found(finding, f"mail:{base}:{index}", who, None, occurred)
        return found

    def _found(
        self,
        finding: dsn.Finding,
        key: str,
        who: tuple[int, str] | None,
        campaign_id: int | None,
        occurred: dt.datetime,
    ) -> list[_Found]:
        if finding.kind == dsn.OTHER:
            return []  # nothing worth a row: another Feedback-Type, an Action RFC 3464 lacks
        label = COUNTED.get(finding.kind) or IGNORED.get(finding.kind, "nothing to do")
        if who is None and finding.kind in COUNTED:
            label = "nobody on the list"
        event = ProviderEvent(
            kind=finding.kind,
            sg_event_id=key,
            campaign_id=campaign_id,
            subscriber_id=who[0] if who else None,
            delivery_id=None,
            email=who[1] if who else None,
            url=None,
            reason=scrub(_storable(finding.reason), 500),
            occurred_at=occurred,
            status=STATUS_BY_KIND.get(finding.kind),
        )
        return [_Found(event, label)]

    def _judge_streaks(self, found: Sequence[_Found], recorded: Recorded, run: BounceRun) -> None:
        """New soft bounces tied to their campaign: has the person's run of them reached the limit?"""
        people = {
            (item.event.subscriber_id, item.event.campaign_id)
            for item in found
            if item.event.kind == dsn.SOFT
            and item.event.sg_event_id in recorded.new
            and item.event.subscriber_id is not None
            and item.event.campaign_id is not None
        }
        for subscriber_id, campaign_id in sorted(people, key=str):
            assert subscriber_id is not None and campaign_id is not None
            if not self._soft_run_complete(subscriber_id):
                continue
            detail = {"event": dsn.SOFT, "in_a_row": self.soft_limit, "campaign_id": campaign_id}
            try:
                changed = set_status(
                    self.store, subscriber_id, SubscriberStatus.BOUNCED, actor=ACTOR, detail=detail
                )
            except AudienceError:
                continue  # complained meanwhile (final) or erased: never forced
            run.status_changes += changed
            run.soft_to_hard += changed

    def _soft_run_complete(self, subscriber_id: int) -> bool:
        """Did each of the last ``soft_bounce_limit`` messages sent to the person bounce?"""
        d, e = deliveries.c, delivery_events.c
        with self.store.read() as conn:
            last = list(
                conn.scalars(
                    select(d.campaign_id)
                    .where(d.subscriber_id == subscriber_id, d.status == DeliveryStatus.SENT)
                    .order_by(d.claimed_at.desc(), d.id.desc())
                    .limit(self.soft_limit)
                )
            )
            if len(last) < self.soft_limit:
                return False
            bounced = conn.execute(
                select(func.count(distinct(e.campaign_id))).where(
                    e.subscriber_id == subscriber_id, e.campaign_id.in_(last), e.kind.in_(STREAK_KINDS)
                )
            ).scalar_one()
        return int(bounced) == len(set(last))


class _Lookup:
    """What the store says about everything a batch of reports names, fetched in a few queries."""

    def __init__(self, reader: _Reader, reports: Sequence[dsn.Report]) -> None:
        self.reader = reader
        signer = reader.store.signer
        claimed_rows = {_claim(compact_claim, t) for r in reports for t in self.verp_tokens(r)} - {None}
        claimed_people = {_claim(signer.claimed_id, t) for r in reports for t in self.link_tokens(r)} - {None}
        message_ids = {r.returned_message_id for r in reports if r.returned_message_id}
        keys = {_key(a) for r in reports for f in r.findings for a in f.addresses} - {None}
        d, s = deliveries.c, subscribers.c
        columns = (d.id, d.campaign_id, d.subscriber_id, d.email)
        self.rows: dict[int, _Row] = {}
        self.by_message_id: dict[str, list[_Row]] = {}
        self.emails: dict[int, str] = {}
        self.by_key: dict[str, int] = {}
        with reader.store.read() as conn:
            for ids in in_chunks(claimed_rows):
                for delivery_id, campaign_id, subscriber_id, email in conn.execute(
                    select(*columns).where(d.id.in_(ids))
                ):
                    self.rows[delivery_id] = _Row(delivery_id, campaign_id, subscriber_id, email)
            for some in in_chunks(message_ids):
                for message_id, delivery_id, campaign_id, subscriber_id, email in conn.execute(
                    select(d.message_id, *columns).where(d.message_id.in_(some))
                ):
                    row = _Row(delivery_id, campaign_id, subscriber_id, email)
                    self.by_message_id.setdefault(message_id, []).append(row)
            for people in in_chunks(claimed_people):
                self.emails.update(
                    (i, e) for i, e in conn.execute(select(s.id, s.email).where(s.id.in_(people)))
                )
            for addresses in in_chunks(keys):
                query = select(s.email_key, s.id).where(s.email_key.in_(addresses))
                self.by_key.update((key, i) for key, i in conn.execute(query))

    def verp_tokens(self, report: dsn.Report) -> list[str]:
        """The tokens of the VERP addresses the report was sent to or for (none while VERP is off)."""
        path = self.reader.return_path
        found = [path.token_in(address) for address in report.envelope] if path else []
        return [token for token in found if token]

    def link_tokens(self, report: dsn.Report) -> list[str]:
        """The tokens of the unsubscribe links in the returned message's List-Unsubscribe."""
        return list(self.reader.unsubscribe.findall(report.returned_unsubscribe or ""))

    def row_of(self, report: dsn.Report) -> _Row | None:
        """The ledger row a report is about: by its VERP token, else by the returned Message-ID."""
        for token in self.verp_tokens(report):
            row = self._verified_row(token)
            if row is not None:
                return row
        rows = self.by_message_id.get(report.returned_message_id or "", [])
        return rows[0] if len(rows) == 1 else None

    def _verified_row(self, token: str) -> _Row | None:
        row = self.rows.get(_claim(compact_claim, token) or 0)
        if row is None:
            return None
        try:
            self.reader.store.signer.verify_compact(PURPOSE, token, address=row.email)
        except TokenError:
            return None  # forged, mangled, or the row's address was erased since
        return row

    def subscriber_of(self, report: dsn.Report, finding: dsn.Finding) -> tuple[int, str] | None:
        """(subscriber id, address key) of a report not tied to its row: by the unsubscribe link, else
        by the recipient address it names."""
        signer = self.reader.store.signer
        for token in self.link_tokens(report):
            try:
                subscriber_id = signer.claimed_id(token)
                email = self.emails.get(subscriber_id)
                if email is None:
                    continue
                signer.verify(UNSUBSCRIBE, token, address=email)
            except TokenError:
                continue
            address_key = _key(email)
            if address_key is not None:
                return subscriber_id, address_key
        for address in finding.addresses:
            key = _key(address)
            if key is not None and key in self.by_key:
                return self.by_key[key], key
        return None


def _claim(claimed: Callable[[str], int], token: str) -> int | None:
    """The id a token claims (unchecked: it says which row to verify it against), or None when it is
    malformed or no id the store can hold."""
    try:
        number = claimed(token)
    except TokenError:
        return None
    return number if 0 < number <= MAX_ID else None


def _key(address: str) -> str | None:
    try:
        return parse_email(address).key
    except ValueError:
        return None


def _storable(text: str | None) -> str | None:
    """Report text as the store may keep it: no control characters (PostgreSQL refuses NUL)."""
    if text is None:
        return None
    return "".join(" " if is_control(ch) else ch for ch in text).strip() or None


def _unreadable(mail: Mail, why: str) -> Unreadable:
    headers = BytesHeaderParser(policy=compat32).parsebytes(mail.raw)
    return Unreadable(mail.ref, _header_text(headers.get("From")), _header_text(headers.get("Subject")), why)


def _header_text(value: object) -> str:
    """A header as a person reads it (RFC 2047 words decoded), on one line, without control characters."""
    if value is None:
        return ""
    try:
        text = str(make_header(decode_header(str(value))))
    except (ValueError, LookupError):
        text = str(value)
    return " ".join((_storable(text) or "").split())[:200]
