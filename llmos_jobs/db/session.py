"""Database handles and engines: one engine per (URL, key ring, process), created on
first use, never at import. The key ring is bound to the engine (its dialect), so the
encrypted columns read and write with the keys of the ``Settings`` the handle was
built from: an entry point builds a ``Database`` from its settings and passes it down;
nothing below reads the process's settings."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlmodel import Session

from llmos_jobs.crypto import KeyRing, bind_key_ring
from llmos_jobs.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Database:
    """One database and the key ring its encrypted columns use."""

    url: str
    keys: KeyRing
    pool_size: int = 5  # PostgreSQL: connections kept open (LLMOS_DATABASE_POOL_SIZE)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(url=normalise_url(settings.resolved_database_url()),
                   keys=KeyRing.from_settings(settings), pool_size=settings.database_pool_size)

    def session(self) -> AbstractContextManager[Session]:
        """A session on this database, committed on success (``session_scope``)."""
        return session_scope(self)


_engines: dict[tuple[str, KeyRing, int], Engine] = {}
_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """PostgreSQL goes through psycopg 3 whatever driver the URL names."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def masked(url: str) -> str:
    """``url`` fit to print: its password, if any, replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a database URL (a broker's, say): mask by hand
        scheme, sep, rest = url.partition("://")
        credentials, at, host = rest.rpartition("@")
        if not sep or not at or ":" not in credentials:
            return url
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(db: Database) -> Engine:
    """The engine of ``db`` in this process.

    Keyed by pid so that a forked pool child never reuses its parent's connections.
    """
    url = db.url
    key = (url, db.keys, os.getpid())
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(
                    url,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                  "check_same_thread": False},
                )
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=db.pool_size,
                                       max_overflow=10)
            bind_key_ring(engine.dialect, db.keys)
            _engines[key] = engine
    return engine


@contextmanager
def session_scope(db: Database) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(db), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
