"""jobs may wait: a mindspace turn behind an earlier turn of its mindspace

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite stores the status as plain text; PostgreSQL has an enum type to extend.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE jobstatus ADD VALUE IF NOT EXISTS 'waiting' BEFORE 'queued'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; no job may be left holding it.
    op.execute("UPDATE job SET status = 'cancelled', error_type = 'Downgrade', "
               "error_message = 'waiting turn cancelled by a schema downgrade' "
               "WHERE status = 'waiting'")
