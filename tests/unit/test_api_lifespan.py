"""The API's lifespan runs through every middleware: it brings a fresh database's
schema up to date before the first request (no broker is reached for that)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from llmos_jobs.api.app import create_app
from llmos_jobs.settings import Settings


def test_the_lifespan_migrates_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    app = create_app(Settings(database_url=url, broker_url="redis://127.0.0.1:1/0"))
    with TestClient(app) as http:  # a middleware that fails the lifespan fails here
        assert http.get("/healthz").status_code == 200
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "job", "idempotency_key"} <= tables
