"""content filters: each tenant's rules (encrypted), the job status `filtered`, and the
rule that filtered a job or the rules that redacted it

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite stores the status as plain text; PostgreSQL has an enum type to extend.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE jobstatus ADD VALUE IF NOT EXISTS 'filtered'")
    op.create_table(
        'tenant_filters',
        sa.Column('tenant', sa.String(), nullable=False),
        sa.Column('rules', sa.Text(), nullable=False),  # a Fernet token
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant'),
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('filter_rule', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('redacted_by', sa.JSON(), nullable=True))


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; no job may be left holding it.
    op.execute("UPDATE job SET status = 'failed' WHERE status = 'filtered'")
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('redacted_by')
        batch_op.drop_column('filter_rule')
    op.drop_table('tenant_filters')
