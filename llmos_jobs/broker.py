"""Messages reach the broker here and nowhere else. Jobs: after their rows are
committed, one message each, whose only argument is the job id and whose message id is
the job's ``task_id`` (a delivery with any other id is stale and dropped). Webhook
deliveries and batch expansions: one message each, whose id is the row's own id, so
that the reconciler (llmos_jobs.services.reconcile) can tell whether the broker still holds it.

A job whose message cannot leave is failed with the reason, so no one waits for it
forever. A turn failed this way releases the next turn of its mindspace, which cannot
leave either and is failed the same way, so that none of them waits forever behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from broker_config import (
    CONTROL_QUEUE,
    TaskName,
    Transport,
    broker_priority,
    celery_config,
    queue_for,
    transport_of,
)
from llmos_jobs.db.tables import Job
from llmos_jobs.settings import Settings
from schemas.common import JobKind
from schemas.tasks import PRESET_KINDS

_TASKS: dict[JobKind, TaskName] = {
    JobKind.generate: TaskName.generate,
    JobKind.model_op: TaskName.model_op,
    JobKind.mindspace_turn: TaskName.mindspace_turn,
    **{kind: TaskName.preset for kind in PRESET_KINDS},
}
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
# The per-task time limit of an app built without settings (a producer's, which runs none).
_DEFAULT_TIME_LIMIT_S: int = Settings.model_fields["job_time_limit_s"].default


def create_app(broker_url: str, *, time_limit_s: int = _DEFAULT_TIME_LIMIT_S,
               sentinel_master: str | None = None) -> Celery:
    """A Celery app on ``broker_url`` with no task registered."""
    app = Celery("llmos", set_as_current=False)
    app.conf.update(celery_config(broker_url=broker_url, time_limit_s=time_limit_s,
                                  sentinel_master=sentinel_master))
    return app


def app_for(settings: Settings) -> Celery:
    """The producer-side app of ``settings`` (one per broker, kept)."""
    return _app(settings.resolved_broker_url(), settings.job_time_limit_s,
                settings.broker_sentinel_master)


@lru_cache(maxsize=8)
def _app(broker_url: str, time_limit_s: int, sentinel_master: str | None) -> Celery:
    return create_app(broker_url, time_limit_s=time_limit_s, sentinel_master=sentinel_master)


# What a publish raises when the broker cannot be reached.
PUBLISH_ERRORS = (OperationalError, OSError)


class Unsent(Exception):
    """Some committed jobs' messages did not leave: ``jobs`` (in order), and why."""

    def __init__(self, jobs: Sequence[Job], cause: Exception) -> None:
        super().__init__(str(cause))
        self.jobs = list(jobs)
        self.cause = cause


def task_for_kind(kind: JobKind) -> TaskName:
    return _TASKS[kind]


def wire_priority(app: Celery, priority: int) -> int:
    """llmos ``priority`` as the message priority of ``app``'s transport (0 stays the
    highest: on AMQP the broker serves the highest number first)."""
    return broker_priority(priority, _transport(str(app.conf.broker_url)))


@lru_cache(maxsize=8)
def _transport(broker_url: str) -> Transport:
    # Parsed once per broker, not once per message.
    return transport_of(broker_url)


def send(app: Celery, job: Job, *, producer: Any = None) -> None:
    """The message of one committed job (its current attempt: ``job.task_id``)."""
    send_message(app, kind=job.kind, job_id=job.id, task_id=job.task_id, queue=job.queue,
                 priority=job.priority, producer=producer)


def send_message(app: Celery, *, kind: JobKind, job_id: str, task_id: str, queue: str,
                 priority: int, producer: Any = None) -> None:
    """The message of a committed job known by its header alone (the dispatcher reads
    no payload)."""
    app.send_task(task_for_kind(kind), args=[job_id], task_id=task_id, queue=queue,
                  priority=wire_priority(app, priority), producer=producer,
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


def send_all(app: Celery, jobs: Sequence[Job]) -> None:
    """One message per committed job, on one connection; Unsent names the jobs whose
    message did not leave when the broker could not be reached."""
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for job in jobs:
                send(app, job, producer=producer)
                sent += 1
    except PUBLISH_ERRORS as exc:
        raise Unsent(jobs[sent:], exc) from exc


def send_rollout_nudge(app: Celery) -> None:
    """Step the deployments now rather than at the next beat (after a deploy, an
    update or a rollback)."""
    app.send_task(TaskName.rollout, queue=CONTROL_QUEUE, retry_policy=_PUBLISH_RETRY)
