"""The reaper: a worker whose heartbeat stopped is declared dead, and each job it was
running gets a new attempt (a new message id; the old message, if it ever comes back,
is recognised as stale and dropped); so does each job queued on its queues whose
message the broker had handed it and it never claimed.

Each pass also takes back what no live process will ever finish:
- jobs waiting on the direct queue of a worker that is not alive (stopped gracefully,
  dead, or gone) go to their model's shared queue;
- running jobs of a worker that stopped gracefully and stopped beating get a new attempt;
- running jobs of a live worker that its heartbeat says it no longer holds (claimed
  before that beat, absent from it) get a new attempt."""

from __future__ import annotations

import logging
from collections.abc import Callable

from broker_config import language_queue, worker_queue
from llmos_jobs.db import registry
from llmos_jobs.db.jobs import queued_on, requeue_job, reroute_job, running_jobs_of
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.states import WorkerState

log = logging.getLogger(__name__)

Enqueue = Callable[[Job, str], None]
# Sends again the queued jobs of these queues whose messages were delivered and never
# claimed (llmos_jobs.services.reconcile.resend_delivered); how many.
ResendDelivered = Callable[[list[str]], int]


def requeue_orphans(*, database: Database, worker: str, enqueue: Enqueue,
                    only: Callable[[Job], bool]) -> int:
    """Re-enqueue the running jobs of ``worker`` that ``only`` accepts."""
    count = 0
    with session_scope(database) as session:
        jobs = [j for j in running_jobs_of(session=session, worker=worker) if only(j)]
        for job in jobs:
            new_task_id = requeue_job(session=session, job=job)
            if new_task_id is not None:
                enqueue(job, new_task_id)
                count += 1
                log.warning("job %s, lost by worker %s, re-enqueued", job.id, worker)
    return count


def reap(*, database: Database, dead_after_s: float, enqueue: Enqueue,
         resend_delivered: ResendDelivered | None = None) -> int:
    """Declare silent workers dead and re-enqueue their jobs, and take back what no
    live process will finish (see the module docstring); the number re-enqueued.
    ``resend_delivered``: what a worker declared dead took from its queues and never
    claimed is sent again at once (None: left to the reconciler's patience)."""
    count = _reap_silent(database=database, dead_after_s=dead_after_s, enqueue=enqueue,
                         resend_delivered=resend_delivered)
    count += reroute_abandoned_direct_queues(database=database, enqueue=enqueue)
    count += requeue_after_graceful_stop(database=database, dead_after_s=dead_after_s,
                                         enqueue=enqueue)
    count += requeue_unheld(database=database, enqueue=enqueue)
    return count


def _reap_silent(*, database: Database, dead_after_s: float, enqueue: Enqueue,
                 resend_delivered: ResendDelivered | None) -> int:
    with session_scope(database) as session:
        stale = registry.stale_workers(session=session, dead_after_s=dead_after_s)
    count = 0
    for worker in stale:
        with session_scope(database) as session:
            # Only the reaper that flips the state re-enqueues: no double attempts.
            won = registry.set_worker_state(
                session=session, name=worker.name, state=WorkerState.dead,
                expect=WorkerState.alive
            )
        if won:
            log.warning("worker %s silent for over %.0fs: declared dead", worker.name,
                        dead_after_s)
            count += requeue_orphans(database=database, worker=worker.name, enqueue=enqueue,
                                     only=lambda _: True)
            if resend_delivered is not None:
                # Its direct queue's jobs go to their model's queue below.
                count += resend_delivered([q for q in worker.queues
                                           if q != worker_queue(worker.name)])
    return count


def reroute_abandoned_direct_queues(*, database: Database, enqueue: Enqueue) -> int:
    """Queued jobs on the direct queue of a worker that is not alive. Every pass, not
    only when a worker is declared dead: a turn may be routed to a worker in the moment
    it stops, and a worker that stops gracefully is never declared dead."""
    with session_scope(database) as session:
        names = registry.workers_with_queued_direct_work(session=session)
    return sum(reroute_direct_queue(database=database, worker=name, enqueue=enqueue)
               for name in names)


def requeue_after_graceful_stop(*, database: Database, dead_after_s: float,
                                enqueue: Enqueue) -> int:
    """Running jobs of a worker that stopped gracefully: it finishes what it runs before
    it says `stopped` and its heartbeat ends with it, so once the heartbeat is older
    than ``dead_after_s`` nothing there runs them any more."""
    with session_scope(database) as session:
        names = registry.stopped_workers_with_running_jobs(session=session,
                                                           dead_after_s=dead_after_s)
    return sum(requeue_orphans(database=database, worker=name, enqueue=enqueue, only=lambda _: True)
               for name in names)


def requeue_unheld(*, database: Database, enqueue: Enqueue) -> int:
    """Running jobs of live workers that their last heartbeat says they do not hold."""
    with session_scope(database) as session:
        unheld = registry.unheld_running_jobs(session=session)
    count = 0
    for worker, attempts in unheld.items():
        log.warning("worker %s no longer holds running job(s) %s", worker, ", ".join(attempts))
        count += requeue_orphans(database=database, worker=worker, enqueue=enqueue,
                                 only=_same_claim(attempts))
    return count


def _same_claim(attempts: dict[str, int]) -> Callable[[Job], bool]:
    """The job is still under the claim found unheld: a prefork pool's redelivery of the
    same message may have claimed it again since (a new attempt, held)."""
    return lambda job: attempts.get(job.id) == job.attempts


def reroute_direct_queue(*, database: Database, worker: str, enqueue: Enqueue) -> int:
    """Jobs waiting on a dead worker's direct queue go to their model's shared queue
    (a mindspace turn then lands on whichever worker takes it, and moves there)."""
    count = 0
    with session_scope(database) as session:
        for job in queued_on(session=session, queue=worker_queue(worker)):
            new_task_id = reroute_job(session=session, job=job,
                                      queue=language_queue(job.model))
            if new_task_id is not None:
                job.queue = language_queue(job.model)
                enqueue(job, new_task_id)
                count += 1
    return count
