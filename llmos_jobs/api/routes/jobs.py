"""/v1/jobs: submit language jobs, list, show and cancel the tenant's jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.schemas import JobSubmit, ListOf
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.models import JobPublic
from llmos_jobs.keys import Scope
from schemas.common import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
State = Annotated[ApiState, Depends(api_state)]


@router.post("", status_code=202, response_model=JobPublic)
def submit_job(
    body: JobSubmit, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.create", Scope.jobs_write))],
) -> JobPublic:
    """Queue a language job (a prompt or chat messages); poll it with GET /v1/jobs/{id}.
    Priority 0 is reserved for operator keys."""
    caller.check_priority(body.priority)
    job = state.client(caller.tenant).generate(
        model=body.model, prompt=body.prompt, messages=body.messages,
        max_tokens=body.max_tokens, temperature=body.temperature, stop=body.stop,
        priority=body.priority, webhook=body.webhook, timeout_s=body.timeout_s,
    )
    caller.created(job.id)
    return job


@router.get("", response_model=ListOf[JobPublic])
def list_jobs(
    state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.list", Scope.jobs_read))],
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ListOf[JobPublic]:
    """The tenant's newest jobs, optionally of one status."""
    return ListOf(data=state.client(caller.tenant).jobs(status=status, limit=limit))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(
    job_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.read", Scope.jobs_read))],
) -> JobPublic:
    return state.client(caller.tenant).job(job_id)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(
    job_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.cancel", Scope.jobs_write))],
) -> JobPublic:
    """Cancel a queued or running job; a finished one answers 409."""
    return state.client(caller.tenant).cancel(job_id)
