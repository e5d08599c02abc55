"""Start a worker process: ``llmos worker``."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from llmos_jobs.crypto import require_key_ring
from llmos_jobs.db import registry
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.models import RegisteredModel
from llmos_jobs.db.session import session_scope
from llmos_jobs.settings import get_settings
from schemas.model import EngineKind
from workers.pool import EngineChoice
from workers.runtime import WorkerRuntime, default_worker_name, initial_queues, set_runtime

CPU_CONCURRENCY = 8
# SGLang batches continuously whatever sequences it holds: a GPU is busy only when it is
# handed many jobs at once. The threads pool gives it one sequence per thread.
SGLANG_CONCURRENCY = 64
_SGLANG = frozenset({EngineKind.sglang, EngineKind.sglang_http})


def default_concurrency(*, pool: str, choice: EngineChoice | None,
                        models: list[str] | None) -> int:
    """Jobs in flight when ``--concurrency`` is not given: SGLANG_CONCURRENCY for a
    threads-pool worker whose engine is SGLang (its ``--engine``, else the registered
    engine of any model it serves; ``models`` None means all), else CPU_CONCURRENCY."""
    if pool != "threads":
        return CPU_CONCURRENCY
    if choice is not None and choice.kind is not None:
        kinds = {choice.kind}
    else:
        with session_scope() as session:
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
    from llmos_jobs.celery_app import create_app

    app = create_app(settings.resolved_broker_url(), with_tasks=True)
    upgrade(settings.resolved_database_url())
    name = name or default_worker_name(gpu)
    if queues:
        served: list[str] | None = [q.removeprefix("lang.") for q in queues if
                                    q.startswith("lang.")]
        consume = list(queues)
    elif models:
        served, consume = list(models), initial_queues(name, models)
    else:
        with session_scope() as session:
            served, consume = None, initial_queues(
                name, registry.list_model_names(session=session)
            )
    if concurrency is None:
        concurrency = default_concurrency(pool=pool, choice=engine_choice, models=served)
    runtime = WorkerRuntime(
        app=app, name=name, pool_kind=pool, concurrency=concurrency, queues=consume,
        models=served, device=f"cuda:{gpu}" if gpu is not None else "cpu",
        engine_choice=engine_choice,
    )
    set_runtime(runtime)

    def on_ready(**_: Any) -> None:
        runtime.start()

    def on_shutdown(**_: Any) -> None:
        runtime.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    app.worker_main([
        "worker", "--hostname", name, "--queues", ",".join(consume), "--pool", pool,
        "--concurrency", str(concurrency), "--loglevel", loglevel, "--task-events",
        "--without-gossip", "--without-mingle",
    ])


