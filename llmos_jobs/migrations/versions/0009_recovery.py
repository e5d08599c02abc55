"""recovery: workers report the jobs they hold (a job no live attempt holds is re-queued);
jobs record when their current message was made (the reconciler's grace period)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 15:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.add_column(sa.Column('holding', sa.JSON(), nullable=True))
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('queued_at')
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.drop_column('holding')
