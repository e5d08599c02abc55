"""Relaying a job's live events to an HTTP client as server-sent events.

A client that goes away stops only its own relay: the job runs on (cancel it with
POST /v1/jobs/{id}/cancel, or ask the events route to with cancel_on_disconnect)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.errors import ApiError, ErrorBody
from llmos_jobs.api.openai_schemas import CompletionUsage, PromptTokensDetails
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.errors import IllegalTransition
from llmos_jobs.job_events import JobEnding, follow_async
from schemas.common import JobStatus
from schemas.events import JobEvent

DONE = "[DONE]"  # OpenAI's last data line of a stream


async def job_events(client: LlmosClient, url: str, job_id: str) -> AsyncIterator[JobEvent]:
    """The job's events from its first until its final status."""
    async def final() -> JobEnding:
        return await run_in_threadpool(client.final_state, job_id)

    async for event in follow_async(url, job_id, final):
        yield event


def events_response(client: LlmosClient, url: str, job_id: str, *,
                    cancel_on_disconnect: bool = False) -> EventSourceResponse:
    """The job's events as server-sent events: ``event: status|delta``, data a JobEvent."""
    return EventSourceResponse(_sse(client, url, job_id, cancel_on_disconnect))


async def _sse(client: LlmosClient, url: str, job_id: str, cancel_on_disconnect: bool
               ) -> AsyncIterator[ServerSentEvent]:
    ended = False
    try:
        async for event in job_events(client, url, job_id):
            ended = event.is_final
            yield ServerSentEvent(data=event.model_dump_json(exclude_none=True),
                                  event=event.type)
    finally:
        if cancel_on_disconnect and not ended:
            with anyio.CancelScope(shield=True):  # the relay itself is being cancelled
                await _cancel(client, job_id)


async def _cancel(client: LlmosClient, job_id: str) -> None:
    with suppress(IllegalTransition):  # it ended meanwhile
        await run_in_threadpool(client.cancel, job_id)


@dataclass(frozen=True)
class Ended:
    """How a relayed job ended: the job as the database has it."""

    job: JobPublic


async def text_then_end(client: LlmosClient, url: str, job_id: str
                        ) -> AsyncIterator[str | Ended]:
    """The job's text piece by piece, then how it ended."""
    async for event in job_events(client, url, job_id):
        if event.type == "delta" and event.text:
            yield event.text
        elif event.is_final:
            yield Ended(await run_in_threadpool(client.job, job_id))
            return


def usage_of(job: JobPublic) -> CompletionUsage:
    assert job.usage is not None
    usage = job.usage
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def ended_error(job: JobPublic) -> ApiError | None:
    """Why a job that ended has no answer (failed, cancelled); None if it has."""
    if job.status == JobStatus.failed:
        return ApiError(500, f"job {job.id} failed: {job.error_type}: {job.error_message}",
                        type_="server_error", code="job_failed")
    if job.status != JobStatus.succeeded or job.result is None or job.usage is None:
        return ApiError(409, f"job {job.id} was {job.status.value} before it answered",
                        type_="invalid_request_error", code="job_cancelled")
    return None


def error_data(error: ApiError) -> str:
    """An error as a stream's data line: OpenAI's SDKs raise it as an APIError."""
    return ErrorBody(error=error.detail).model_dump_json()
