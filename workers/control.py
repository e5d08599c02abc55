"""The control plane: `llmos control`, a Celery worker without a GPU that consumes the
`control` and `webhooks` queues and runs Celery beat for the periodic work:

    llmos.control.reap             every LLMOS_HEARTBEAT_INTERVAL_S: silent workers
                                   declared dead, what no live process will finish
                                   taken back (workers.reaper)
    llmos.control.reconcile        every LLMOS_RECONCILE_GRACE_S / 2: work the broker
                                   lost sent again (llmos_jobs.services.reconcile),
                                   job graphs whose follow-up was lost moved on
                                   (llmos_jobs.services.graphs)
    llmos.control.expire_batches   every LLMOS_BATCH_EXPIRY_CHECK_S: batches past their
                                   completion window expired
    llmos.control.expire_jobs      every LLMOS_EXPIRE_CHECK_S: jobs past their deadline
                                   that have not started expired
                                   (llmos_jobs.services.deadlines)
    llmos.control.prune            every LLMOS_RETENTION_CHECK_S: content past its
                                   tenant's retention removed
                                   (llmos_jobs.services.retention)
    llmos.control.rollout          every LLMOS_HEARTBEAT_INTERVAL_S, and nudged after
                                   a deploy or update: replicas placed, updated and
                                   rolled back (llmos_jobs.services.rollouts)

with batch expansion and finalisation and webhook deliveries as they come, and, in a
thread of its own, the fair-share dispatcher (llmos_jobs.services.dispatcher), woken
through Redis when a job ends or one is held. Inference
workers do none of this: their heartbeat only beats, so a slow finalisation or webhook
receiver never delays it (or takes a GPU's slot).

Every task here is a compare-and-set on the database, so two control processes (or two
overlapping runs of one task) never do a thing twice; run one with beat (the default)
and, for more webhook throughput, others with ``--no-beat``."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from broker_config import CONTROL_QUEUE, TaskName
from broker_config.celery_config import TIME_LIMIT_GRACE_S
from llmos_jobs import broker
from llmos_jobs.db import batch_progress
from llmos_jobs.db.tables import Job
from llmos_jobs.services import batches, deadlines, graphs, retention, rollouts
from llmos_jobs.services.reconcile import reconcile, resend_delivered
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings
from workers.reaper import Enqueue, reap

log = logging.getLogger(__name__)

CONTROL_CONCURRENCY = 4
JOB_RETRY_COUNTDOWN_MAX_S = 60  # retry_backoff_max of a job's delivery (workers/tasks.py)


def enqueue_with(app: Celery) -> Enqueue:
    """How the reaper sends a job's new attempt (committed under ``task_id``)."""
    def enqueue(job: Job, task_id: str) -> None:
        job.task_id = task_id
        broker.send(app, job)

    return enqueue


def register_control_tasks(app: Celery, submitter: Submitter) -> None:
    """The control process's tasks on ``app``; they work on ``submitter``'s database
    and settings."""
    settings, database = submitter.settings, submitter.database

    def reap_now(task: Task) -> int:
        return reap(database=database, dead_after_s=settings.worker_dead_after_s,
                    enqueue=enqueue_with(task.app),
                    resend_delivered=lambda queues: resend_delivered(
                        task.app, queues=queues, database=database))

    def reconcile_now(task: Task) -> dict[str, int]:
        # No live worker holds a delivered job unclaimed longer than a job may run (a
        # slot frees at least that often), nor a retry of one longer than its countdown.
        unclaimed_after_s = max(settings.job_time_limit_s + TIME_LIMIT_GRACE_S,
                                JOB_RETRY_COUNTDOWN_MAX_S) + settings.reconcile_grace_s
        done = reconcile(task.app, grace_s=settings.reconcile_grace_s,
                         unclaimed_after_s=unclaimed_after_s, database=database)
        # A graph whose last ended child was never followed up (its process died after
        # the commit) moves on here.
        looked_at = graphs.advance_stalled(submitter, older_than_s=settings.reconcile_grace_s)
        return {"jobs": done.jobs, "deliveries": done.deliveries, "batches": done.batches,
                "graphs": looked_at}

    def expire_batches() -> int:
        with database.session() as session:
            expired = batches.expire_overdue(session)
        for batch_id in expired:
            with database.session() as session:
                done = batch_progress.job_finished(session, batch_id)
            if done:
                batches.finalize(submitter, batch_id)
        return len(expired)

    def finalize_batch(batch_id: str) -> None:
        """Finalise a batch whose requests have all ended. A batch just cancelled is
        still `cancelling`: it moves to `finalizing` here (a compare-and-set, so of this
        and the job that ends its last request, one does); one with requests still
        running is left to the job that ends the last of them."""
        with database.session() as session:
            batch_progress.job_finished(session, batch_id)
        batches.finalize(submitter, batch_id)

    def expire_jobs() -> int:
        return len(deadlines.expire_overdue(submitter))

    def prune_expired() -> dict[str, object]:
        return retention.prune(database, settings).model_dump(mode="json")

    app.task(name=TaskName.reap.value, bind=True, acks_late=True)(reap_now)
    app.task(name=TaskName.reconcile.value, bind=True, acks_late=True)(reconcile_now)
    app.task(name=TaskName.expire_batches.value, acks_late=True)(expire_batches)
    app.task(name=TaskName.batch_finalize.value, acks_late=True)(finalize_batch)
    app.task(name=TaskName.expire_jobs.value, acks_late=True)(expire_jobs)
    app.task(name=TaskName.prune.value, acks_late=True)(prune_expired)

    def rollout() -> int:
        return rollouts.step(submitter)

    app.task(name=TaskName.rollout.value, acks_late=True)(rollout)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The periodic tasks. Each message expires after its own interval: a control
    process that was down does not come back to a pile of stale runs."""
    every = {
        TaskName.reap: settings.heartbeat_interval_s,
        TaskName.reconcile: max(settings.reconcile_grace_s / 2, 0.5),
        TaskName.expire_batches: settings.batch_expiry_check_s,
        TaskName.expire_jobs: settings.expire_check_s,
        TaskName.prune: settings.retention_check_s,
        TaskName.rollout: settings.heartbeat_interval_s,
    }
    return {name.value: {"task": name.value, "schedule": seconds,
                         "options": {"queue": CONTROL_QUEUE, "expires": max(seconds, 1.0)}}
            for name, seconds in every.items()}
