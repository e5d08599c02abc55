"""Relaying a job's live events to an HTTP client as server-sent events.

The completion routes' streams own their job: like a waiting call, one whose job has
not ended within LLMOS_API_WAIT_TIMEOUT_S cancels it and ends with an error event. The
events route only watches: it follows a job for as long as the job runs.

A client that goes away stops only its own relay: the job runs on (cancel it with
POST /v1/jobs/{id}/cancel, or ask the events route to with cancel_on_disconnect)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
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
# The OpenAPI entry of a route that may answer a stream.
STREAMED = {"content": {"text/event-stream": {}},
            "description": "stream=true: server-sent events (docs/streaming.md)"}


async def job_events(client: LlmosClient, url: str, job_id: str, *,
                     until: float | None = None) -> AsyncIterator[JobEvent]:
    """The job's events from its first until its final status (or ``until``)."""
    async def final() -> JobEnding:
        return await run_in_threadpool(client.final_state, job_id)

    async for event in follow_async(url, job_id, final, until=until):
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


@dataclass(frozen=True)
class TimedOut:
    """The job did not end within the API's wait timeout, and was cancelled."""

    error: ApiError


async def text_then_end(client: LlmosClient, url: str, job_id: str, timeout_s: float
                        ) -> AsyncIterator[str | Ended | TimedOut]:
    """The job's text piece by piece, then how it ended. A job that does not end within
    ``timeout_s`` is cancelled, as a waiting call's is."""
    async for event in job_events(client, url, job_id, until=time.monotonic() + timeout_s):
        if event.type == "delta" and event.text:
            yield event.text
        elif event.is_final:
            yield Ended(await run_in_threadpool(client.job, job_id))
            return
    try:
        await run_in_threadpool(client.cancel, job_id)
    except IllegalTransition:  # it ended between the last read and the cancel
        yield Ended(await run_in_threadpool(client.job, job_id))
        return
    yield TimedOut(ApiError(504, f"the model did not finish within {timeout_s:g} s; job "
                            f"{job_id} was cancelled", type_="timeout_error",
                            code="wait_timeout"))


def usage_of(job: JobPublic) -> CompletionUsage:
    assert job.usage is not None
    usage = job.usage
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def ended_error(job: JobPublic) -> ApiError | None:
    """Why a job that ended has no answer (failed, filtered, expired, cancelled); None
    if it has."""
    if job.status == JobStatus.failed:
        return ApiError(500, f"job {job.id} failed: {job.error_type}: {job.error_message}",
                        type_="server_error", code="job_failed")
    if job.status == JobStatus.filtered:  # as Azure OpenAI's content filter answers
        return ApiError(400, f"job {job.id} was filtered: {job.error_message}",
                        type_="invalid_request_error", code="content_filter")
    if job.status == JobStatus.expired:  # it never ran: a gateway's timeout, not a fault
        return ApiError(504, f"job {job.id} expired: {job.error_message}",
                        type_="timeout_error", code="deadline_expired")
    if job.status != JobStatus.succeeded or job.result is None or job.usage is None:
        return ApiError(409, f"job {job.id} was {job.status.value} before it answered",
                        type_="invalid_request_error", code="job_cancelled")
    return None


def error_data(error: ApiError) -> str:
    """An error as a stream's data line: OpenAI's SDKs raise it as an APIError."""
    return ErrorBody(error=error.detail).model_dump_json()


@dataclass(frozen=True)
class ChunkWriter:
    """How one kind of OpenAI stream (chat or text completions) writes its chunks."""

    delta: Callable[[str], str]  # a piece of the text
    finish: Callable[[str], str]  # the last choice, with its finish reason
    usage: Callable[[JobPublic], str]  # the usage chunk of stream_options.include_usage


async def openai_chunks(client: LlmosClient, url: str, job_id: str, timeout_s: float,
                        write: ChunkWriter, include_usage: bool) -> AsyncIterator[str]:
    """A job's text as OpenAI's stream: its pieces, the finish reason, the usage when
    asked, ``[DONE]``; a job that failed, was filtered, expired or timed out ends it with an
    error the SDK raises."""
    async for piece in text_then_end(client, url, job_id, timeout_s):
        if isinstance(piece, TimedOut):
            yield error_data(piece.error)
            return
        if isinstance(piece, Ended):
            if (error := ended_error(piece.job)) is not None:
                yield error_data(error)
                return
            finish = piece.job.generate_result().finish_reason
            yield write.finish("length" if finish == "length" else "stop")
            if include_usage:
                yield write.usage(piece.job)
        else:
            yield write.delta(piece)
    yield DONE
