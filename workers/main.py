"""The entry points of worker processes: ``llmos worker`` (inference) and ``llmos
control`` (the control plane). Each reads the settings once, here, and passes them down."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from broker_config import CONTROL_QUEUE, WEBHOOKS_QUEUE
from llmos_jobs.crypto import require_key_ring
from llmos_jobs.db import registry
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import RegisteredModel
from llmos_jobs.dispatch_bell import DispatchBell
from llmos_jobs.job_events import events_url
from llmos_jobs.services.dispatcher import Dispatcher
from llmos_jobs.services.quotas import TokenPacer
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import get_settings
from schemas.model import EngineKind
from workers.control import beat_schedule
from workers.engines.pool import EngineChoice
from workers.metrics_endpoint import MetricsEndpoint
from workers.runtime import WorkerRuntime, default_worker_name, initial_queues, set_runtime
from workers.tasks import worker_app

CPU_CONCURRENCY = 8
# SGLang batches continuously whatever sequences it holds: a GPU is busy only when it is
# handed many jobs at once. The threads pool gives it one sequence per thread.
SGLANG_CONCURRENCY = 64
_SGLANG = frozenset({EngineKind.sglang, EngineKind.sglang_http})


def default_concurrency(*, pool: str, choice: EngineChoice | None,
                        models: list[str] | None, database: Database) -> int:
    """Jobs in flight when ``--concurrency`` is not given: SGLANG_CONCURRENCY for a
    threads-pool worker whose engine is SGLang (its ``--engine``, else the registered
    engine of any model it serves; ``models`` None means all), else CPU_CONCURRENCY."""
    if pool != "threads":
        return CPU_CONCURRENCY
    if choice is not None and choice.kind is not None:
        kinds = {choice.kind}
    else:
        with database.session() as session:
            names = models if models is not None else registry.list_model_names(
                session=session)
            kinds = {EngineKind(row.engine) for name in names
                     if (row := session.get(RegisteredModel, name)) is not None}
    return SGLANG_CONCURRENCY if kinds & _SGLANG else CPU_CONCURRENCY


def run_worker(
    *,
    name: str | None,
    models: list[str],
    queues: list[str],
    gpu: int | None,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    engine_choice: EngineChoice | None = None,
) -> None:
    """Run a Celery worker in this process until it is stopped."""
    if gpu is not None:
        # Before anything could touch CUDA: this process, and its pool children, see
        # exactly one device.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    settings = get_settings()
    require_key_ring(settings)
    submitter = Submitter(settings, Database.from_settings(settings))
    database = submitter.database
    app = worker_app(submitter)
    upgrade(database)
    # Built before the pool starts: a prefork pool's metrics directory is wiped here.
    endpoint = (MetricsEndpoint.for_worker(port=settings.worker_metrics_port, pool=pool, gpu=gpu)
                if settings.worker_metrics_port else None)
    name = name or default_worker_name(gpu)
    if queues:
        served: list[str] | None = [q.removeprefix("lang.") for q in queues if
                                    q.startswith("lang.")]
        consume = list(queues)
    elif models:
        served, consume = list(models), initial_queues(name, models)
    else:
        with database.session() as session:
            served, consume = None, initial_queues(
                name, registry.list_model_names(session=session)
            )
    if concurrency is None:
        concurrency = default_concurrency(pool=pool, choice=engine_choice, models=served,
                                          database=database)
    runtime = WorkerRuntime(
        app=app, submitter=submitter, name=name, pool_kind=pool, concurrency=concurrency,
        queues=consume,
        models=served, device=f"cuda:{gpu}" if gpu is not None else "cpu",
        engine_choice=engine_choice,
    )
    set_runtime(runtime)

    def on_ready(**_: Any) -> None:
        runtime.start()
        if endpoint is not None:  # once the pool's children exist: they inherit no socket
            endpoint.start()

    def on_shutdown(**_: Any) -> None:
        runtime.stop()
        if endpoint is not None:
            endpoint.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    app.worker_main([
        "worker", "--hostname", name, "--queues", ",".join(consume), "--pool", pool,
        "--concurrency", str(concurrency), "--loglevel", loglevel, "--task-events",
        "--without-gossip", "--without-mingle",
    ])


def run_control(*, name: str | None, beat: bool, concurrency: int, loglevel: str) -> None:
    """Run the control process in this process until it is stopped."""
    settings = get_settings()
    require_key_ring(settings)
    submitter = Submitter(settings, Database.from_settings(settings))
    app = worker_app(submitter)
    upgrade(submitter.database)
    app.conf.beat_schedule = beat_schedule(settings)
    # Every control process runs a dispatcher: releases are compare-and-sets, so more
    # than one never sends a job twice, and any one of them keeps held jobs moving.
    bell_url = events_url(settings)
    # Batch jobs are paced by their tenant's tokens per minute (docs/quotas.md).
    dispatcher = Dispatcher(settings, submitter.database, app,
                            pacer=TokenPacer(submitter.quotas),
                            bell=DispatchBell(bell_url) if bell_url is not None else None)
    worker_ready.connect(lambda **_: dispatcher.start(), weak=False)
    worker_shutdown.connect(lambda **_: dispatcher.stop(), weak=False)
    if settings.control_metrics_port:
        endpoint = MetricsEndpoint.for_control(port=settings.control_metrics_port,
                                               database=submitter.database,
                                               scale=settings.scale_policy())
        worker_ready.connect(lambda **_: endpoint.start(), weak=False)
        worker_shutdown.connect(lambda **_: endpoint.stop(), weak=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"control-{socket.gethostname()}"
    argv = ["worker", "--hostname", name, "--queues", f"{CONTROL_QUEUE},{WEBHOOKS_QUEUE}",
            "--pool", "threads", "--concurrency", str(concurrency), "--loglevel", loglevel,
            "--without-gossip", "--without-mingle"]
    if beat:
        argv += ["--beat", "--schedule", str(settings.data_dir / f"beat-{name}.db")]
    app.worker_main(argv)
