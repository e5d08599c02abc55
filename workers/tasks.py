"""Thin Celery tasks: the message carries a job id (or a webhook delivery id, or a
batch id); the work is in workers.execution and the services. A worker's entry point
(workers.main) builds its app with ``worker_app``: producers send by name and never
import this module."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError

from broker_config import JOB_TASKS, TaskName
from llmos_jobs import broker
from llmos_jobs.services import batches
from llmos_jobs.services.submission import Submitter
from llmos_jobs.services.webhooks.delivery import attempt_delivery
from workers.control import register_control_tasks
from workers.execution import execute_job
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


def worker_app(submitter: Submitter) -> Celery:
    """The app of a worker or control process, with every llmos task registered."""
    settings = submitter.settings
    app = broker.create_app(settings.resolved_broker_url(),
                            time_limit_s=settings.job_time_limit_s,
                            sentinel_master=settings.broker_sentinel_master)
    register_tasks(app, submitter)
    return app


def register_tasks(app: Celery, submitter: Submitter) -> None:
    """Register every llmos task on ``app``, one per task name."""

    def run(task: Task, job_id: str) -> str:
        runtime = get_runtime()
        left = runtime.left_queue(task.request.delivery_info)
        if left is not None:
            log.info("job %s: given back to %s, which this worker no longer consumes",
                     job_id, left)
            raise Reject(f"this worker no longer consumes {left}", requeue=True)
        # A turn's message is published only once the turns before it have ended
        # (llmos_jobs.services.turns): it never has to wait here.
        return execute_job(job_id=job_id, message_id=task.request.id,
                           ctx=runtime.context()).value

    def expand_batch(batch_id: str) -> None:
        batches.expand(submitter, batch_id)

    def deliver(task: Task, delivery_id: str) -> str:
        retry_in = attempt_delivery(delivery_id=delivery_id, settings=submitter.settings,
                                    database=submitter.database)
        if retry_in is not None:
            # The schedule's limit lives on the delivery row, so Celery's count is unbounded.
            raise task.retry(countdown=retry_in, max_retries=None)
        return "done"

    app.task(name=TaskName.batch_expand.value, acks_late=True, autoretry_for=(DBAPIError,),
             retry_backoff=True, max_retries=10)(expand_batch)
    app.task(
        name=TaskName.deliver_webhook.value, bind=True, acks_late=True,
        autoretry_for=(DBAPIError,), retry_backoff=True, retry_backoff_max=60, max_retries=10,
    )(deliver)
    register_control_tasks(app, submitter)
    for name in sorted(JOB_TASKS):
        def run_job(self: Task, job_id: str) -> str:
            return run(self, job_id)

        run_job.__name__ = name.value.rsplit(".", 1)[-1]
        # A database outage must not lose the job: the delivery is retried (same message
        # id, so the claim still recognises it) with Celery's own backoff.
        app.task(
            name=name.value, bind=True, acks_late=True, autoretry_for=(DBAPIError,),
            retry_backoff=True, retry_backoff_max=60, max_retries=10,
        )(run_job)


def registered_llmos_tasks(app: Celery) -> list[str]:
    tasks: dict[str, Any] = app.tasks
    return sorted(n for n in tasks if n.startswith("llmos."))
