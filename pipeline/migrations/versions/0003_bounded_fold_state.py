"""Bounded fold state: applied events and waiting keys as rows; event counts kept; the checkpoint's gaps in a larger column

Revision ID: 0003
Revises: 0002
donations.event_ids (TEXT, 64 KiB on MySQL) overflowed once anyone sent enough events naming one
donation, and every later fold failed. Applied events move to donation_events, one row each. Events
waiting for a donation keep their lookup keys in waiting_keys, indexed, so a new donation finds them
without reading every waiting event. event_counts keeps the folded events by source and auth, so
/metrics never counts the whole log. fold_checkpoints.gaps becomes MEDIUMTEXT on MySQL (its count is
capped by the fold, and it holds ranges). Derived state is rebuilt from the log by this migration's
caller: `azamrecon init` upgrades, then `azamrecon rebuild` refills the new tables (docs/deploy.md).
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import pipeline.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'donation_events',
        sa.Column('event_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('donation_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('event_id'),
    )
    op.create_index('ix_donation_events_donation_id', 'donation_events', ['donation_id'], unique=False)
    op.create_table(
        'waiting_keys',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('key_column', sa.String(length=32), nullable=False),
        sa.Column('key_value', sa.String(length=255), nullable=False),
        sa.Column('received_at', pipeline.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_waiting_keys_key', 'waiting_keys', ['key_column', 'key_value'], unique=False)
    op.create_index('ix_waiting_keys_event_id', 'waiting_keys', ['event_id'], unique=False)
    op.create_index('ix_waiting_keys_received_at', 'waiting_keys', ['received_at'], unique=False)
    op.create_table(
        'event_counts',
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('auth', sa.String(length=16), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('source', 'auth'),
    )
    _carry_over(op.get_bind())
    if op.get_bind().dialect.name == "sqlite":
        # in place (SQLite 3.35+): a batch copy of donations is refused by funding_credits' foreign key once
        # any donation is credited, and fold_checkpoints.gaps is TEXT of any length on SQLite already
        op.execute("ALTER TABLE donations DROP COLUMN event_ids")
    else:
        op.drop_column('donations', 'event_ids')
        op.alter_column('fold_checkpoints', 'gaps', existing_type=sa.Text(), type_=mysql.MEDIUMTEXT(), existing_nullable=False)
    _gaps_as_ranges(op.get_bind())


def _carry_over(bind) -> None:
    """The old layout's derived facts, exactly: each donation's applied ids, and the lookup keys of the
    events waiting as unknown_reference (keys as pipeline.resolution reads them, with the default
    reference prefix; an installation with another prefix runs `azamrecon rebuild` after upgrading)."""
    from pipeline.resolution import lookup_keys
    from pipeline.store.fold_rows import EVENT_COLUMNS, _FoldDriver

    applied = [
        {"event_id": int(part), "donation_id": donation_id}
        for donation_id, ids in bind.execute(sa.text("SELECT id, event_ids FROM donations WHERE event_ids IS NOT NULL"))
        for part in ids.split(",") if part
    ]
    if applied:
        bind.execute(sa.text("INSERT INTO donation_events (event_id, donation_id) VALUES (:event_id, :donation_id)"), applied)
    # the columns this revision's payment_events has (0006 added patient_id, which FoldEvent defaults)
    columns = ", ".join(column.key for column in EVENT_COLUMNS if column.key != "patient_id")
    waiting = bind.execute(sa.text(
        f"SELECT {columns} FROM payment_events WHERE id IN (SELECT event_id FROM anomalies WHERE kind = 'unknown_reference')"
    )).fetchall()
    rows = []
    for event in _FoldDriver(bind).events([tuple(row) for row in waiting]):
        for key in {(key.column, str(key.value)) for key in lookup_keys(event)}:
            rows.append({"event_id": event.id, "key_column": key[0], "key_value": key[1][:255], "received_at": event.received_at})
    if rows:
        bind.execute(sa.insert(pipeline.models.WaitingKey.__table__), rows)
    # the events folded so far, counted once here and then by the fold (ids in the checkpoint's gaps were
    # not folded yet either, but they are few and the fold counts them when they appear)
    bind.execute(sa.text(
        "INSERT INTO event_counts (source, auth, count) SELECT source, auth, COUNT(*) FROM payment_events "
        "WHERE id <= (SELECT COALESCE(MAX(position), 0) FROM fold_checkpoints WHERE name = 'main') GROUP BY source, auth"
    ))


def _gaps_as_ranges(bind) -> None:
    """[[id, seen], ...] becomes [[id, id, seen], ...] (jobs/fold.py reads ranges)."""
    import json

    for name, gaps in bind.execute(sa.text("SELECT name, gaps FROM fold_checkpoints")).fetchall():
        ranges = [[gap[0], gap[0], gap[1]] for gap in json.loads(gaps or "[]")]
        bind.execute(sa.text("UPDATE fold_checkpoints SET gaps = :gaps WHERE name = :name"), {"gaps": json.dumps(ranges), "name": name})


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column('fold_checkpoints', 'gaps', existing_type=mysql.MEDIUMTEXT(), type_=sa.Text(), existing_nullable=False)
    op.add_column('donations', sa.Column('event_ids', sa.Text(), nullable=True))
    op.drop_table('event_counts')
    op.drop_table('waiting_keys')
    op.drop_table('donation_events')
