"""operator keys: an API key without a tenant belongs to an operator; audit rows
name the actor of calls made without a key (the CLI, the Python client)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 15:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot alter a column's nullability in place.
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.alter_column("tenant", existing_type=sa.String(), nullable=True)
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_column("actor")
    # An operator key cannot be expressed without a tenant column value: revoke and drop them.
    op.execute("DELETE FROM api_key WHERE tenant IS NULL")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.alter_column("tenant", existing_type=sa.String(), nullable=False)
