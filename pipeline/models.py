"""SQLAlchemy 2 models: the append-only log, the donations/patients it is folded into, and the fold's bookkeeping.

Columns marked "derived" are owned by the fold: a rebuild resets and recomputes them from the log.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pipeline.fold import CENT, PatientStatus, Status

# Ids are BIGINT on MySQL but INTEGER on SQLite, where only INTEGER PRIMARY KEY aliases the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def money_to_db(value, sqlite: bool):
    """Decimal -> storage: integer cents on SQLite, DECIMAL(14,2) elsewhere. Floats are refused."""
    if value is None:
        return None
    if isinstance(value, float):
        raise TypeError("money must be Decimal, not float")
    value = Decimal(value).quantize(CENT)
    return int(value * 100) if sqlite else value


def money_from_db(value, sqlite: bool) -> Decimal | None:
    """Storage -> Decimal quantized to cents."""
    if value is None:
        return None
    if sqlite:
        return (Decimal(value) / 100).quantize(CENT)
    return Decimal(value).quantize(CENT)


def utc_to_db(value: datetime | None) -> datetime | None:
    """Aware datetime -> naive UTC (what every backend stores). A naive datetime is refused."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def utc_from_db(value) -> datetime | None:
    """Storage (a naive UTC datetime, or SQLite's text from raw queries) -> aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


class Money(TypeDecorator):
    """Decimal money with 2 places: DECIMAL(14,2) on MySQL, integer cents on SQLite.

    SQLite has no decimal type; SQLAlchemy's Numeric would bind floats there and SUM() would add
    floats. Integer cents keep storage, comparisons and sums exact, and Python only ever sees Decimal.
    """

    impl = Numeric(14, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Integer())
        return dialect.type_descriptor(Numeric(14, 2))

    def process_bind_param(self, value, dialect):
        return money_to_db(value, dialect.name == "sqlite")

    def process_result_value(self, value, dialect):
        return money_from_db(value, dialect.name == "sqlite")


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes with microseconds on every backend (DATETIME(6) on MySQL), returned aware."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "mysql":
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        return utc_to_db(value)

    def process_result_value(self, value, dialect):
        return utc_from_db(value)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    funding_required: Mapped[Decimal] = mapped_column(Money())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # derived
    funding_received: Mapped[Decimal] = mapped_column(Money(), default=Decimal("0"), server_default="0")
    status: Mapped[str] = mapped_column(String(16), default=PatientStatus.FUNDING, server_default="FUNDING")
    fully_funded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Donation(Base):
    __tablename__ = "donations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True, index=True)
    amount: Mapped[Decimal] = mapped_column(Money())
    currency: Mapped[str] = mapped_column(String(3))
    patient_amount: Mapped[Decimal] = mapped_column(Money())
    support_amount: Mapped[Decimal] = mapped_column(Money(), default=Decimal("0"), server_default="0")
    charge_amount: Mapped[Decimal] = mapped_column(Money())
    charge_currency: Mapped[str] = mapped_column(String(3))
    # 255XXXXXXXXX, or past its retention hmac:<16 hex>:<last 3 digits> (pipeline.privacy)
    msisdn: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(16), nullable=True)
    external_reference: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    transaction_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # derived: owned by the fold (pipeline.fold.DonationState mirrors these), reset by a rebuild
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING, server_default="PENDING", index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    credit_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    events_applied: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    needs_check: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    success_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # earliest trusted matching success
    success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    amount_confirmed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    review_event_id: Mapped[int | None] = mapped_column(
        BigInteger, nullable=True
    )  # earliest trusted success, wrong amount
    review_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    failure_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # earliest trusted FAILED/CANCELLED
    failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failure_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    expired_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    operator_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # latest operator decision
    operator_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    operator_status: Mapped[str | None] = mapped_column(String(16), nullable=True)


class PaymentEvent(Base):
    """The log. Append-only: triggers refuse UPDATE and DELETE (see migrations), except the sanctioned
    rewrite of `body` and `msisdn` by jobs/rewrite.py (PrivacyControl)."""

    __tablename__ = "payment_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16))
    body: Mapped[bytes] = mapped_column(LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql"))
    body_sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    remote_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    headers: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON of selected headers
    # typed fields extracted at append time, so the fold never parses JSON
    utilityref: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    externalreference: Mapped[str | None] = mapped_column(String(255), nullable=True)
    donation_hint: Mapped[str | None] = mapped_column(String(64), nullable=True)  # additionalProperties.donation_id
    transaction_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)  # reference or transid
    status_raw: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # normalised
    amount: Mapped[Decimal | None] = mapped_column(Money(), nullable=True)
    operator: Mapped[str | None] = mapped_column(String(64), nullable=True)
    msisdn: Mapped[str | None] = mapped_column(String(64), nullable=True)
    donation_id: Mapped[int | None] = mapped_column(
        BigInteger, nullable=True, index=True
    )  # set by poll/checkout/operator
    parse_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    auth: Mapped[str] = mapped_column(String(16))
    # a portal patient's facts (source portal, docs/portal.md): the patient they are about
    patient_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # idempotence key for replays (spool ingest, log import): a second append with the same key is a no-op
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)


class FundingCredit(Base):
    """The ledger: one row per credited donation, enforced by the unique donation_id."""

    __tablename__ = "funding_credits"
    # (patient_id, amount): a patient's sum of credits, which every fold batch checks against
    # funding_received, is read from the index alone.
    __table_args__ = (Index("ix_funding_credits_patient_amount", "patient_id", "amount"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    donation_id: Mapped[int] = mapped_column(ForeignKey("donations.id"), unique=True)
    patient_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    amount: Mapped[Decimal] = mapped_column(Money())
    event_id: Mapped[int] = mapped_column(BigInteger)
    credited_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Anomaly(Base):
    __tablename__ = "anomalies"
    __table_args__ = (Index("ix_anomalies_kind_event", "kind", "event_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigInteger, index=True)
    donation_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class DonationEvent(Base):
    """Derived: which events the fold applied to which donation, for an exact replay. A row per event, not a
    list in the donation row: anyone can send events naming one donation, and no column may overflow."""

    __tablename__ = "donation_events"

    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    donation_id: Mapped[int] = mapped_column(BigInteger, index=True)


class WaitingKey(Base):
    """Derived: the lookup keys (pipeline.resolution.lookup_keys) of events that resolved to no donation, so a
    new donation finds the events it may resolve through an index, whatever the number waiting."""

    __tablename__ = "waiting_keys"
    __table_args__ = (Index("ix_waiting_keys_key", "key_column", "key_value"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigInteger, index=True)
    key_column: Mapped[str] = mapped_column(String(32))
    key_value: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class PrivacyControl(Base):
    """One row, id 1. The payment_events UPDATE trigger lets `body` and `msisdn` change only while
    rewrite_allowed is 1, which jobs/rewrite.py sets and resets inside its own transaction (migration
    0004 says why a row and not a session variable). key_fingerprint names the key the stored hashes
    were made with (never the key); bodies_retained_through is `privacy retain`'s position in the log."""

    __tablename__ = "privacy_control"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rewrite_allowed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    key_fingerprint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    bodies_retained_through: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class PrivacyRewrite(Base):
    """A sanctioned rewrite of stored events and donations (privacy scrub, retain, erase), recorded in the
    transaction that made it: the fact that the log was changed, by whom, how much and up to which event."""

    __tablename__ = "privacy_rewrites"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    operation: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    os_user: Mapped[str] = mapped_column(String(128))
    sudo_user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    key_fingerprint: Mapped[str] = mapped_column(String(32))
    cutoff: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    events_rewritten: Mapped[int] = mapped_column(BigInteger)
    donations_rewritten: Mapped[int] = mapped_column(BigInteger)
    first_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_event_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class EventCount(Base):
    """Derived: folded events by source and auth, kept by the fold, so /metrics never counts the whole log."""

    __tablename__ = "event_counts"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    auth: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class FoldCheckpoint(Base):
    """The fold's position, written in the same transaction as the state it produced."""

    __tablename__ = "fold_checkpoints"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)  # every id <= position is applied or a known gap
    # JSON [[first id, last id, first_seen_iso], ...] of ids still awaited (capped: jobs/fold.py MAX_GAPS)
    gaps: Mapped[str] = mapped_column(Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), default="[]")
    events_applied: Mapped[int] = mapped_column(BigInteger, default=0)
    donation_high: Mapped[int] = mapped_column(
        BigInteger, default=0
    )  # donations up to this id were offered to unknown-reference events
    # set by a rebuild to the newest event id when it began; cleared by the fold that passes it. Meanwhile
    # folds stay quiet (no per-donation log lines) and the poller waits: statuses are being recomputed.
    rebuild_until: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RunOutcome(StrEnum):
    """A job_runs row's outcome: running until the run ends, then ok, skipped (another worker held the
    lock) or error."""

    RUNNING = "running"
    OK = "ok"
    SKIPPED = "skipped"
    ERROR = "error"


class JobRun(Base):
    __tablename__ = "job_runs"
    # each job's newest successful run in one seek, however long it has been failing (migration 0005)
    __table_args__ = (Index("ix_job_runs_job_outcome", "job", "outcome", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(32), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default=RunOutcome.RUNNING)
    counts: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str | None] = mapped_column(String(128), nullable=True)


class JobLock(Base):
    """One row per lockable job (fold, poll); taken with SELECT ... FOR UPDATE / BEGIN IMMEDIATE."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PortalDonationSeen(Base):
    """Portal mode (docs/portal.md): a portal donation recorded: its owner (fixed at first sight), the facts last
    recorded in the log, and the status azamrecon last wrote, which its next write compares against."""

    __tablename__ = "portal_donations"

    donation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(16))
    facts: Mapped[str] = mapped_column(Text)  # JSON
    facts_sha: Mapped[str] = mapped_column(String(64))
    written: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    reasserted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PortalPatientSeen(Base):
    """Portal mode: a portal patient recorded, with the facts last recorded in the log."""

    __tablename__ = "portal_patients"

    patient_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    facts: Mapped[str] = mapped_column(Text)  # JSON
    facts_sha: Mapped[str] = mapped_column(String(64))


class PortalSync(Base):
    """Portal mode, one row (id 1): the highest portal donation id read, and the last full comparison."""

    __tablename__ = "portal_sync"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    donation_high: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # JSON {id: first missed, or "undecided"}: ids below the high mark read again (capped at fold.max_gaps)
    gaps: Mapped[str] = mapped_column(Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), default="{}")
    scanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
