"""Rows of jobs whose deadline passed before they started (llmos_jobs.services.deadlines):
the reason they carry, and the bulk compare-and-set that expires them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, col

from llmos_jobs.db.tables import Job, JobHeader
from llmos_jobs.states import JOBS
from schemas.common import JobStatus

EXPIRED_ERROR = "DeadlineExpired"


def expiry_reason(deadline: datetime) -> str:
    return (f"its deadline {deadline.isoformat(timespec='seconds')} passed before a worker "
            "could start it; it never ran")


def expire_overdue(*, session: Session, now: datetime, limit: int) -> list[JobHeader]:
    """Every job that has not started and whose deadline is before ``now`` (at most
    ``limit``, the most overdue first) ends expired, by one compare-and-set: a job a
    worker claims meanwhile is left to it. The jobs it expired; the caller commits."""
    sources = sorted(JOBS.sources_of(JobStatus.expired))
    overdue = (sa_select(col(Job.id))
               .where(col(Job.status).in_(sources), col(Job.deadline).is_not(None),
                      col(Job.deadline) < now)
               .order_by(col(Job.deadline)).limit(limit))
    ids = list(session.execute(overdue).scalars())
    if not ids:
        return []
    rows = session.execute(
        update(Job)
        .where(col(Job.id).in_(ids), col(Job.status).in_(sources), col(Job.deadline) < now)
        .values(status=JobStatus.expired, error_type=EXPIRED_ERROR, finished_at=now)
        .returning(col(Job.id), col(Job.kind), col(Job.mindspace_id), col(Job.batch_id),
                   col(Job.webhook_url), col(Job.parent_id), col(Job.deadline))
    ).all()
    expired = []
    for job_id, kind, mindspace_id, batch_id, webhook_url, parent_id, deadline in rows:
        # The reason names each job's own deadline (encrypted: one write per job).
        session.execute(update(Job).where(col(Job.id) == job_id)
                        .values(error_message=expiry_reason(deadline)))
        expired.append(JobHeader(job_id, kind, mindspace_id, batch_id, webhook_url, parent_id))
    return expired
