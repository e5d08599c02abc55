"""Keys every process shares, on SQLite and PostgreSQL: the migration encrypts what
older versions stored in plaintext (tests/unit/test_key_ring.py has the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from llmos_jobs import crypto
from llmos_jobs.db.session import session_scope
from llmos_jobs.settings import get_settings
from tests.support.stack import database_at


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_migration_encrypts_errors_stored_in_plaintext(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from alembic import command

    from llmos_jobs.db.batch_tables import Batch
    from llmos_jobs.db.migrate import alembic_config, upgrade
    from llmos_jobs.db.session import get_engine
    from llmos_jobs.db.tables import Job
    from tests.support.services import drop_pg_database, fresh_pg_database

    admin = request.getfixturevalue("postgres_admin") if backend == "postgres" else None
    url = fresh_pg_database(admin) if admin else f"sqlite:///{tmp_path / 'old.db'}"
    try:
        command.upgrade(alembic_config(url), "0009")
        with get_engine(database_at(url)).begin() as conn:
            conn.execute(text(
                "INSERT INTO job (id, tenant, kind, priority, model, payload, status, "
                "error_type, error_message, queue, task_id, attempts, created_at) VALUES "
                "('j1', 't', 'generate', 5, 'm', :payload, 'failed', 'E', "
                "'plain error about the prompt', 'lang.m', 'x', 1, '2026-01-01 00:00:00+00')"),
                {"payload": crypto.KeyRing.from_settings(get_settings()).encrypt("{}")})
            conn.execute(text(
                "INSERT INTO batch (id, tenant, status, endpoint, input_file_id, "
                "completion_window, priority, invalid, total, created_at) VALUES "
                "('b1', 't', 'failed', '/v1/chat/completions', 'f', '24h', 8, "
                "'[{\"line\": 1, \"message\": \"plain line\"}]', 1, "
                "'2026-01-01 00:00:00+00')"))
        upgrade(database_at(url))
        with get_engine(database_at(url)).connect() as conn:
            error = conn.execute(text("SELECT error_message FROM job")).scalar_one()
            invalid = conn.execute(text("SELECT invalid FROM batch")).scalar_one()
        assert "plain" not in error and "plain" not in invalid
        with session_scope(database_at(url)) as session:
            job, batch = session.get(Job, "j1"), session.get(Batch, "b1")
            assert job is not None and batch is not None
            assert job.error_message == "plain error about the prompt"
            assert batch.invalid == [{"line": 1, "message": "plain line"}]
    finally:
        if admin:
            drop_pg_database(admin, url)
