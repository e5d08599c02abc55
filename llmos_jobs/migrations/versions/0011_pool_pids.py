"""pool pids: a prefork worker's heartbeat names the live processes of its pool, so a
job whose pool process died is re-queued even when the pool never hands its message back

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 18:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_pids', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('worker', schema=None) as batch_op:
        batch_op.drop_column('pool_pids')
