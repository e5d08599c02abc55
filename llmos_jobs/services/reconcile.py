"""The reconciler: the database is the truth, the broker only transport. Work that is
committed but whose message the broker no longer holds (Redis restarted without
persistence or flushed, a publish lost, a producer that died between its commit and
its publish) is sent again:

- a job `queued` for longer than the grace period gets a new message id and a new
  message (a copy of the old message that turns up later is stale and dropped) when
  the broker holds no message of it, or holds only one delivered longer ago than
  ``unclaimed_after_s`` and never claimed: a live worker takes what it was handed within
  one job's time limit (its slots free at least that often), so such a message went
  with a worker killed after the broker handed it over (kombu would give it back only
  after the visibility timeout);
- a webhook delivery `pending` past its due time (whose message the broker lacks, or
  holds only as one delivered and overdue by more than ``unclaimed_after_s``: it went
  with a control process killed while the retry waited for its time), a batch still
  `validating` and a batch left `finalizing` get their message again, under the same
  id (their tasks are idempotent: a delivery records each attempt by compare-and-set,
  an expansion runs once, a finalised batch is not finalised again);
- a batch `in_progress` or `cancelling` whose jobs have all ended (the process that
  ended the last one died before it could say so) is moved to `finalizing` and
  finalised.

The grace period only spares work: which messages the broker holds is read from the
broker itself (llmos_jobs.broker_view), after the candidates are read from the database,
and every re-send is a compare-and-set, so a pass that races a worker never runs a job
twice."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from celery import Celery
from sqlmodel import col, func, select

from broker_config import CONTROL_QUEUE, WEBHOOKS_QUEUE
from llmos_jobs import broker, broker_view
from llmos_jobs.db import batch_progress
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.batch_tables import Batch
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookDelivery
from llmos_jobs.states import BatchStatus

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


def reconcile(app: Celery, *, grace_s: float, unclaimed_after_s: float | None = None,
              database: Database) -> Reconciled:
    """One pass over jobs, webhook deliveries and batches; what was sent again.
    ``unclaimed_after_s``: see the module docstring (None: a delivered message is
    always taken to be in a live worker's hands)."""
    return Reconciled(
        jobs=reconcile_jobs(app, grace_s=grace_s, unclaimed_after_s=unclaimed_after_s,
                            database=database),
        deliveries=reconcile_deliveries(app, grace_s=grace_s,
                                        unclaimed_after_s=unclaimed_after_s,
                                        database=database),
        batches=reconcile_batches(app, grace_s=grace_s, database=database),
    )


def reconcile_jobs(app: Celery, *, grace_s: float, unclaimed_after_s: float | None = None,
                   database: Database) -> int:
    def candidates(older_than_s: float) -> list[Job]:
        with session_scope(database) as session:
            return job_rows.queued_longer_than(session=session, grace_s=older_than_s,
                                               limit=PASS_LIMIT)

    def held(job: Job, messages: broker_view.HeldMessages) -> bool:
        if job.task_id in messages.waiting:
            return True
        delivered_at = messages.delivered.get(job.task_id)
        return delivered_at is not None and (
            unclaimed_after_s is None or time.time() - delivered_at < unclaimed_after_s)

    first = candidates(grace_s)
    if not first:
        return 0
    lost = _unheld(app, {job.queue for job in first},
                   items=first, amqp=lambda: candidates(AMQP_GRACE_FACTOR * grace_s),
                   held=held, queue=lambda job: job.queue)
    return _renew(app, lost, database=database,
                  why="had no message in the broker, or only one that no live worker holds")


def _renew(app: Celery, jobs: list[Job], *, database: Database, why: str) -> int:
    """Send ``jobs`` again, each under a new message id (a compare-and-set: a job
    claimed or changed meanwhile is left); how many were sent."""
    renewed: list[Job] = []
    with session_scope(database) as session:
        for job in jobs:
            new_task_id = job_rows.renew_message(session=session, job=job)
            if new_task_id is not None:
                job.task_id = new_task_id
                renewed.append(job)
    if renewed:
        log.warning("%d queued job(s) %s; sent again", len(renewed), why)
        broker.resend(app, renewed)
    return len(renewed)


def resend_delivered(app: Celery, *, queues: Iterable[str], database: Database) -> int:
    """A worker was just declared dead: the messages the broker handed it and it never
    claimed sit in Redis's ``unacked`` hash (kombu gives them back only after the
    visibility timeout, and ``reconcile_jobs`` only after ``unclaimed_after_s``). Every
    queued job of the ``queues`` it consumed whose message is delivered and not yet
    acknowledged is sent again now, under a new message id.

    The broker does not say which consumer holds a delivered message, so one that a live
    worker took a moment ago and is about to claim is sent again too: its claim then
    finds the message stale and drops it, and the job runs once, from the new message.
    AMQP needs none of this: RabbitMQ requeues a dead consumer's unacknowledged
    messages when its connection drops."""
    wanted = sorted(set(queues))
    if not wanted:
        return 0
    with session_scope(database) as session:
        queued = job_rows.queued_in(session=session, queues=wanted, limit=PASS_LIMIT)
    if not queued:
        return 0
    messages = broker_view.held_messages(app, wanted)
    if messages is None:
        return 0
    return _renew(app, [job for job in queued if job.task_id in messages.delivered],
                  database=database, why="were delivered to a worker that died before "
                                         "claiming them")


def reconcile_deliveries(app: Celery, *, grace_s: float,
                         unclaimed_after_s: float | None = None,
                         database: Database) -> int:
    """Pending deliveries past their due time whose message the broker lacks, or holds
    only as one delivered to a process that let the due time pass by more than
    ``unclaimed_after_s`` (a retry waits, delivered, in the control process that will
    run it at its time; one that is long overdue went with a control process killed
    while it waited). Sent again under their own id: a delivery records each attempt
    by compare-and-set, so a copy that turns up later changes nothing."""
    now = utcnow()
    due_at = func.coalesce(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.created_at))

    def overdue(older_than_s: float) -> dict[str, datetime]:
        cutoff = now - timedelta(seconds=older_than_s)
        with session_scope(database) as session:
            return {delivery_id: at for delivery_id, at in session.execute(
                select(col(WebhookDelivery.id), due_at).where(
                    WebhookDelivery.status == DeliveryStatus.pending, due_at < cutoff)
                .limit(PASS_LIMIT))}

    due = overdue(grace_s)
    if not due:
        return 0

    def held(delivery_id: str, messages: broker_view.HeldMessages) -> bool:
        if delivery_id in messages.waiting:
            return True
        if delivery_id not in messages.delivered:
            return False
        overdue_s = (now - due[delivery_id]).total_seconds()
        return unclaimed_after_s is None or overdue_s < unclaimed_after_s

    lost = _unheld(app, {WEBHOOKS_QUEUE}, items=list(due),
                   amqp=lambda: list(overdue(AMQP_GRACE_FACTOR * grace_s)),
                   held=held, queue=lambda _: WEBHOOKS_QUEUE)
    for delivery_id in lost:
        broker.send_delivery(app, delivery_id)
    if lost:
        log.warning("%d webhook deliveries had no message in the broker; sent again",
                    len(lost))
    return len(lost)


def _unheld(app: Celery, queues: set[str], *, items: list[_Item],
            amqp: Callable[[], list[_Item]],
            held: Callable[[_Item, broker_view.HeldMessages], bool],
            queue: Callable[[_Item], str]) -> list[_Item]:
    """The work whose message the broker may have lost.

    Redis: the ``items`` (read from the database before the broker) that ``held`` does
    not find among the messages the broker holds. AMQP: a queue's message ids cannot be
    listed, only its depth; the items ``amqp()`` reads (after the depths, so that a
    message delivered meanwhile lowers the database's count too) on a queue whose ready
    messages are fewer than its items there. Which of them lost its message cannot be
    told, so all are sent again; the copies still waiting are stale (jobs: a new
    message id) or idempotent. Other transports: nothing."""
    messages = broker_view.held_messages(app, queues)
    if messages is not None:
        return [item for item in items if not held(item, messages)]
    depths = broker_view.queue_depths(app, queues)
    if depths is None:
        return []
    counted = amqp()
    waiting = Counter(queue(item) for item in counted)
    return [item for item in counted
            if queue(item) in depths and depths[queue(item)] < waiting[queue(item)]]


def reconcile_batches(app: Celery, *, grace_s: float, database: Database
                      ) -> int:
    cutoff = utcnow() - timedelta(seconds=grace_s)
    return (_resend_batch_messages(app, grace_s, database)
            + _finish_forgotten_batches(app, cutoff, database))


def _resend_batch_messages(app: Celery, grace_s: float, database: Database) -> int:
    def stuck(older_than_s: float) -> list[tuple[str, int | None]]:
        """Batches left validating (with their priority) or finalizing (None)."""
        before = utcnow() - timedelta(seconds=older_than_s)
        with session_scope(database) as session:
            validating = session.exec(
                select(Batch.id, Batch.priority).where(
                    Batch.status == BatchStatus.validating, col(Batch.expired_at).is_(None),
                    col(Batch.created_at) < before).limit(PASS_LIMIT)).all()
            finalizing = session.exec(
                select(Batch.id).where(Batch.status == BatchStatus.finalizing,
                                       col(Batch.finalizing_at) < before).limit(PASS_LIMIT))
            return ([(batch_id, priority) for batch_id, priority in validating]
                    + [(batch_id, None) for batch_id in finalizing])

    first = stuck(grace_s)
    if not first:
        return 0
    lost = _unheld(app, {CONTROL_QUEUE}, items=first,
                   amqp=lambda: stuck(AMQP_GRACE_FACTOR * grace_s),
                   held=lambda batch, messages: _batch_message_id(batch) in messages.ids(),
                   queue=lambda _: CONTROL_QUEUE)
    for batch_id, priority in lost:
        if priority is None:
            broker.send_batch_finalization(app, batch_id)
        else:
            broker.send_batch_expansion(app, batch_id, priority=priority)
    if lost:
        log.warning("%d batch(es) left validating or finalizing had no message in the "
                    "broker; sent again", len(lost))
    return len(lost)


def _batch_message_id(batch: tuple[str, int | None]) -> str:
    batch_id, priority = batch
    return batch_id if priority is not None else broker.finalization_id(batch_id)


def _finish_forgotten_batches(app: Celery, cutoff: datetime, database: Database
                              ) -> int:
    with session_scope(database) as session:
        running = list(session.exec(
            select(Batch.id).where(
                col(Batch.status).in_([BatchStatus.in_progress, BatchStatus.cancelling]),
                col(Batch.created_at) < cutoff).limit(PASS_LIMIT)))
        done = [batch_id for batch_id in running
                if batch_progress.job_finished(session, batch_id)]
    for batch_id in done:
        broker.send_batch_finalization(app, batch_id)
    if done:
        log.warning("%d batch(es) had ended without being finalised; finalising", len(done))
    return len(done)
