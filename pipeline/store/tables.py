"""Every table of the store, on one ``metadata`` (SQLAlchemy Core; the schema itself is made by migrations).

A test compares this module with the migrated schema on SQLite and PostgreSQL, so a table changed here
without a migration in ``pipeline/store/migrations/versions/`` fails the suite.

    subscribers         one row per person (``email_key`` is the case-folded address, unique); an id is
                        never handed out twice, on any engine, so a link made for one person stays theirs
    subscriber_tags     (subscriber_id, tag); the (tag, subscriber_id) index keeps segments fast
    suppressions        keyed hashes of addresses that must never be mailed or re-imported
    subscriber_events   append-only consent log; never holds an address
    campaigns           one issue sent to one audience, with the issue as rendered when it started
                        (the email, and its content for the archive's web page); or one welcome
                        step (``kind``), which stays open for each new reader as their day comes
    deliveries          the ledger: one row per recipient of a campaign, saying what happened
    dispatch_runs       sending processes, so rows a dead one left ``sending`` are known to be in doubt
    leases, schedule_decisions   the scheduler: one instance at a time, each issue decided once
    delivery_events     what the provider reported back (bounces, opens, clicks…), de-duplicated
    confirmations       when the last double opt-in confirmation went out
    welcome_enrollments who joined the welcome series and when: its steps are timed from that moment
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

from pipeline.store.statuses import CampaignKind, CampaignStatus, DeliveryStatus, SubscriberStatus, one_of

EMAIL_LENGTH = 320
TAG_LENGTH = 100

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python on every engine (SQLite stores naive UTC text, which sorts correctly)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def id_type() -> TypeEngine[int]:
    """BIGINT on PostgreSQL; INTEGER on SQLite so the key stays the rowid (autoincrementing, fast)."""
    return BigInteger().with_variant(Integer, "sqlite")


def json_type() -> TypeEngine[Any]:
    """JSON text on SQLite, JSONB on PostgreSQL (indexable, compared by value)."""
    return JSON().with_variant(JSONB(), "postgresql")


subscribers = Table(
    "subscribers",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("email", String(EMAIL_LENGTH), nullable=False),  # as given, domain normalised
    Column("email_key", String(EMAIL_LENGTH), nullable=False),  # lower-cased: the identity
    Column("address_hash", String(64), nullable=False),  # keyed hash of email_key, for suppressions
    Column("name", String(200)),
    Column("status", String(16), nullable=False),
    Column("attributes", json_type(), nullable=False),
    Column("timezone", String(64)),
    Column("source", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("confirmed_at", UtcDateTime()),
    Column("unsubscribed_at", UtcDateTime()),
    Column("updated_at", UtcDateTime(), nullable=False),
    CheckConstraint(one_of("status", SubscriberStatus), "status"),
    Index(None, "email_key", unique=True),
    Index(None, "address_hash"),
    Index(None, "status", "id"),
    Index(None, "created_at"),
    # SQLite would otherwise hand an erased person's id to the next one added (PostgreSQL never does).
    sqlite_autoincrement=True,
)

subscriber_tags = Table(
    "subscriber_tags",
    metadata,
    Column(
        "subscriber_id",
        id_type(),
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tag", String(TAG_LENGTH), primary_key=True),
    Index(None, "tag", "subscriber_id"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("address_hash", String(64), primary_key=True),
    Column("reason", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

subscriber_events = Table(
    "subscriber_events",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    # No foreign key: the log outlives an erased subscriber and keeps only the (meaningless) number.
    Column("subscriber_id", id_type()),
    Column("at", UtcDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16)),
    Column("actor", String(200), nullable=False),
    Column("detail", json_type(), nullable=False),
    Index(None, "subscriber_id", "id"),
)


campaigns = Table(
    "campaigns",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("issue_slug", String(200), nullable=False),
    Column("segments", String(1000), nullable=False),  # sorted, comma-separated: identity with the slug
    Column("subject", String(500), nullable=False),
    Column("preheader", String(500), nullable=False),
    Column("html", Text(), nullable=False),  # rendered once, with placeholders: what every copy is made of
    Column("text", Text(), nullable=False),
    # The issue's content for its archive page and feed entry, as sent; NULL before revision 0007.
    Column("web_html", Text()),
    Column("content_hash", String(64), nullable=False),
    Column("transport", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(500)),
    Column("send_after", UtcDateTime()),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime()),
    Column("finished_at", UtcDateTime()),
    # The pace shared by every process sending the campaign: when its last reserved message may go.
    Column("paced_until", UtcDateTime()),
    # A dated issue, or a welcome step (slug welcome/NN-slug, no segments, rows added as readers' days come).
    Column("kind", String(16), nullable=False, server_default=CampaignKind.ISSUE.value),
    # The web links of the HTML in order, each once: a tracked link names its place in this list, and
    # the redirect goes to the URL there and nowhere else. A link keeps its place for good; NULL before
    # revision 0009 (such a campaign's links are never tracked).
    Column("links", json_type()),
    # A subject test (``pipeline.dispatch.subjects``, revision 0010): the subjects in order, NULL for a
    # campaign with one; and the place of the one everyone outside the samples gets, once chosen.
    Column("subjects", json_type()),
    Column("winner", SmallInteger()),
    CheckConstraint(one_of("status", CampaignStatus), "status"),
    CheckConstraint(one_of("kind", CampaignKind), "kind"),
    Index(None, "issue_slug", "segments", unique=True),
)

HAS_MESSAGE_ID = text("message_id IS NOT NULL")

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("campaign_id", id_type(), ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    # No foreign key: the ledger outlives an erased subscriber (whose address is scrubbed from it).
    Column("subscriber_id", id_type(), nullable=False),
    Column("email", String(EMAIL_LENGTH), nullable=False),
    Column("name", String(200)),
    Column("timezone", String(64)),
    Column("status", String(16), nullable=False),
    Column("send_at", UtcDateTime()),  # not before this time (per-recipient time zones); NULL: now
    Column("run_id", String(32)),  # the dispatch run that claimed the row
    Column("batch_id", String(48)),  # the claim it was sent in: outcomes are recorded per batch
    Column("claimed_at", UtcDateTime()),
    Column("message_id", String(255)),
    Column("error", String(1000)),
    # The place in campaigns.subjects of the subject this row's sample gets; -1: the row waits for the
    # test's winner; NULL: the campaign tests no subjects.
    Column("variant", SmallInteger()),
    CheckConstraint(one_of("status", DeliveryStatus), "status"),
    Index(None, "campaign_id", "subscriber_id", unique=True),
    Index(None, "campaign_id", "status", "id"),
    # A bounce without a VERP token names its message by Message-ID. Rows that have none are not in
    # it, so recording a batch inserts each row's entry instead of moving it from NULL.
    Index(None, "message_id", sqlite_where=HAS_MESSAGE_ID, postgresql_where=HAS_MESSAGE_ID),
    # A person's last messages (soft bounces in a row): a few dozen rows a year each, sorted when read.
    # Not (subscriber_id, claimed_at), whose every entry each claim moved.
    Index(None, "subscriber_id"),
)

dispatch_runs = Table(
    "dispatch_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("campaign_id", id_type(), ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("heartbeat_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime()),
    Index(None, "campaign_id", "ended_at"),
)
"""One row per sending process: rows it left ``sending`` are in doubt once it is known dead."""

leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("acquired_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)
"""Named leases (``scheduler``): one holder at a time; an expired lease may be taken over."""

schedule_decisions = Table(
    "schedule_decisions",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("issue_slug", String(200), nullable=False),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("campaign_id", id_type(), ForeignKey("campaigns.id", ondelete="SET NULL")),
    Column("decided_at", UtcDateTime(), nullable=False),
    Column("detail", String(500)),
    CheckConstraint("decision IN ('started', 'missed')", "decision"),
    Index(None, "issue_slug", unique=True),
)
"""What the scheduler decided about each issue, once: started (its campaign) or missed (too late)."""

delivery_events = Table(
    "delivery_events",
    metadata,
    Column("id", id_type(), primary_key=True, autoincrement=True),
    Column("sg_event_id", String(100)),
    Column("kind", String(32), nullable=False),
    Column("campaign_id", id_type(), ForeignKey("campaigns.id", ondelete="SET NULL")),
    Column("subscriber_id", id_type()),
    Column("url", String(2000)),
    Column("reason", String(500)),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Index(None, "sg_event_id", unique=True),
    Index(None, "campaign_id", "kind"),
)
"""What the provider reported back (delivered, open, click, bounce, …), once per ``sg_event_id``."""

confirmations = Table(
    "confirmations",
    metadata,
    Column("subscriber_id", id_type(), ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("sent_at", UtcDateTime(), nullable=False),
)
"""When a double opt-in confirmation last went to an unconfirmed subscriber (at most one an hour)."""

welcome_enrollments = Table(
    "welcome_enrollments",
    metadata,
    Column("subscriber_id", id_type(), ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("enrolled_at", UtcDateTime(), nullable=False),
    Column("source", String(200), nullable=False),  # what enrolled them: confirm-link, admin, import:FILE
    Index(None, "enrolled_at"),
)
"""Who joined the welcome series, once each, and when: a step ``after: 3d`` is due three days after
``enrolled_at``. A row outlives leaving (so coming back never restarts the series); erasure deletes it."""
