"""task presets: jobs of kind summarise, translate, answer, classify and extract

Revision ID: 0015
Revises: 0011
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("summarise", "translate", "answer", "classify", "extract")


def upgrade() -> None:
    # SQLite stores the kind as plain text; PostgreSQL has an enum type to extend.
    if op.get_bind().dialect.name == "postgresql":
        for kind in KINDS:
            op.execute(f"ALTER TYPE jobkind ADD VALUE IF NOT EXISTS '{kind}'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value, and the older code cannot read a job of
    # these kinds: refuse rather than delete tenants' jobs behind their backs.
    held = op.get_bind().execute(
        sa.text("SELECT count(*) FROM job WHERE CAST(kind AS TEXT) IN "
                "('summarise', 'translate', 'answer', 'classify', 'extract')")).scalar_one()
    if held:
        raise RuntimeError(f"{held} jobs are task presets (summarise, translate, answer, "
                           "classify, extract): delete them before downgrading below 0015")
