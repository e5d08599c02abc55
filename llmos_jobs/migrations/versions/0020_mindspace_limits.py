"""mindspace limits: the uploaded size of each knowledge document

Revision ID: 0020
Revises: 0018
Create Date: 2026-11-30 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0020'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The limits themselves live in the mindspace's settings (JSON): no column.
    with op.batch_alter_table('mindspace_chunk', schema=None) as batch_op:
        batch_op.add_column(sa.Column('document_bytes', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mindspace_chunk', schema=None) as batch_op:
        batch_op.drop_column('document_bytes')
