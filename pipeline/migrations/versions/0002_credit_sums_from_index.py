"""funding_credits: index (patient_id, amount) replaces (patient_id)

Revision ID: 0002
Revises: 0001
A patient's sum of credits, which the fold checks against funding_received in every batch, is then read
from the index alone; the old index was a prefix of the new one.
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('funding_credits', schema=None) as batch_op:
        batch_op.create_index('ix_funding_credits_patient_amount', ['patient_id', 'amount'], unique=False)
        batch_op.drop_index('ix_funding_credits_patient_id')


def downgrade() -> None:
    with op.batch_alter_table('funding_credits', schema=None) as batch_op:
        batch_op.create_index('ix_funding_credits_patient_id', ['patient_id'], unique=False)
        batch_op.drop_index('ix_funding_credits_patient_amount')
