"""deployments: a model's desired replicas and the replicas placed on workers

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30 06:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0022'
down_revision: str | None = '0021'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'deployment',
        sa.Column('model', sa.String(), nullable=False),
        sa.Column('replicas', sa.Integer(), nullable=False),
        sa.Column('gpu_memory_gb', sa.Float(), nullable=True),
        sa.Column('state', sa.String(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('from_version', sa.Integer(), nullable=True),
        sa.Column('strategy', sa.String(), nullable=True),
        sa.Column('reason', sa.String(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('update_started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('update_finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['model'], ['registered_model.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('model'),
    )
    op.create_table(
        'replica',
        sa.Column('id', sa.String(), nullable=False),
        sa.Column('model', sa.String(), nullable=False),
        sa.Column('worker', sa.String(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(), nullable=False),
        sa.Column('op_job', sa.String(), nullable=True),
        sa.Column('green', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['model'], ['deployment.model'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('replica', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replica_model'), ['model'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('replica', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replica_model'))
    op.drop_table('replica')
    op.drop_table('deployment')
