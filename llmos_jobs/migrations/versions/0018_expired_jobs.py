"""the job status `expired`: a job whose deadline passed before it could start

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite stores the status as plain text; PostgreSQL has an enum type to extend.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE jobstatus ADD VALUE IF NOT EXISTS 'expired'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; no job may be left holding it.
    op.execute("UPDATE job SET status = 'failed' WHERE status = 'expired'")
