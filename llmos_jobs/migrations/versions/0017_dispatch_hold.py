"""fair-share dispatcher: jobs held in the database until released to the broker

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing queued jobs keep held_since NULL: their messages were sent already.
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_job_queue_status', ['queue', 'status'], unique=False)
        batch_op.create_index('ix_job_finished_at', ['finished_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_finished_at')
        batch_op.drop_index('ix_job_queue_status')
        batch_op.drop_column('held_since')
