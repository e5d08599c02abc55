"""Fixtures: real Redis, real PostgreSQL and SQLite, real RabbitMQ, real worker
subprocesses.

Workers are started once per session per backend; tests that kill workers start
their own. A test marked ``brokers`` runs on a third stack too, PostgreSQL with
RabbitMQ as the broker: the representative tests of the pipeline, priority order,
worker loss, Flower, webhooks and batches, not every variant (docs/brokers.md lists
them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.api_server import API_WAIT_TIMEOUT_S, ApiServer
from tests.support.services import drop_pg_database, postgres_server, rabbitmq_vhost, redis_server
from tests.support.stack import Stack, make_stack

# Redis database numbers of this suite (not 0, which people use by hand).
REDIS_DB = {"sqlite": 11, "postgres": 12}


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of ``stack`` runs on SQLite and PostgreSQL (Redis); one marked
    ``brokers`` on PostgreSQL with RabbitMQ too; one marked ``postgres_only`` (what it
    waits for lives in Redis, not in the database) on PostgreSQL alone."""
    if "stack" not in metafunc.fixturenames:
        return
    backends = ["sqlite", "postgres"]
    if metafunc.definition.get_closest_marker("postgres_only") is not None:
        backends = ["postgres"]
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
    stack.control = stack.start_control()
    yield stack
    stack.stop()
    if admin is not None:
        drop_pg_database(admin, stack.database_url)


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
