"""Portal mode: what azamrecon has seen of a Django portal's donations and patients, and the log's patient id

Revision ID: 0006
Revises: 0005
In portal mode (docs/portal.md) the portal's donor_donation and auth_app_patientprofile rows are the
donations and patients azamrecon reconciles. portal_donations and portal_patients hold, per row, the facts
last recorded in the log, and for a donation the status azamrecon last wrote (its compare-and-set);
portal_sync the highest donation id read, the ids read again below it, and the last full comparison.
payment_events.patient_id names the patient a portal patient fact is about. Nothing here touches a portal
table.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import pipeline.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('payment_events', sa.Column('patient_id', sa.BigInteger(), nullable=True))
    op.create_table(
        'portal_donations',
        sa.Column('donation_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('owner', sa.String(length=16), nullable=False),
        sa.Column('facts', sa.Text(), nullable=False),
        sa.Column('facts_sha', sa.String(length=64), nullable=False),
        sa.Column('written', sa.Text(), nullable=True),
        sa.Column('reasserted', sa.Integer(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('donation_id', name=op.f('pk_portal_donations')),
    )
    op.create_table(
        'portal_patients',
        sa.Column('patient_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('facts', sa.Text(), nullable=False),
        sa.Column('facts_sha', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('patient_id', name=op.f('pk_portal_patients')),
    )
    op.create_table(
        'portal_sync',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('donation_high', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('gaps', sa.Text().with_variant(mysql.MEDIUMTEXT(), 'mysql'), nullable=False),
        sa.Column('scanned_at', pipeline.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_portal_sync')),
    )


def downgrade() -> None:
    op.drop_table('portal_sync')
    op.drop_table('portal_patients')
    op.drop_table('portal_donations')
    op.drop_column('payment_events', 'patient_id')
