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
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlmodel import col, func, select

from broker_config import CONTROL_QUEUE, WEBHOOKS_QUEUE
from llmos_jobs import broker_view, dispatch
from llmos_jobs.db import batch_progress
from llmos_jobs.db import jobs as job_crud
from llmos_jobs.db.batch_models import Batch
from llmos_jobs.db.models import Job
from llmos_jobs.db.session import DatabaseRef, session_scope
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookDelivery

log = logging.getLogger(__name__)

# Jobs looked at per pass: a broker that lost everything is refilled over a few passes.
PASS_LIMIT = 5000


@dataclass(frozen=True)
class Reconciled:
    jobs: int = 0
    deliveries: int = 0
    batches: int = 0


def reconcile(app: Celery, *, grace_s: float, unclaimed_after_s: float | None = None,
              database_url: DatabaseRef = None) -> Reconciled:
    """One pass over jobs, webhook deliveries and batches; what was sent again.
    ``unclaimed_after_s``: see the module docstring (None: a delivered message is
    always taken to be in a live worker's hands)."""
    return Reconciled(
        jobs=reconcile_jobs(app, grace_s=grace_s, unclaimed_after_s=unclaimed_after_s,
                            database_url=database_url),
        deliveries=reconcile_deliveries(app, grace_s=grace_s,
                                        unclaimed_after_s=unclaimed_after_s,
                                        database_url=database_url),
        batches=reconcile_batches(app, grace_s=grace_s, database_url=database_url),
    )


def reconcile_jobs(app: Celery, *, grace_s: float, unclaimed_after_s: float | None = None,
                   database_url: DatabaseRef = None) -> int:
    with session_scope(database_url) as session:
        candidates = job_crud.queued_longer_than(session=session, grace_s=grace_s,
                                                 limit=PASS_LIMIT)
    if not candidates:
        return 0
    messages = broker_view.held_messages(app, {job.queue for job in candidates})
    if messages is None:
        return 0
    held = messages.waiting | {
        message_id for message_id, delivered_at in messages.delivered.items()
        if unclaimed_after_s is None or time.time() - delivered_at < unclaimed_after_s}
    renewed: list[Job] = []
    with session_scope(database_url) as session:
        for job in candidates:
            if job.task_id in held:
                continue
            new_task_id = job_crud.renew_message(session=session, job=job)
            if new_task_id is not None:
                job.task_id = new_task_id
                renewed.append(job)
    if renewed:
        log.warning("%d queued job(s) had no message in the broker, or only one that no "
                    "live worker holds; sent again", len(renewed))
        dispatch.resend(app, renewed)
    return len(renewed)


def reconcile_deliveries(app: Celery, *, grace_s: float,
                         unclaimed_after_s: float | None = None,
                         database_url: DatabaseRef = None) -> int:
    """Pending deliveries past their due time whose message the broker lacks, or holds
    only as one delivered to a process that let the due time pass by more than
    ``unclaimed_after_s`` (a retry waits, delivered, in the control process that will
    run it at its time; one that is long overdue went with a control process killed
    while it waited). Sent again under their own id: a delivery records each attempt
    by compare-and-set, so a copy that turns up later changes nothing."""
    now = utcnow()
    cutoff = now - timedelta(seconds=grace_s)
    due_at = func.coalesce(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.created_at))
    with session_scope(database_url) as session:
        due: dict[str, datetime] = {delivery_id: at for delivery_id, at in session.execute(
            select(col(WebhookDelivery.id), due_at).where(
                WebhookDelivery.status == DeliveryStatus.pending, due_at < cutoff)
            .limit(PASS_LIMIT))}
    if not due:
        return 0
    messages = broker_view.held_messages(app, [WEBHOOKS_QUEUE])
    if messages is None:
        return 0

    def held(delivery_id: str) -> bool:
        if delivery_id in messages.waiting:
            return True
        if delivery_id not in messages.delivered:
            return False
        overdue_s = (now - due[delivery_id]).total_seconds()
        return unclaimed_after_s is None or overdue_s < unclaimed_after_s

    lost = [delivery_id for delivery_id in due if not held(delivery_id)]
    for delivery_id in lost:
        dispatch.send_delivery(app, delivery_id)
    if lost:
        log.warning("%d webhook deliveries had no message in the broker, or only one that "
                    "no live process holds; sent again", len(lost))
    return len(lost)


def reconcile_batches(app: Celery, *, grace_s: float, database_url: DatabaseRef = None
                      ) -> int:
    cutoff = utcnow() - timedelta(seconds=grace_s)
    return (_resend_batch_messages(app, cutoff, database_url)
            + _finish_forgotten_batches(app, cutoff, database_url))


def _resend_batch_messages(app: Celery, cutoff: datetime, database_url: DatabaseRef) -> int:
    with session_scope(database_url) as session:
        validating = list(session.exec(
            select(Batch.id, Batch.priority).where(
                Batch.status == "validating", col(Batch.expired_at).is_(None),
                col(Batch.created_at) < cutoff).limit(PASS_LIMIT)).all())
        finalizing = list(session.exec(
            select(Batch.id).where(Batch.status == "finalizing",
                                   col(Batch.finalizing_at) < cutoff).limit(PASS_LIMIT)))
    if not validating and not finalizing:
        return 0
    held = broker_view.message_ids(app, [CONTROL_QUEUE])
    if held is None:
        return 0
    lost = [(batch_id, priority) for batch_id, priority in validating if batch_id not in held]
    for batch_id, priority in lost:
        dispatch.send_batch_expansion(app, batch_id, priority=priority)
    unfinished = [b for b in finalizing if dispatch.finalization_id(b) not in held]
    for batch_id in unfinished:
        dispatch.send_batch_finalization(app, batch_id)
    if lost or unfinished:
        log.warning("%d batch(es) left validating or finalizing had no message in the "
                    "broker; sent again", len(lost) + len(unfinished))
    return len(lost) + len(unfinished)


def _finish_forgotten_batches(app: Celery, cutoff: datetime, database_url: DatabaseRef
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
