"""Schema upgrades through Alembic, safe when several processes start at once.

Every command checks the schema before it reads, so the check must be cheap: the
newest revision is read from the migration files' own ``revision`` lines (no Alembic
import) and compared with the stored one in one query. Alembic is imported, and a
lock taken, only when the database is behind."""

from __future__ import annotations

import fcntl
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from llmos_jobs.crypto import KeyRing
from llmos_jobs.db.session import Database, get_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_PG_LOCK_KEY = 0x6C6D6F73  # "lmos"
_REVISION = re.compile(r"^(down_)?revision\b[^=\n]*=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"""['"]([^'"]+)['"]""")


def alembic_config(url: str, keys: KeyRing | None = None) -> Config:
    """``keys``: the ring that migrations which re-encode stored text use (default:
    this process's settings)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if keys is not None:
        config.attributes["key_ring"] = keys
    return config


@cache
def head_revision() -> str:
    """The newest revision: the one no migration names as its ``down_revision``."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for down, value in _REVISION.findall(script.read_text()):
            (parents if down else revisions).update(_QUOTED.findall(value))
    heads = revisions - parents
    if len(heads) == 1:
        return heads.pop()
    # Branches or a layout the pattern does not read: ask Alembic.
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def stored_revision(db: Database) -> str | None:
    """The revision the database is at; None when it has no schema yet."""
    try:
        with get_engine(db).connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no alembic_version table: a new database
        return None


def upgrade(db: Database) -> None:
    """Bring the database to the newest revision."""
    url = db.url
    if stored_revision(db) == head_revision():
        return
    from alembic import command

    config = alembic_config(url, db.keys)
    if url.startswith("sqlite"):
        db_path = Path(url.split("///", 1)[1]) if "///" in url else None
        if db_path is None or str(db_path) == ":memory:":
            command.upgrade(config, "head")
            return
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # Processes starting together on a new file queue here; each that follows the
        # first finds the schema at head and Alembic does nothing.
        with open(f"{db_path}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            command.upgrade(config, "head")
        return
    with get_engine(db).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            command.upgrade(config, "head")
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
