"""A worker's (or the control process's) Prometheus endpoint: prometheus_client's own
HTTP server on LLMOS_WORKER_METRICS_PORT (LLMOS_CONTROL_METRICS_PORT), serving
llmos_jobs.metrics.

A prefork pool runs jobs in child processes, so the counts happen there. It follows
prometheus_client's multiprocess mode ("Multiprocess Mode (e.g. Gunicorn)"):
PROMETHEUS_MULTIPROC_DIR is set before the process starts (prometheus_client reads it
when it is imported), the directory is wiped before the pool starts, the endpoint sums
the children's files with a MultiProcessCollector in a registry of its own, and each
child marks itself dead as it exits."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery.signals import worker_process_shutdown
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.values import MutexValue, ValueClass

from llmos_jobs import metrics
from llmos_jobs.db.session import Database
from llmos_jobs.errors import LlmosError
from llmos_jobs.scaling import ScalePolicy


def prefork_registry(*, gpu: int | None) -> CollectorRegistry:
    """The registry of a prefork worker's endpoint, once its directory is ready."""
    directory = os.environ.get(metrics.MULTIPROC_ENV)
    if not directory:
        raise LlmosError(
            f"a prefork worker with a metrics port counts jobs in its child processes: set "
            f"{metrics.MULTIPROC_ENV} to a directory of its own before starting it "
            f"(docs/metrics.md), or use --pool threads")
    # Set after prometheus_client was imported, it would not be used: values would stay
    # in each child's memory and the endpoint would show none of them.
    if ValueClass is MutexValue:
        raise LlmosError(f"{metrics.MULTIPROC_ENV} must be set before the worker starts")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # a previous run's: they would be summed in
        stale.unlink()
    worker_process_shutdown.connect(_mark_dead, weak=False)
    return metrics.multiprocess_registry(gpu=gpu, database=None)


def _mark_dead(**_: Any) -> None:
    mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


@dataclass
class MetricsEndpoint:
    port: int
    registry: CollectorRegistry
    _server: WSGIServer | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def for_worker(cls, *, port: int, pool: str, gpu: int | None) -> MetricsEndpoint:
        registry = (prefork_registry(gpu=gpu) if pool == "prefork"
                    else metrics.worker_registry(gpu=gpu, database=None))
        return cls(port=port, registry=registry)

    @classmethod
    def for_control(cls, *, port: int, database: Database, scale: ScalePolicy | None = None
                    ) -> MetricsEndpoint:
        """The control process's: webhook outcomes, and the database's state (queue
        depth, jobs queued and running, workers), as the API's /metrics has it."""
        return cls(port=port, registry=metrics.worker_registry(gpu=None, database=database,
                                                                  scale=scale))

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
