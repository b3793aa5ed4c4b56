"""initial schema

Revision ID: 0001
Revises: 
Append-only: triggers refuse UPDATE and DELETE on payment_events, on SQLite and MySQL.
Create Date: 2026-11-26 04:53:24.545261
"""
from alembic import op
import sqlalchemy as sa
import sqlalchemy.dialects.mysql
import pipeline.models
from sqlalchemy.dialects import mysql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('anomalies',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('donation_id', sa.BigInteger(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_anomalies'))
    )
    with op.batch_alter_table('anomalies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_anomalies_donation_id'), ['donation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_anomalies_event_id'), ['event_id'], unique=False)
        batch_op.create_index('ix_anomalies_kind_event', ['kind', 'event_id'], unique=False)

    op.create_table('fold_checkpoints',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('position', sa.BigInteger(), nullable=False),
    sa.Column('gaps', sa.Text(), nullable=False),
    sa.Column('events_applied', sa.BigInteger(), nullable=False),
    sa.Column('donation_high', sa.BigInteger(), nullable=False),
    sa.Column('rebuild_until', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_fold_checkpoints'))
    )
    op.create_table('job_locks',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=True),
    sa.Column('acquired_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_job_locks'))
    )
    op.create_table('job_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job', sa.String(length=32), nullable=False),
    sa.Column('started_at', pipeline.models.UTCDateTime(), nullable=False),
    sa.Column('finished_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('counts', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('host', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_runs'))
    )
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_runs_job'), ['job'], unique=False)

    op.create_table('patients',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('funding_required', pipeline.models.Money(precision=14, scale=2), nullable=False),
    sa.Column('created_at', pipeline.models.UTCDateTime(), nullable=False),
    sa.Column('funding_received', pipeline.models.Money(precision=14, scale=2), server_default='0', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='FUNDING', nullable=False),
    sa.Column('fully_funded_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients'))
    )
    op.create_table('payment_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', pipeline.models.UTCDateTime(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('body', sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), 'mysql'), nullable=False),
    sa.Column('body_sha256', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=255), nullable=True),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('headers', sa.Text(), nullable=True),
    sa.Column('utilityref', sa.String(length=255), nullable=True),
    sa.Column('externalreference', sa.String(length=255), nullable=True),
    sa.Column('donation_hint', sa.String(length=64), nullable=True),
    sa.Column('transaction_ref', sa.String(length=255), nullable=True),
    sa.Column('status_raw', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('amount', pipeline.models.Money(precision=14, scale=2), nullable=True),
    sa.Column('operator', sa.String(length=64), nullable=True),
    sa.Column('msisdn', sa.String(length=64), nullable=True),
    sa.Column('donation_id', sa.BigInteger(), nullable=True),
    sa.Column('parse_error', sa.Text(), nullable=True),
    sa.Column('auth', sa.String(length=16), nullable=False),
    sa.Column('dedupe_key', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_payment_events_dedupe_key'))
    )
    with op.batch_alter_table('payment_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_events_body_sha256'), ['body_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_events_donation_id'), ['donation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_events_utilityref'), ['utilityref'], unique=False)

    op.create_table('donations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('patient_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('amount', pipeline.models.Money(precision=14, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('patient_amount', pipeline.models.Money(precision=14, scale=2), nullable=False),
    sa.Column('support_amount', pipeline.models.Money(precision=14, scale=2), server_default='0', nullable=False),
    sa.Column('charge_amount', pipeline.models.Money(precision=14, scale=2), nullable=False),
    sa.Column('charge_currency', sa.String(length=3), nullable=False),
    sa.Column('msisdn', sa.String(length=12), nullable=True),
    sa.Column('provider', sa.String(length=16), nullable=True),
    sa.Column('external_reference', sa.String(length=128), nullable=True),
    sa.Column('transaction_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', pipeline.models.UTCDateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='PENDING', nullable=False),
    sa.Column('completed_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.Column('credit_event_id', sa.BigInteger(), nullable=True),
    sa.Column('last_event_id', sa.BigInteger(), nullable=True),
    sa.Column('events_applied', sa.Integer(), server_default='0', nullable=False),
    sa.Column('event_ids', sa.Text(), nullable=True),
    sa.Column('needs_check', sa.Boolean(), server_default=sa.text('0'), nullable=False),
    sa.Column('success_event_id', sa.BigInteger(), nullable=True),
    sa.Column('success_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.Column('amount_confirmed', sa.Boolean(), server_default=sa.text('0'), nullable=False),
    sa.Column('review_event_id', sa.BigInteger(), nullable=True),
    sa.Column('review_reason', sa.String(length=200), nullable=True),
    sa.Column('failure_event_id', sa.BigInteger(), nullable=True),
    sa.Column('failure_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.Column('failure_status', sa.String(length=16), nullable=True),
    sa.Column('expired_event_id', sa.BigInteger(), nullable=True),
    sa.Column('operator_event_id', sa.BigInteger(), nullable=True),
    sa.Column('operator_at', pipeline.models.UTCDateTime(), nullable=True),
    sa.Column('operator_status', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_donations_patient_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_donations')),
    sa.UniqueConstraint('external_reference', name=op.f('uq_donations_external_reference')),
    sa.UniqueConstraint('transaction_id', name=op.f('uq_donations_transaction_id'))
    )
    with op.batch_alter_table('donations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_donations_completed_at'), ['completed_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_donations_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_donations_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_donations_status'), ['status'], unique=False)

    op.create_table('funding_credits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('donation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=True),
    sa.Column('amount', pipeline.models.Money(precision=14, scale=2), nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('credited_at', pipeline.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['donation_id'], ['donations.id'], name=op.f('fk_funding_credits_donation_id')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_funding_credits')),
    sa.UniqueConstraint('donation_id', name=op.f('uq_funding_credits_donation_id'))
    )
    with op.batch_alter_table('funding_credits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_funding_credits_patient_id'), ['patient_id'], unique=False)
    _create_append_only_triggers()


APPEND_ONLY_MESSAGE = "payment_events is append-only"


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for action in ("UPDATE", "DELETE"):
        name = f"payment_events_no_{action.lower()}"
        if dialect == "sqlite":
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON payment_events "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
        elif dialect == "mysql":
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON payment_events FOR EACH ROW "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{APPEND_ONLY_MESSAGE}'"
            )
        else:
            raise NotImplementedError(f"append-only triggers are not written for {dialect}")


def downgrade() -> None:
    for action in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS payment_events_no_{action}")
    with op.batch_alter_table('funding_credits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_funding_credits_patient_id'))

    op.drop_table('funding_credits')
    with op.batch_alter_table('donations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_donations_status'))
        batch_op.drop_index(batch_op.f('ix_donations_patient_id'))
        batch_op.drop_index(batch_op.f('ix_donations_created_at'))
        batch_op.drop_index(batch_op.f('ix_donations_completed_at'))

    op.drop_table('donations')
    with op.batch_alter_table('payment_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_events_utilityref'))
        batch_op.drop_index(batch_op.f('ix_payment_events_donation_id'))
        batch_op.drop_index(batch_op.f('ix_payment_events_body_sha256'))

    op.drop_table('payment_events')
    op.drop_table('patients')
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_runs_job'))

    op.drop_table('job_runs')
    op.drop_table('job_locks')
    op.drop_table('fold_checkpoints')
    with op.batch_alter_table('anomalies', schema=None) as batch_op:
        batch_op.drop_index('ix_anomalies_kind_event')
        batch_op.drop_index(batch_op.f('ix_anomalies_event_id'))
        batch_op.drop_index(batch_op.f('ix_anomalies_donation_id'))

    op.drop_table('anomalies')
