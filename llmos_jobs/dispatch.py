"""Messages reach the broker here and nowhere else. Jobs: after their rows are
committed, one message each, whose only argument is the job id and whose message id is
the job's ``task_id`` (a delivery with any other id is stale and dropped). Webhook
deliveries and batch expansions: one message each, whose id is the row's own id, so
that the reconciler (llmos_jobs.reconcile) can tell whether the broker still holds it.

A job whose message cannot leave is failed with the reason, so no one waits for it
forever. A turn failed this way releases the next turn of its mindspace, which cannot
leave either and is failed the same way, so that none of them waits forever behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from broker_config import CONTROL_QUEUE, TaskName, broker_priority, queue_for, transport_of
from llmos_jobs import turn_order
from llmos_jobs.db import jobs as job_crud
from llmos_jobs.db.models import Job
from llmos_jobs.db.session import DatabaseRef
from llmos_jobs.errors import BrokerUnavailable
from schemas.common import JobKind

_TASKS: dict[JobKind, TaskName] = {
    JobKind.generate: TaskName.generate,
    JobKind.model_op: TaskName.model_op,
    JobKind.mindspace_turn: TaskName.mindspace_turn,
}
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}


def task_for_kind(kind: JobKind) -> TaskName:
    return _TASKS[kind]


def wire_priority(app: Celery, priority: int) -> int:
    """llmos ``priority`` as the message priority of ``app``'s transport (0 stays the
    highest: on AMQP the broker serves the highest number first)."""
    return broker_priority(priority, transport_of(str(app.conf.broker_url)))


def send(app: Celery, job: Job, *, producer: Any = None) -> None:
    """The message of one committed job (its current attempt: ``job.task_id``)."""
    app.send_task(task_for_kind(job.kind), args=[job.id], task_id=job.task_id,
                  queue=job.queue, priority=wire_priority(app, job.priority), producer=producer,
                  retry_policy=_PUBLISH_RETRY)


def resend(app: Celery, jobs: Sequence[Job]) -> None:
    """Messages of committed jobs that the broker lost (the reconciler). A broker that
    cannot be reached raises: the jobs stay queued, and the next pass tries again."""
    with app.producer_or_acquire() as producer:
        for job in jobs:
            send(app, job, producer=producer)


def send_delivery(app: Celery, delivery_id: str) -> None:
    """The message of a committed webhook delivery (its id is the delivery's)."""
    task = TaskName.deliver_webhook
    app.send_task(task, args=[delivery_id], task_id=delivery_id, queue=queue_for(task),
                  retry_policy=_PUBLISH_RETRY)


def send_batch_expansion(app: Celery, batch_id: str, *, priority: int) -> None:
    """The message that turns a committed batch's lines into jobs (its id is the batch's)."""
    app.send_task(TaskName.batch_expand, args=[batch_id], task_id=batch_id,
                  queue=CONTROL_QUEUE, priority=wire_priority(app, priority),
                  retry_policy=_PUBLISH_RETRY)


def send_batch_finalization(app: Celery, batch_id: str) -> None:
    """The message that writes the files of a batch whose jobs have all ended (its id
    is derived from the batch's: a batch is finalised once)."""
    app.send_task(TaskName.batch_finalize, args=[batch_id], task_id=finalization_id(batch_id),
                  queue=CONTROL_QUEUE, retry_policy=_PUBLISH_RETRY)


def finalization_id(batch_id: str) -> str:
    return f"finalize-{batch_id}"


def publish(app: Celery, jobs: Sequence[Job], *, dead_after_s: float,
            database_url: DatabaseRef = None) -> None:
    """One message per committed job, on one connection. When the broker cannot be
    reached, the jobs not yet sent are failed, and BrokerUnavailable says so."""
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for job in jobs:
                send(app, job, producer=producer)
                sent += 1
    except (OperationalError, OSError) as exc:
        unsent = list(jobs[sent:])
        failed = 0
        while unsent:
            unsent += _abandon(unsent.pop(0), f"broker unreachable: {exc}",
                               dead_after_s=dead_after_s, database_url=database_url)
            failed += 1
        raise BrokerUnavailable(
            f"could not enqueue {failed} job(s): the broker is unreachable ({exc}); start "
            f"one with `llmos up` or check LLMOS_BROKER_URL"
        ) from None


def _abandon(job: Job, reason: str, *, dead_after_s: float, database_url: DatabaseRef
             ) -> list[Job]:
    """A job whose message never left: failed. The turns this releases (not sent)."""
    released: list[Job] = []
    with turn_order.ending(job, publish=released.extend, dead_after_s=dead_after_s,
                           database_url=database_url) as session:
        job_crud.fail_unsent(session=session, job_id=job.id, message_id=job.task_id,
                             error_message=reason)
    return released
