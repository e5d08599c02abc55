"""Where the tests find Redis and PostgreSQL: testcontainers when a Docker daemon
answers; otherwise a private redis-server of this run (or the local one) and the
local PostgreSQL, in databases of this run's own. Under CI=true a missing service
fails the run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def missing(service: str, how: str) -> None:
    message = f"{service} is not reachable: {how}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL without a database number."""
    try:
        from testcontainers.community.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}"
            return
    except Exception:  # no Docker daemon here: a private server, or the local service
        pass
    if shutil.which("redis-server"):
        with private_redis() as url:
            yield url
            return
    if not _port_open("127.0.0.1", 6379):
        missing("Redis", "start it with `redis-server --daemonize yes --port 6379`")
    yield "redis://127.0.0.1:6379"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(*options: str) -> Iterator[str]:
    """A redis-server of this test run alone on a free loopback port: two suites on one
    machine never share a database, and a test may flush or restart it. ``options``
    (e.g. compose.yaml's) come after the defaults, so they may turn persistence on or
    set a password; the address and the directory stay this run's."""
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="llmos-redis-")
    process = subprocess.Popen(
        ["redis-server", "--save", "", "--appendonly", "no", *options,
         "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        while not _port_open("127.0.0.1", port):
            if process.poll() is not None:
                missing("Redis", f"redis-server exited with {process.returncode}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL admin URL (psycopg) on a database that may create databases."""
    try:
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as container:
            yield container.get_connection_url()
            return
    except Exception:  # no Docker daemon here: use the local service
        pass
    if not _port_open("127.0.0.1", 5432):
        missing("PostgreSQL", "start it with `pg_ctlcluster <version> main start`")
    user = os.environ.get("LLMOS_TEST_PGUSER", "postgres")
    yield f"postgresql+psycopg://{user}@127.0.0.1:5432/test"
