"""Fixtures: real Redis, real PostgreSQL and SQLite, real RabbitMQ, real worker
subprocesses.

Workers are started once per session per backend; tests that kill workers start
their own. A test marked ``brokers`` runs on a third stack too, PostgreSQL with
RabbitMQ as the broker: the representative tests of the pipeline, priority order,
worker loss, Flower, webhooks and batches, not every variant (docs/brokers.md lists
them)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.api_server import API_WAIT_TIMEOUT_S, ApiServer
from tests.services import postgres_server, rabbitmq_vhost, redis_server
from tests.stack import Stack

# Redis database numbers of this suite (not 0, which people use by hand).
REDIS_DB = {"sqlite": 11, "postgres": 12}


@pytest.fixture(scope="session", autouse=True)
def encryption_keys() -> Iterator[str]:
    """One key ring for this process and the workers it starts (tests/stack.py)."""
    from cryptography.fernet import Fernet

    from llmos_jobs.settings import get_settings

    keys = Fernet.generate_key().decode()
    os.environ["LLMOS_ENCRYPTION_KEYS"] = keys
    get_settings.cache_clear()
    yield keys


@pytest.fixture(scope="session")
def redis_base() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _fresh_pg_database(admin_url: str) -> str:
    name = f"llmos_test_{uuid.uuid4().hex[:8]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg_database(admin_url: str, url: str) -> None:
    from llmos_jobs.db.session import _engines

    for engine in _engines.values():
        engine.dispose()
    name = url.rsplit("/", 1)[1]
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_stack(backend: str, redis_base: str, postgres_admin: str | None, data_dir: Path,
               redis_db: int, broker_url: str | None = None) -> Stack:
    """A stack on ``backend``'s database; its broker is database ``redis_db`` of
    ``redis_base`` (flushed), or ``broker_url`` when given (a fresh virtual host)."""
    if postgres_admin is not None:
        database_url = _fresh_pg_database(postgres_admin)
    else:
        database_url = f"sqlite:///{data_dir / 'llmos.db'}"
    stack = Stack(name=backend, broker_url=broker_url or f"{redis_base}/{redis_db}",
                  database_url=database_url, data_dir=data_dir)
    if broker_url is None:
        stack.redis().flushdb()
    return stack


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of ``stack`` runs on SQLite and PostgreSQL (Redis); one marked
    ``brokers`` on PostgreSQL with RabbitMQ too."""
    if "stack" not in metafunc.fixturenames:
        return
    backends = ["sqlite", "postgres"]
    if metafunc.definition.get_closest_marker("brokers") is not None:
        backends.append("rabbitmq")
    metafunc.parametrize("stack", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, redis_base: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack per backend with one no-op worker serving the models `echo` and `broken`."""
    backend: str = request.param
    admin = request.getfixturevalue("postgres_admin") if backend != "sqlite" else None
    broker_url = request.getfixturevalue("rabbitmq_url") if backend == "rabbitmq" else None
    data_dir = tmp_path_factory.mktemp(f"stack-{backend}")
    stack = make_stack(backend, redis_base, admin, data_dir, REDIS_DB.get(backend, 0),
                       broker_url)
    client = stack.client()
    client.register_model("echo", data_dir / "echo", engine="noop")
    broken = data_dir / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"max_position_embeddings": 512}')
    client.register_model("broken", broken, engine="transformers")
    stack.start_worker(f"noop-{backend}@test", "--model", "echo", "--model", "broken",
                       "--concurrency", "4")
    stack.start_control()
    yield stack
    stack.stop()
    if admin is not None:
        _drop_pg_database(admin, stack.database_url)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmos_jobs.demo_model import create_demo_model

    # float64: greedy outputs compared across batch shapes must not flip on rounding.
    return create_demo_model(tmp_path_factory.mktemp("models") / "demo-tiny", dtype="float64")


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[ApiServer]:
    """`llmos api` serving the session stack (one server per backend)."""
    server = ApiServer.start(stack)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api_short_wait(stack: Stack) -> Iterator[ApiServer]:
    """A second `llmos api` on the same stack whose waiting calls give up after
    API_WAIT_TIMEOUT_S, for the tests that watch a wait time out."""
    server = ApiServer.start(stack, wait_timeout_s=API_WAIT_TIMEOUT_S)
    yield server
    server.stop()
