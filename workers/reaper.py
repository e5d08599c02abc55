"""The reaper: a worker whose heartbeat stopped is declared dead, and each job it was
running gets a new attempt (a new message id; the old message, if it ever comes back,
is recognised as stale and dropped)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from broker_config import language_queue, worker_queue
from llmos_jobs.db import registry
from llmos_jobs.db.jobs import queued_on, requeue_job, reroute_job, running_jobs_of
from llmos_jobs.db.models import Job
from llmos_jobs.db.session import session_scope

log = logging.getLogger(__name__)

Enqueue = Callable[[Job, str], None]


def requeue_orphans(*, worker: str, enqueue: Enqueue, only: Callable[[Job], bool]) -> int:
    """Re-enqueue the running jobs of ``worker`` that ``only`` accepts."""
    count = 0
    with session_scope() as session:
        jobs = [j for j in running_jobs_of(session=session, worker=worker) if only(j)]
        for job in jobs:
            new_task_id = requeue_job(session=session, job=job)
            if new_task_id is not None:
                enqueue(job, new_task_id)
                count += 1
                log.warning("job %s of dead worker %s re-enqueued", job.id, worker)
    return count


def reap(*, dead_after_s: float, enqueue: Enqueue) -> int:
    """Declare silent workers dead and re-enqueue their jobs; the number re-enqueued."""
    with session_scope() as session:
        stale = registry.stale_workers(session=session, dead_after_s=dead_after_s)
    count = 0
    for worker in stale:
        with session_scope() as session:
            # Only the reaper that flips the state re-enqueues: no double attempts.
            won = registry.set_worker_state(
                session=session, name=worker.name, state="dead", expect="alive"
            )
        if won:
            log.warning("worker %s silent for over %.0fs: declared dead", worker.name,
                        dead_after_s)
            count += requeue_orphans(worker=worker.name, enqueue=enqueue, only=lambda _: True)
            count += reroute_direct_queue(worker=worker.name, enqueue=enqueue)
    return count


def reroute_direct_queue(*, worker: str, enqueue: Enqueue) -> int:
    """Jobs waiting on a dead worker's direct queue go to their model's shared queue
    (a mindspace turn then lands on whichever worker takes it, and moves there)."""
    count = 0
    with session_scope() as session:
        for job in queued_on(session=session, queue=worker_queue(worker)):
            new_task_id = reroute_job(session=session, job=job,
                                      queue=language_queue(job.model))
            if new_task_id is not None:
                job.queue = language_queue(job.model)
                enqueue(job, new_task_id)
                count += 1
    return count
