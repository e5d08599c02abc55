"""Migration 0021 on SQLite and PostgreSQL: the models registered before versions become
their version 1 (hashed as a registration hashes them, so registering the same
directory again changes nothing), their jobs record version 1, new content becomes
version 2, and going down again keeps the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from llmos_jobs.db.migrate import alembic_config
from llmos_jobs.db.session import get_engine
from llmos_jobs.db.types import utcnow
from llmos_jobs.model_content import content_of
from llmos_jobs.services import models
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.support.stack import database_at

BEFORE = "0016"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    url = fresh_pg_database(admin)
    yield url
    drop_pg_database(admin, url)


def test_models_registered_before_versions_become_version_1(
        database_url: str, demo_model_dir: Path, tmp_path: Path) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, BEFORE)
    engine = get_engine(database_at(database_url))
    path = str(demo_model_dir.resolve())
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO registered_model (name, path, engine, context_length, created_at) "
            "VALUES ('legacy', :path, 'transformers', 2048, :now)"),
            {"path": path, "now": utcnow()})
        conn.execute(text(
            "INSERT INTO job (id, tenant, kind, priority, model, status, payload, queue, "
            "task_id, attempts, created_at) VALUES ('j1', 't', 'generate', 5, 'legacy', "
            "'succeeded', 'opaque', 'lang.legacy', 'm1', 1, :now)"), {"now": utcnow()})

    command.upgrade(config, "head")
    with engine.connect() as conn:
        version = conn.execute(text(
            "SELECT version, path, engine, content_hash, size_bytes FROM model_version "
            "WHERE name = 'legacy'")).one()
        current = conn.execute(text(
            "SELECT current_version FROM registered_model WHERE name = 'legacy'")).scalar()
        job_version = conn.execute(text("SELECT model_version FROM job WHERE id = 'j1'")).scalar()
    expected = content_of(path, "transformers")
    assert tuple(version) == (1, path, "transformers", expected.content_hash,
                              expected.size_bytes)
    assert current == 1 and job_version == 1

    submitter = Submitter(Settings(database_url=database_url), database_at(database_url))
    again = models.register(submitter, name="legacy", path=demo_model_dir,
                            engine="transformers")
    assert (again.current_version, again.registered) == (1, "unchanged")
    # Other content: version 2, made current with its path by one compare-and-set.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"max_position_embeddings": 512}')
    second = models.register(submitter, name="legacy", path=other, engine="noop")
    assert (second.current_version, second.registered, second.path, second.context_length
            ) == (2, "new", str(other.resolve()), 512)
    assert [(v.version, v.current) for v in models.list_versions(submitter, "legacy")] == [
        (1, False), (2, True)]

    command.downgrade(config, BEFORE)
    with engine.connect() as conn:
        assert "model_version" not in inspect(conn).get_table_names()
        assert "model_version" not in {c["name"] for c in inspect(conn).get_columns("job")}
        # The name keeps what it serves now: its current version's path.
        assert conn.execute(text("SELECT path FROM registered_model WHERE name = 'legacy'")
                            ).scalar() == str(other.resolve())
