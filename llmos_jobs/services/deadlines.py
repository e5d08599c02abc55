"""Jobs whose deadline passed before they could start end `expired`, without running.

Two places decide it, both by compare-and-set, so a job is expired once or claimed once,
never both:

- the claim (llmos_jobs.db.jobs.claim_job): a worker that receives a queued job past its
  deadline expires it instead of running it;
- ``expire_overdue``, run by the control process every LLMOS_EXPIRE_CHECK_S (and by
  anything else that holds jobs back, such as a dispatcher): every queued or waiting job
  past its deadline is expired in bulk, whether or not a worker would ever reach it.

Ending a job this way does what any other ending does: its webhook (``job.expired``),
the next turn of its mindspace released, its graph's parent failed with the reason, its
batch finalised when it was the last request, and the metrics counted."""

from __future__ import annotations

import logging

from llmos_jobs.db import expiry as expiry_rows
from llmos_jobs.db.types import utcnow
from llmos_jobs.services import jobs
from llmos_jobs.services.routing import RoutingPolicy
from llmos_jobs.services.submission import Submitter
from llmos_jobs.services.webhooks.events import emit_job_event

log = logging.getLogger(__name__)

# Jobs expired by one pass at most: a backlog is worked off over the next passes, and
# no pass holds a long transaction.
BATCH_LIMIT = 1000


def expire_overdue(submitter: Submitter, *, limit: int = BATCH_LIMIT) -> list[str]:
    """Expire every queued or waiting job past its deadline (up to ``limit``); the ids
    of those this call expired."""
    with submitter.database.session() as session:
        expired = expiry_rows.expire_overdue(session=session, now=utcnow(), limit=limit)
        for job in expired:
            if job.webhook_url:  # enqueued once the expiry commits
                emit_job_event(session=session, job_id=job.id, settings=submitter.settings)
    if expired:
        log.info("%d job(s) expired: their deadline passed before they could start",
                 len(expired))
    routing = RoutingPolicy.of(submitter.settings)
    for job in expired:
        jobs.after_ending(submitter, job, routing=routing)
    return [job.id for job in expired]
