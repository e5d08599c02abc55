"""Following a job's live events as its tenant: the stream in Redis, with the database
as the judge of whether (and how) the job ended."""

from __future__ import annotations

from collections.abc import Iterator

from llmos_jobs import job_events
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.job_events import JobEnding
from llmos_jobs.services import jobs as job_service
from llmos_jobs.services.submission import Submitter
from schemas.common import JobKind, JobStatus
from schemas.events import JobEvent


def text_of(job: JobPublic) -> str | None:
    """The text a succeeded job produced (a generation's, or a turn's reply)."""
    if job.status != JobStatus.succeeded or job.result is None:
        return None
    if job.kind == JobKind.generate:
        return job.generate_result().text
    if job.kind == JobKind.mindspace_turn:
        return job.turn_result().reply
    return None


def final(submitter: Submitter, tenant: str, job_id: str) -> JobEnding:
    """The job's final status and text, or None while it has not ended."""
    job = job_service.get(submitter, tenant, job_id)
    return (job.status, text_of(job)) if job.status.is_final else None


def follow(submitter: Submitter, tenant: str, job_id: str) -> Iterator[JobEvent]:
    """The job's events from its first, until its final status; NotFound (before any
    event) for a job that is not the tenant's; StreamingUnavailable without a Redis."""
    job_service.get(submitter, tenant, job_id)
    url = job_events.require_events_url(submitter.settings)
    return job_events.follow(url, job_id, lambda: final(submitter, tenant, job_id))
