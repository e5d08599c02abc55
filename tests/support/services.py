"""Where the tests find Redis, PostgreSQL and RabbitMQ: testcontainers when a Docker
daemon answers; otherwise a private redis-server of this run (or the local one), the
local PostgreSQL, in databases of this run's own, and the local RabbitMQ, in a virtual
host of this run's own. Under CI=true a missing service fails the run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _docker_may_answer() -> bool:
    """Whether a Docker daemon may be there to ask. testcontainers is tried only then:
    its client, probing for a daemon that is not there, leaves a socket unclosed (a
    ResourceWarning, an error under the suite's filterwarnings)."""
    return bool(os.environ.get("DOCKER_HOST")) or os.path.exists("/var/run/docker.sock")


def missing(service: str, how: str) -> None:
    message = f"{service} is not reachable: {how}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL without a database number."""
    if _docker_may_answer():
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
    if _docker_may_answer():
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


def fresh_pg_database(admin_url: str) -> str:
    name = f"llmos_test_{uuid.uuid4().hex[:8]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    from llmos_jobs.db.session import _engines

    for engine in _engines.values():
        engine.dispose()
    name = url.rsplit("/", 1)[1]
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


RABBITMQ_PORT = 5672


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """An AMQP URL on a virtual host of this run alone (created here, deleted after), on
    the local RabbitMQ: two suites on one machine never see each other's queues."""
    if not _port_open("127.0.0.1", RABBITMQ_PORT):
        missing("RabbitMQ", "start it with `service rabbitmq-server start`")
    if shutil.which("rabbitmqctl") is None:
        missing("RabbitMQ", "rabbitmqctl is needed to create a virtual host per run")
    vhost = f"llmos-test-{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        missing("RabbitMQ", f"could not create a virtual host with rabbitmqctl: {exc}")
    try:
        yield f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@contextmanager
def redis_sentinel(master: str) -> Iterator[str]:
    """A private Redis master and one Sentinel watching it under ``master``: the
    ``sentinel://`` broker URL of the Sentinel."""
    if not shutil.which("redis-server"):
        missing("Redis Sentinel", "redis-server (which also runs as a Sentinel) is needed")
    with private_redis() as master_url:
        master_port = master_url.rsplit(":", 1)[1]
        port = _free_port()
        workdir = tempfile.mkdtemp(prefix="llmos-sentinel-")
        config = os.path.join(workdir, "sentinel.conf")
        with open(config, "w") as f:
            f.write(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n")
        process = subprocess.Popen(["redis-server", config, "--sentinel"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            while not _port_open("127.0.0.1", port):
                if process.poll() is not None:
                    missing("Redis Sentinel", f"the Sentinel exited with {process.returncode}")
                time.sleep(0.05)
            yield f"sentinel://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=30)
            shutil.rmtree(workdir, ignore_errors=True)
