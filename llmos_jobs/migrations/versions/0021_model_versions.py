"""model versions: one row per content registered under a name, the version each job,
mindspace and snapshot was served by, and a model's keep_alive

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from llmos_jobs.model_content import content_of

revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'model_version',
        sa.Column('name', sa.String(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('path', sa.String(), nullable=False),
        sa.Column('engine', sa.String(), nullable=False),
        sa.Column('context_length', sa.Integer(), nullable=False),
        sa.Column('content_hash', sa.String(length=64), nullable=False),
        sa.Column('size_bytes', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['name'], ['registered_model.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('name', 'version'),
    )
    with op.batch_alter_table('registered_model', schema=None) as batch_op:
        batch_op.add_column(sa.Column('keep_alive', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('current_version', sa.Integer(), server_default='1',
                                      nullable=False))
    for table in ('job', 'mindspace', 'mindspace_snapshot'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('model_version', sa.Integer(), nullable=True))
    # Every model registered so far becomes its version 1, hashed as a registration
    # would hash it, so that registering the same directory again is a no-op.
    connection = op.get_bind()
    models = connection.execute(sa.text(
        "SELECT name, path, engine, context_length, created_at FROM registered_model")).all()
    for name, path, engine, context_length, created_at in models:
        content = content_of(path, engine)
        connection.execute(sa.text(
            "INSERT INTO model_version (name, version, path, engine, context_length, "
            "content_hash, size_bytes, created_at) VALUES (:name, 1, :path, :engine, "
            ":context_length, :hash, :size, :created_at)"),
            {"name": name, "path": path, "engine": engine, "context_length": context_length,
             "hash": content.content_hash, "size": content.size_bytes,
             "created_at": created_at})
    connection.execute(sa.text("UPDATE job SET model_version = 1 WHERE model IN "
                               "(SELECT name FROM registered_model)"))


def downgrade() -> None:
    for table in ('mindspace_snapshot', 'mindspace', 'job'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('model_version')
    with op.batch_alter_table('registered_model', schema=None) as batch_op:
        batch_op.drop_column('current_version')
        batch_op.drop_column('keep_alive')
    op.drop_table('model_version')
