"""job_runs: an index on (job, outcome, id), for each job's last success

Revision ID: 0005
Revises: 0004
/metrics and `report --check` read each job's newest successful run. With only the job index, that
walked every run since the last success: a job failing every 0.5 s for a day left 172,800 rows to walk on
every scrape. With (job, outcome, id) it is one index seek however long the job has been failing.
"""


from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_job_runs_job_outcome", "job_runs", ["job", "outcome", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_runs_job_outcome", table_name="job_runs")
