"""Alembic environment: the URL and the key ring come from the caller's config (a ring
in ``config.attributes["key_ring"]``; none: this process's settings), the metadata from
SQLModel."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import llmos_jobs.db.tables  # noqa: F401  (registers the tables on the metadata)
from llmos_jobs.crypto import KeyRing, bind_key_ring
from llmos_jobs.settings import get_settings

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    connectable = create_engine(url, poolclass=pool.NullPool)
    ring = config.attributes.get("key_ring") or KeyRing.from_settings(get_settings())
    bind_key_ring(connectable.dialect, ring)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
