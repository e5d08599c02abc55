"""errors are tenant text: job error messages and batch line errors encrypted at rest

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from llmos_jobs.crypto import key_ring_of

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def encrypt(text: str) -> str:
    """Under the key ring of the migration's engine (llmos_jobs/migrations/env.py)."""
    return key_ring_of(op.get_bind().dialect).encrypt(text)


def decrypt(token: str) -> str:
    return key_ring_of(op.get_bind().dialect).decrypt(token)


def _recode(table: str, column: str, change: Callable[[str], str]) -> None:
    """Rewrite every non-null value of ``column`` through ``change``."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL"))
    for row_id, value in rows.fetchall():
        conn.execute(sa.text(f"UPDATE {table} SET {column} = :v WHERE id = :id"),
                     {"v": change(value), "id": row_id})


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('error_message', existing_type=sa.VARCHAR(), type_=sa.Text(),
                              existing_nullable=True)
    with op.batch_alter_table('batch', schema=None) as batch_op:
        batch_op.alter_column('invalid', existing_type=sa.JSON(), type_=sa.Text(),
                              existing_nullable=False,
                              postgresql_using='invalid::text')
    _recode('job', 'error_message', encrypt)
    _recode('batch', 'invalid', encrypt)


def downgrade() -> None:
    _recode('batch', 'invalid', decrypt)
    _recode('job', 'error_message', decrypt)
    with op.batch_alter_table('batch', schema=None) as batch_op:
        batch_op.alter_column('invalid', existing_type=sa.Text(), type_=sa.JSON(),
                              existing_nullable=False,
                              postgresql_using='invalid::json')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('error_message', existing_type=sa.Text(), type_=sa.VARCHAR(),
                              existing_nullable=True)
