"""The reconciler: the database is the truth, the broker only transport. Work that is
committed but whose message the broker no longer holds (Redis restarted without
persistence or flushed, a publish lost, a producer that died between its commit and
its publish) is sent again:

- a job `queued` for longer than the grace period gets a new message id and a new
  message (a copy of the old message that turns up later is stale and dropped);
- a webhook delivery `pending` past its due time, a batch still `validating` and a
  batch left `finalizing` get their message again, under the same id (their tasks
  are idempotent: a delivery records each attempt by compare-and-set, an expansion
  runs once, a finalised batch is not finalised again);
- a batch `in_progress` or `cancelling` whose jobs have all ended (the process that
  ended the last one died before it could say so) is moved to `finalizing` and
  finalised.

The grace period only spares work: which messages the broker holds is read from the
broker itself (llmos_jobs.broker_view), after the candidates are read from the database,
and every re-send is a compare-and-set, so a pass that races a worker never runs a job
twice."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from celery import Celery
from sqlmodel import col, select

from broker_config import CONTROL_QUEUE, WEBHOOKS_QUEUE
from llmos_jobs import broker_view, dispatch
from llmos_jobs.db import batch_progress
from llmos_jobs.db import jobs as job_crud
from llmos_jobs.db.batch_models import Batch
from llmos_jobs.db.models import Job
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookDelivery

log = logging.getLogger(__name__)

# Jobs looked at per pass: a broker that lost everything is refilled over a few passes.
PASS_LIMIT = 5000
# On AMQP a loss is told by counting (see _unheld), and the remedy sends every waiting
# message of the queue again: it is kept for work that waited this many graces.
AMQP_GRACE_FACTOR = 3

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Reconciled:
    jobs: int = 0
    deliveries: int = 0
    batches: int = 0


def reconcile(app: Celery, *, grace_s: float, database_url: str | None = None) -> Reconciled:
    """One pass over jobs, webhook deliveries and batches; what was sent again."""
    return Reconciled(
        jobs=reconcile_jobs(app, grace_s=grace_s, database_url=database_url),
        deliveries=reconcile_deliveries(app, grace_s=grace_s, database_url=database_url),
        batches=reconcile_batches(app, grace_s=grace_s, database_url=database_url),
    )


def reconcile_jobs(app: Celery, *, grace_s: float, database_url: str | None = None) -> int:
    def candidates(older_than_s: float) -> list[Job]:
        with session_scope(database_url) as session:
            return job_crud.queued_longer_than(session=session, grace_s=older_than_s,
                                               limit=PASS_LIMIT)

    first = candidates(grace_s)
    if not first:
        return 0
    lost = _unheld(app, {job.queue for job in first},
                   redis=lambda: first, amqp=lambda: candidates(AMQP_GRACE_FACTOR * grace_s),
                   message_id=lambda job: job.task_id, queue=lambda job: job.queue)
    renewed: list[Job] = []
    with session_scope(database_url) as session:
        for job in lost:
            new_task_id = job_crud.renew_message(session=session, job=job)
            if new_task_id is not None:
                job.task_id = new_task_id
                renewed.append(job)
    if renewed:
        log.warning("%d queued job(s) had no message in the broker; sent again", len(renewed))
        dispatch.resend(app, renewed)
    return len(renewed)


def reconcile_deliveries(app: Celery, *, grace_s: float, database_url: str | None = None
                         ) -> int:
    def overdue(older_than_s: float) -> list[str]:
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with session_scope(database_url) as session:
            return list(session.exec(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == DeliveryStatus.pending,
                    ((col(WebhookDelivery.next_attempt_at).is_(None))
                     & (col(WebhookDelivery.created_at) < cutoff))
                    | (col(WebhookDelivery.next_attempt_at) < cutoff))
                .limit(PASS_LIMIT)))

    due = overdue(grace_s)
    if not due:
        return 0
    lost = _unheld(app, {WEBHOOKS_QUEUE}, redis=lambda: due,
                   amqp=lambda: overdue(AMQP_GRACE_FACTOR * grace_s),
                   message_id=str, queue=lambda _: WEBHOOKS_QUEUE)
    for delivery_id in lost:
        dispatch.send_delivery(app, delivery_id)
    if lost:
        log.warning("%d webhook deliveries had no message in the broker; sent again",
                    len(lost))
    return len(lost)


def _unheld(app: Celery, queues: set[str], *, redis: Callable[[], list[_Item]],
            amqp: Callable[[], list[_Item]], message_id: Callable[[_Item], str],
            queue: Callable[[_Item], str]) -> list[_Item]:
    """The work whose message the broker may have lost.

    Redis: the items ``redis()`` read (before the broker is read) whose message id the
    broker holds nowhere. AMQP: a queue's message ids cannot be listed, only its depth;
    the items ``amqp()`` reads (after the depths, so that a message delivered meanwhile
    lowers the database's count too) on a queue whose ready messages are fewer than its
    items there. Which of them lost its message cannot be told, so all are sent again;
    the copies still waiting are stale (jobs: a new message id) or idempotent. Other
    transports: nothing."""
    held = broker_view.message_ids(app, queues)
    if held is not None:
        return [item for item in redis() if message_id(item) not in held]
    depths = broker_view.queue_depths(app, queues)
    if depths is None:
        return []
    items = amqp()
    waiting = Counter(queue(item) for item in items)
    return [item for item in items
            if queue(item) in depths and depths[queue(item)] < waiting[queue(item)]]


def reconcile_batches(app: Celery, *, grace_s: float, database_url: str | None = None
                      ) -> int:
    cutoff = utcnow() - timedelta(seconds=grace_s)
    return (_resend_batch_messages(app, grace_s, database_url)
            + _finish_forgotten_batches(app, cutoff, database_url))


def _resend_batch_messages(app: Celery, grace_s: float, database_url: str | None) -> int:
    def stuck(older_than_s: float) -> list[tuple[str, int | None]]:
        """Batches left validating (with their priority) or finalizing (None)."""
        before = utcnow() - timedelta(seconds=older_than_s)
        with session_scope(database_url) as session:
            validating = session.exec(
                select(Batch.id, Batch.priority).where(
                    Batch.status == "validating", col(Batch.expired_at).is_(None),
                    col(Batch.created_at) < before).limit(PASS_LIMIT)).all()
            finalizing = session.exec(
                select(Batch.id).where(Batch.status == "finalizing",
                                       col(Batch.finalizing_at) < before).limit(PASS_LIMIT))
            return ([(batch_id, priority) for batch_id, priority in validating]
                    + [(batch_id, None) for batch_id in finalizing])

    first = stuck(grace_s)
    if not first:
        return 0
    lost = _unheld(app, {CONTROL_QUEUE}, redis=lambda: first,
                   amqp=lambda: stuck(AMQP_GRACE_FACTOR * grace_s),
                   message_id=_batch_message_id, queue=lambda _: CONTROL_QUEUE)
    for batch_id, priority in lost:
        if priority is None:
            dispatch.send_batch_finalization(app, batch_id)
        else:
            dispatch.send_batch_expansion(app, batch_id, priority=priority)
    if lost:
        log.warning("%d batch(es) left validating or finalizing had no message in the "
                    "broker; sent again", len(lost))
    return len(lost)


def _batch_message_id(batch: tuple[str, int | None]) -> str:
    batch_id, priority = batch
    return batch_id if priority is not None else dispatch.finalization_id(batch_id)


def _finish_forgotten_batches(app: Celery, cutoff: datetime, database_url: str | None
                              ) -> int:
    with session_scope(database_url) as session:
        running = list(session.exec(
            select(Batch.id).where(col(Batch.status).in_(["in_progress", "cancelling"]),
                                   col(Batch.created_at) < cutoff).limit(PASS_LIMIT)))
        done = [batch_id for batch_id in running
                if batch_progress.job_finished(session, batch_id)]
    for batch_id in done:
        dispatch.send_batch_finalization(app, batch_id)
    if done:
        log.warning("%d batch(es) had ended without being finalised; finalising", len(done))
    return len(done)
