"""Privacy at rest: the one sanctioned rewrite of payment_events, its record, and room for hashed numbers

Revision ID: 0004
Revises: 0003
payment_events stays append-only, except for `azamrecon privacy scrub|retain|erase` (jobs/privacy.py),
which replace stored secrets and phone numbers (docs/privacy.md). The UPDATE trigger now allows an
update only while privacy_control.rewrite_allowed is 1, and only of `body` and `msisdn`: every other
column (money, status, references, ids, times, body_sha256) must come out equal. Those commands set the
flag and set it back inside their own transaction, so no other transaction ever reads it as 1 (SQLite
has one writer; on MariaDB another session reads the committed 0, or waits for the row and then reads
0). DELETE stays refused, whatever the flag. A flag row, not a session variable: it works the same on
both backends, DDL is not needed per run (MariaDB commits DDL at once, so a dropped-and-recreated
trigger would leave a window open to everyone), and the new trigger is created before the old one is
dropped, so the log is never unguarded during the upgrade either.

privacy_rewrites records every such rewrite (what, when, who, how many rows), written in the same
transaction as the rows it changed. donations.msisdn widens from 12 to 64 characters, as
payment_events.msisdn, to hold `hmac:<16 hex>:<last 3 digits>`.
"""
import re

import sqlalchemy as sa
from alembic import op

import pipeline.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "payment_events is append-only"
# every payment_events column a sanctioned rewrite must leave as it is (all but body and msisdn)
KEPT_COLUMNS = (
    "id", "received_at", "source", "body_sha256", "content_type", "remote_addr", "headers", "utilityref", "externalreference",
    "donation_hint", "transaction_ref", "status_raw", "status", "amount", "operator", "donation_id", "parse_error", "auth", "dedupe_key",
)
GUARD = "payment_events_update_guard"
OLD_TRIGGER = "payment_events_no_update"


def upgrade() -> None:
    op.create_table(
        'privacy_control',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('rewrite_allowed', sa.Integer(), server_default='0', nullable=False),
        sa.Column('key_fingerprint', sa.String(length=32), nullable=True),
        sa.Column('bodies_retained_through', sa.BigInteger(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_privacy_control')),
    )
    op.execute("INSERT INTO privacy_control (id, rewrite_allowed, bodies_retained_through) VALUES (1, 0, 0)")
    op.create_table(
        'privacy_rewrites',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('operation', sa.String(length=32), nullable=False),
        sa.Column('started_at', pipeline.models.UTCDateTime(), nullable=False),
        sa.Column('finished_at', pipeline.models.UTCDateTime(), nullable=False),
        sa.Column('os_user', sa.String(length=128), nullable=False),
        sa.Column('sudo_user', sa.String(length=128), nullable=True),
        sa.Column('key_fingerprint', sa.String(length=32), nullable=False),
        sa.Column('cutoff', pipeline.models.UTCDateTime(), nullable=True),
        sa.Column('events_rewritten', sa.BigInteger(), nullable=False),
        sa.Column('donations_rewritten', sa.BigInteger(), nullable=False),
        sa.Column('first_event_id', sa.BigInteger(), nullable=True),
        sa.Column('last_event_id', sa.BigInteger(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_privacy_rewrites')),
    )
    _widen_donation_msisdn()
    _create_guard()
    op.execute(f"DROP TRIGGER IF EXISTS {OLD_TRIGGER}")


def _widen_donation_msisdn() -> None:
    if op.get_bind().dialect.name == "mysql":
        op.execute("ALTER TABLE donations MODIFY msisdn VARCHAR(64) NULL")
    else:
        _declare_sqlite_msisdn(12, 64)


def _declare_sqlite_msisdn(old: int, new: int) -> None:
    """SQLite: a batch alter would copy the table and drop the original, which funding_credits' foreign key
    refuses once credits exist. VARCHAR(12) and VARCHAR(64) are the same TEXT affinity on disk, so the
    declaration is edited in place: SQLite's documented procedure for schema changes that leave the
    stored content as it is (lang_altertable.html, "Making Other Kinds Of Table Schema Changes")."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'donations'").scalar()
    if re.search(rf"\bmsisdn\s+VARCHAR\s*\(\s*{new}\s*\)", sql, flags=re.IGNORECASE):
        return  # already so
    changed, count = re.subn(rf"(\bmsisdn\s+)VARCHAR\s*\(\s*{old}\s*\)", rf"\g<1>VARCHAR({new})", sql, flags=re.IGNORECASE)
    if count != 1:
        raise RuntimeError(f"donations.msisdn is not declared VARCHAR({old}): cannot change it to VARCHAR({new}) in place")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'donations'", (changed,))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def _create_guard() -> None:
    dialect = op.get_bind().dialect.name
    allowed = "COALESCE((SELECT rewrite_allowed FROM privacy_control WHERE id = 1), 0) = 1"
    if dialect == "sqlite":
        unchanged = " AND ".join(f"NEW.{column} IS OLD.{column}" for column in KEPT_COLUMNS)
        op.execute(
            f"CREATE TRIGGER {GUARD} BEFORE UPDATE ON payment_events "
            f"WHEN NOT ({allowed} AND {unchanged}) "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
        )
    elif dialect == "mysql":
        unchanged = " AND ".join(f"NEW.{column} <=> OLD.{column}" for column in KEPT_COLUMNS)
        op.execute(
            f"CREATE TRIGGER {GUARD} BEFORE UPDATE ON payment_events FOR EACH ROW BEGIN "
            f"IF NOT ({allowed} AND {unchanged}) THEN "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{APPEND_ONLY_MESSAGE}'; "
            f"END IF; END"
        )
    else:
        raise NotImplementedError(f"the payment_events update guard is not written for {dialect}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(f"CREATE TRIGGER {OLD_TRIGGER} BEFORE UPDATE ON payment_events BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END")
    else:
        op.execute(
            f"CREATE TRIGGER {OLD_TRIGGER} BEFORE UPDATE ON payment_events FOR EACH ROW "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{APPEND_ONLY_MESSAGE}'"
        )
    op.execute(f"DROP TRIGGER IF EXISTS {GUARD}")
    # hashed numbers (25 characters) do not fit the old column: MariaDB refuses the downgrade then
    if dialect == "mysql":
        op.execute("ALTER TABLE donations MODIFY msisdn VARCHAR(12) NULL")
    else:
        _declare_sqlite_msisdn(64, 12)
    op.drop_table('privacy_rewrites')
    op.drop_table('privacy_control')
