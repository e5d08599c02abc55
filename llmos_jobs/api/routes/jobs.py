"""/v1/jobs: submit language jobs, list, show, follow and cancel the tenant's jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import JobSubmit, JobView, ListOf
from llmos_jobs.api.relay import events_response
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.services.api_keys import Scope
from schemas.common import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
State = Annotated[ApiState, Depends(api_state)]


@router.post("", status_code=202, response_model=JobView, response_model_exclude_unset=True)
def submit_job(
    body: JobSubmit, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.create", Scope.jobs_write))],
) -> JobView:
    """Queue a language job (a prompt or chat messages); poll it with GET /v1/jobs/{id}.
    Priority 0 is reserved for operator keys."""
    caller.check_priority(body.priority)
    job = state.client(caller.tenant).generate(
        model=body.model, prompt=body.prompt, messages=body.messages,
        max_tokens=body.max_tokens, temperature=body.temperature, stop=body.stop,
        priority=body.priority, webhook=body.webhook, timeout_s=body.timeout_s,
        deadline=body.deadline, sla=body.sla,
        response_format=(body.response_format.model_dump(mode="json")
                         if body.response_format is not None else None),
    )
    caller.created(job.id)
    return JobView.of(job, operator=caller.operator)


@router.get("", response_model=ListOf[JobView], response_model_exclude_unset=True)
def list_jobs(
    state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.list", Scope.jobs_read))],
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ListOf[JobView]:
    """The tenant's newest jobs, optionally of one status."""
    jobs = state.client(caller.tenant).jobs(status=status, limit=limit)
    return ListOf(object="list", data=[JobView.of(j, operator=caller.operator) for j in jobs])


@router.get("/{job_id}", response_model=JobView, response_model_exclude_unset=True)
def get_job(
    job_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.read", Scope.jobs_read))],
) -> JobView:
    return JobView.of(state.client(caller.tenant).job(job_id), operator=caller.operator)


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses={200: {
    "description": "server-sent events: `status` and `delta`, each a JobEvent in JSON",
    "content": {"text/event-stream": {}}}})
async def job_events_stream(
    job_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.events", Scope.jobs_read))],
    cancel_on_disconnect: bool = False,
) -> EventSourceResponse:
    """The job's live events from its first: `status` (running, then its final status)
    and `delta` (the next piece of its text as it is decoded); the stream ends after the
    final status. A job that ended replays them. Disconnecting leaves the job running,
    unless `cancel_on_disconnect=true`."""
    client = state.client(caller.tenant)
    await run_in_threadpool(client.job, job_id)  # another tenant's job: 404
    url = await run_in_threadpool(client.events_url)
    return events_response(client, url, job_id, cancel_on_disconnect=cancel_on_disconnect)


@router.post("/{job_id}/cancel", response_model=JobView, response_model_exclude_unset=True)
def cancel_job(
    job_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("jobs.cancel", Scope.jobs_write))],
) -> JobView:
    """Cancel a queued or running job; a finished one answers 409."""
    return JobView.of(state.client(caller.tenant).cancel(job_id), operator=caller.operator)
