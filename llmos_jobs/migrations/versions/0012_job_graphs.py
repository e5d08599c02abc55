"""job graphs: a long input becomes a parent job whose children (one per chunk, then a
reduce) are ordinary jobs; a child names its parent, its role, level and position, and
the parent the level it is at (the compare-and-set that creates each level once)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('graph_role', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('graph_level', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('graph_index', sa.Integer(), nullable=True))
        batch_op.create_index('ix_job_parent_id', ['parent_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_parent_id')
        batch_op.drop_column('graph_index')
        batch_op.drop_column('graph_level')
        batch_op.drop_column('graph_role')
        batch_op.drop_column('parent_id')
