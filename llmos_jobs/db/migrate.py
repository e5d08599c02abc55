"""Schema upgrades through Alembic, safe when several processes start at once."""

from __future__ import annotations

import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from llmos_jobs.db.session import get_engine, normalise_url
from llmos_jobs.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_PG_LOCK_KEY = 0x6C6D6F73  # "lmos"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _at_head(url: str, config: Config) -> bool:
    head = ScriptDirectory.from_config(config).get_current_head()
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


def upgrade(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: the settings) to the newest revision."""
    url = normalise_url(url or get_settings().resolved_database_url())
    config = alembic_config(url)
    if _at_head(url, config):
        return
    if url.startswith("sqlite"):
        db_path = Path(url.split("///", 1)[1]) if "///" in url else None
        if db_path is None or str(db_path) == ":memory:":
            command.upgrade(config, "head")
            return
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{db_path}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            command.upgrade(config, "head")
        return
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            command.upgrade(config, "head")
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
