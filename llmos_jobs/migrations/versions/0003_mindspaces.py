"""mindspaces: encryption, snapshots, knowledge, affinity

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:18:31.060875
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from llmos_jobs.crypto import key_ring_of

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_ENCRYPTED = [("job", "payload"), ("job", "result"), ("mindspace", "persona"),
              ("mindspace_message", "content")]


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
    op.create_table('mindspace_chunk',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mindspace_id', sa.String(), nullable=False),
    sa.Column('tenant', sa.String(), nullable=False),
    sa.Column('document', sa.String(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mindspace_id'], ['mindspace.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mindspace_chunk', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mindspace_chunk_document'), ['document'], unique=False)
        batch_op.create_index(batch_op.f('ix_mindspace_chunk_mindspace_id'), ['mindspace_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mindspace_chunk_tenant'), ['tenant'], unique=False)

    op.create_table('mindspace_compaction',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mindspace_id', sa.String(), nullable=False),
    sa.Column('tenant', sa.String(), nullable=False),
    sa.Column('messages', sa.Integer(), nullable=False),
    sa.Column('through_message', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mindspace_id'], ['mindspace.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mindspace_compaction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mindspace_compaction_mindspace_id'), ['mindspace_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mindspace_compaction_tenant'), ['tenant'], unique=False)

    op.create_table('mindspace_snapshot',
    sa.Column('id', sa.String(), nullable=False),
    sa.Column('mindspace_id', sa.String(), nullable=False),
    sa.Column('tenant', sa.String(), nullable=False),
    sa.Column('name', sa.String(), nullable=True),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mindspace_id'], ['mindspace.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mindspace_snapshot', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mindspace_snapshot_mindspace_id'), ['mindspace_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mindspace_snapshot_tenant'), ['tenant'], unique=False)

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mindspace_seq', sa.Integer(), nullable=True))
        batch_op.alter_column('payload',
               existing_type=sa.JSON(),
               type_=sa.Text(),
               existing_nullable=False, postgresql_using="payload::text")
        batch_op.alter_column('result',
               existing_type=sa.JSON(),
               type_=sa.Text(),
               existing_nullable=True, postgresql_using="result::text")

    with op.batch_alter_table('mindspace', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settings', sa.JSON(), server_default='{}', nullable=False))
        batch_op.add_column(sa.Column('worker', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('next_seq', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('forked_from', sa.String(), nullable=True))
        batch_op.alter_column('persona',
               existing_type=sa.VARCHAR(),
               type_=sa.Text(),
               existing_nullable=True)

    with op.batch_alter_table('mindspace_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('compacted', sa.Boolean(), server_default='0', nullable=False))
        batch_op.alter_column('content',
               existing_type=sa.VARCHAR(),
               type_=sa.Text(),
               existing_nullable=False)

    # Text stored in plaintext before this revision is encrypted now.
    for table, column in _ENCRYPTED:
        _recode(table, column, encrypt)


def downgrade() -> None:
    for table, column in _ENCRYPTED:
        _recode(table, column, decrypt)
    with op.batch_alter_table('mindspace_message', schema=None) as batch_op:
        batch_op.alter_column('content',
               existing_type=sa.Text(),
               type_=sa.VARCHAR(),
               existing_nullable=False)
        batch_op.drop_column('compacted')

    with op.batch_alter_table('mindspace', schema=None) as batch_op:
        batch_op.alter_column('persona',
               existing_type=sa.Text(),
               type_=sa.VARCHAR(),
               existing_nullable=True)
        batch_op.drop_column('forked_from')
        batch_op.drop_column('next_seq')
        batch_op.drop_column('worker')
        batch_op.drop_column('settings')

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('result',
               existing_type=sa.Text(),
               type_=sa.JSON(),
               existing_nullable=True, postgresql_using="result::json")
        batch_op.alter_column('payload',
               existing_type=sa.Text(),
               type_=sa.JSON(),
               existing_nullable=False, postgresql_using="payload::json")
        batch_op.drop_column('mindspace_seq')

    with op.batch_alter_table('mindspace_snapshot', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mindspace_snapshot_tenant'))
        batch_op.drop_index(batch_op.f('ix_mindspace_snapshot_mindspace_id'))

    op.drop_table('mindspace_snapshot')
    with op.batch_alter_table('mindspace_compaction', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mindspace_compaction_tenant'))
        batch_op.drop_index(batch_op.f('ix_mindspace_compaction_mindspace_id'))

    op.drop_table('mindspace_compaction')
    with op.batch_alter_table('mindspace_chunk', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mindspace_chunk_tenant'))
        batch_op.drop_index(batch_op.f('ix_mindspace_chunk_mindspace_id'))
        batch_op.drop_index(batch_op.f('ix_mindspace_chunk_document'))

    op.drop_table('mindspace_chunk')
