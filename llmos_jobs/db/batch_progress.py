"""How far a batch has come: after each of its jobs ends, whether it is done. Below the
batch service (llmos_jobs.services.batches) so that whoever ends a job (a worker, a cancel by
the job's id) can tell, without importing the service."""

from __future__ import annotations

from sqlmodel import Session, col, select

from llmos_jobs.db.batch_tables import Batch
from llmos_jobs.db.moves import move
from llmos_jobs.db.tables import Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.states import BATCHES, BatchStatus
from schemas.common import JobStatus


def job_finished(session: Session, batch_id: str) -> bool:
    """After a job of the batch became final: True if the batch is now done and this
    caller moved it to `finalizing` (a compare-and-set: when two jobs finish at once,
    or a job and a cancellation, exactly one caller finalizes it)."""
    # One index probe (job batch_id, status), not a count: this runs after every job.
    pending = session.exec(select(Job.id).where(
        Job.batch_id == batch_id, col(Job.status).in_([JobStatus.queued, JobStatus.running]))
        .limit(1)).first()
    if pending is not None:
        return False
    # An expired batch may still be validating: it ends without ever running.
    moved = move(session, Batch, "status", col(Batch.id) == batch_id, BATCHES,
                 BatchStatus.finalizing,
                 (col(Batch.status) != BatchStatus.validating) | col(Batch.expired_at).is_not(None),
                 finalizing_at=utcnow())
    session.commit()
    return bool(moved)
