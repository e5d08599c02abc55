"""Language jobs: one generation, or many at once with each invalid request reported
by its index while the valid ones run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker_config import TaskName, queue_for
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.submission import Submitter, validate
from schemas.common import JobKind
from schemas.language import GenerateRequest


@dataclass(frozen=True)
class BulkSubmission:
    jobs: list[JobPublic]  # in the order of the valid requests
    errors: dict[int, str]  # index of each rejected request → why


def checked_request(submitter: Submitter, data: dict[str, Any]) -> GenerateRequest:
    """``data`` as a generation request that fits the limits and its model's context,
    or InvalidRequest naming what does not."""
    request = validate(GenerateRequest, data)
    submitter.limits.generate(request)
    submitter.check_model(request.model, request.max_tokens)
    return request


def job_of(tenant: str, request: GenerateRequest, *, priority: int,
           webhook: str | None = None, batch_id: str | None = None,
           custom_id: str | None = None, deadline: datetime | None = None
           ) -> job_rows.JobCreate:
    """The job row of a checked request."""
    return job_rows.JobCreate(
        tenant=tenant, kind=JobKind.generate, priority=priority, model=request.model,
        payload=request.model_dump(mode="json"), batch_id=batch_id, custom_id=custom_id,
        queue=queue_for(TaskName.generate, model=request.model), webhook_url=webhook,
        deadline=deadline)


def submit_generate(submitter: Submitter, tenant: str, data: dict[str, Any], *,
                    priority: int, webhook: str | None, deadline: datetime | None = None
                    ) -> JobPublic:
    """``deadline``: the latest moment it may start (llmos_jobs.sla resolved it)."""
    request = checked_request(submitter, data)
    [job] = submitter.enqueue([job_of(tenant, request, priority=priority,
                                      webhook=submitter.check_webhook(webhook),
                                      deadline=deadline)])
    return job


def submit_many(submitter: Submitter, tenant: str, requests: Sequence[dict[str, Any]], *,
                priority: int, webhook: str | None, deadline: datetime | None = None
                ) -> BulkSubmission:
    """One transaction, one broker connection; a refused ``webhook`` refuses them all."""
    webhook_url = submitter.check_webhook(webhook)
    accepted: list[job_rows.JobCreate] = []
    errors: dict[int, str] = {}
    for index, data in enumerate(requests):
        try:
            request = checked_request(submitter, data)
        except InvalidRequest as exc:
            errors[index] = str(exc)
            continue
        accepted.append(job_of(tenant, request, priority=priority, webhook=webhook_url,
                               deadline=deadline))
    jobs = submitter.enqueue(accepted) if accepted else []
    return BulkSubmission(jobs=jobs, errors=errors)
