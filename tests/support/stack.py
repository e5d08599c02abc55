"""A test stack: one broker database, one SQL database, and real worker subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from broker_config import MAX_PRIORITY, Transport, transport_of
from llmos_jobs import broker_view
from llmos_jobs.broker import create_app
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import Database
from llmos_jobs.settings import Settings
from tests.support.services import fresh_pg_database
from tests.support.waiting import HANG_GUARD_S, until

# The tests' webhook receivers listen on 127.0.0.1; 4 attempts, 0.3 s apart.
WEBHOOK_ALLOWED_HOSTS = "127.0.0.1"
WEBHOOK_RETRY_DELAYS = "0.3,0.3,0.3"
# PostgreSQL connections each process keeps open per database. A suite holds dozens of
# processes (workers, control processes, API servers, the tests themselves) on dozens of
# databases; at the default of 5 each, two suites at once exceed PostgreSQL's default
# max_connections (100). A busy process still opens more, and closes them after.
DATABASE_POOL_SIZE = 1


@dataclass
class Stack:
    name: str  # "sqlite", "postgres" (both on Redis) or "rabbitmq" (PostgreSQL, RabbitMQ)
    broker_url: str
    database_url: str
    data_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The stack's own control process (its beat: reaper, reconciler, expiry sweep).
    control: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LLMOS_") or k == "LLMOS_ENCRYPTION_KEYS"}
        env.update(
            LLMOS_BROKER_URL=self.broker_url, LLMOS_DATABASE_URL=self.database_url,
            LLMOS_DATA_DIR=str(self.data_dir), LLMOS_HEARTBEAT_INTERVAL_S="0.5",
            LLMOS_DATABASE_POOL_SIZE=str(DATABASE_POOL_SIZE),
            LLMOS_WORKER_DEAD_AFTER_S="4",
            # The control process delivers webhooks: the tests' receiver allow-list and
            # a short retry schedule.
            LLMOS_WEBHOOK_ALLOWED_HOSTS=WEBHOOK_ALLOWED_HOSTS,
            LLMOS_WEBHOOK_RETRY_DELAYS=WEBHOOK_RETRY_DELAYS,
        )
        return env

    def settings(self) -> Settings:
        return Settings(broker_url=self.broker_url, database_url=self.database_url,
                        data_dir=self.data_dir, worker_dead_after_s=4,
                        database_pool_size=DATABASE_POOL_SIZE)

    @property
    def database(self) -> Database:
        return Database.from_settings(self.settings())

    def client(self, tenant: str = "default") -> LlmosClient:
        return LlmosClient(tenant=tenant, settings=self.settings())

    def webhook_client(self, tenant: str) -> LlmosClient:
        """A producer allowed to name the tests' webhook receivers, like the workers."""
        settings = self.settings().model_copy(
            update={"webhook_allowed_hosts": WEBHOOK_ALLOWED_HOSTS})
        return LlmosClient(tenant=tenant, settings=settings)

    @property
    def transport(self) -> Transport:
        return transport_of(self.broker_url)

    def redis(self) -> redis.Redis:
        assert self.transport is Transport.redis, "this stack's broker is not Redis"
        return redis.Redis.from_url(self.broker_url)

    def waiting(self, queue: str) -> int:
        """Messages waiting (not delivered) in ``queue``, on either broker."""
        if self.transport is Transport.amqp:
            depths = broker_view.queue_depths(create_app(self.broker_url), [queue])
            assert depths is not None
            return depths[queue]
        r = self.redis()
        return sum(int(r.llen(queue if step == 0 else f"{queue}:{step}"))
                   for step in range(MAX_PRIORITY + 1))

    def start_worker(self, name: str, *args: str, env: dict[str, str] | None = None,
                     wait: bool = True, named: bool = True) -> subprocess.Popen[bytes]:
        """``llmos worker``; ``named=False`` leaves the default name to the worker."""
        naming = ["--name", name] if named else []
        # The child writes to its own copy of the file descriptor; this one closes here.
        with open(self.data_dir / f"{name.split('@')[0]}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "llmos_jobs.cli.main", "worker", *naming,
                 "--loglevel", "warning", *args],
                env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(process)
        if wait:
            self.wait_for_worker(name, process)
        return process

    def start_control(self, *args: str, env: dict[str, str] | None = None,
                      wait: bool = False) -> subprocess.Popen[bytes]:
        """``llmos control``: reaping, reconciling, batches and webhooks of this stack.
        ``wait``: return once it answers a ping (a test that then cuts what it needs
        at startup must not catch it still starting)."""
        name = f"control-{len(self.workers)}@test"
        with open(self.data_dir / "control.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "llmos_jobs.cli.main", "control", "--loglevel",
                 "warning", "--name", name, *args],
                env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(process)
        if wait:
            self.wait_for_control(name, process)
        return process

    def wait_for_control(self, name: str, process: subprocess.Popen[bytes],
                         timeout_s: float = HANG_GUARD_S) -> None:
        app = create_app(self.broker_url)

        def answers() -> bool:
            assert process.poll() is None, f"control {name} exited: see {self.data_dir}"
            return bool(app.control.ping(destination=[name], timeout=0.5))

        until(answers, f"control {name} answered a ping", timeout_s, poll_s=0)

    def wait_for_worker(self, name: str, process: subprocess.Popen[bytes],
                        timeout_s: float = HANG_GUARD_S) -> None:
        client = self.client()

        def registered() -> bool:
            assert process.poll() is None, f"worker {name} exited: see {self.data_dir}"
            return any(w.name == name and w.pid == process.pid for w in client.workers())

        until(registered, f"worker {name} registered", timeout_s, poll_s=0.2)

    def stop_worker(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    @contextmanager
    def without_control(self) -> Iterator[None]:
        """The stack's control process stopped for the block, and a new one started (and
        answering) after it: nothing is reaped, expired or swept meanwhile."""
        assert self.control is not None, "this stack runs no control process of its own"
        self.stop_worker(self.control)
        try:
            yield
        finally:
            self.control = self.start_control(wait=True)

    def stop(self) -> None:
        for process in self.workers:
            self.stop_worker(process)


def make_stack(backend: str, redis_base: str, postgres_admin: str | None, data_dir: Path,
               redis_db: int, broker_url: str | None = None) -> Stack:
    """A stack on ``backend``'s database; its broker is database ``redis_db`` of
    ``redis_base`` (flushed), or ``broker_url`` when given (a fresh virtual host)."""
    if postgres_admin is not None:
        database_url = fresh_pg_database(postgres_admin)
    else:
        database_url = f"sqlite:///{data_dir / 'llmos.db'}"
    stack = Stack(name=backend, broker_url=broker_url or f"{redis_base}/{redis_db}",
                  database_url=database_url, data_dir=data_dir)
    if broker_url is None:
        stack.redis().flushdb()
    return stack
def database_at(url: str) -> Database:
    """The database at ``url``, read with this test process's key ring."""
    return Database.from_settings(Settings(database_url=url))
