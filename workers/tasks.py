"""Thin Celery tasks: the message carries a job id (or a webhook delivery id); the work
is in workers.execution and llmos_jobs.webhooks.delivery."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import DBAPIError

from broker_config import JOB_TASKS, TaskName
from llmos_jobs.webhooks.delivery import attempt_delivery
from workers.control import register_control_tasks
from workers.execution import execute_job
from workers.runtime import get_runtime


def _run(task: Task, job_id: str) -> str:
    # A turn's message is published only once the turns before it have ended
    # (llmos_jobs.turn_order): it never has to wait here.
    return execute_job(job_id=job_id, message_id=task.request.id,
                       ctx=get_runtime().context()).value


def _expand_batch(batch_id: str) -> None:
    from llmos_jobs.batches import expand

    expand(batch_id)


def _deliver(task: Task, delivery_id: str) -> str:
    retry_in = attempt_delivery(delivery_id=delivery_id)
    if retry_in is not None:
        # The schedule's limit lives on the delivery row, so Celery's count is unbounded.
        raise task.retry(countdown=retry_in, max_retries=None)
    return "done"


def register_tasks(app: Celery) -> None:
    """Register every llmos task on ``app``, one per task name."""
    app.task(name=TaskName.batch_expand.value, acks_late=True, autoretry_for=(DBAPIError,),
             retry_backoff=True, max_retries=10)(_expand_batch)
    app.task(
        name=TaskName.deliver_webhook.value, bind=True, acks_late=True,
        autoretry_for=(DBAPIError,), retry_backoff=True, retry_backoff_max=60, max_retries=10,
    )(_deliver)
    register_control_tasks(app)
    for name in sorted(JOB_TASKS):
        def run(self: Task, job_id: str) -> str:
            return _run(self, job_id)

        run.__name__ = name.value.rsplit(".", 1)[-1]
        # A database outage must not lose the job: the delivery is retried (same message
        # id, so the claim still recognises it) with Celery's own backoff.
        app.task(
            name=name.value, bind=True, acks_late=True, autoretry_for=(DBAPIError,),
            retry_backoff=True, retry_backoff_max=60, max_retries=10,
        )(run)


def registered_llmos_tasks(app: Celery) -> list[str]:
    tasks: dict[str, Any] = app.tasks
    return sorted(n for n in tasks if n.startswith("llmos."))
