"""POST /v1/chat/completions: OpenAI's chat completions, run as an interactive job
through the same queue, worker and database as every other job; with ``stream`` the
reply comes as server-sent chunks while the worker decodes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.errors import ApiError
from llmos_jobs.api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
)
from llmos_jobs.api.relay import (
    STREAMED,
    ChunkWriter,
    ended_error,
    openai_chunks,
    usage_of,
)
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.api.waiting import wait_final
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.errors import IllegalTransition
from llmos_jobs.services.api_keys import Scope
from schemas.language import ResponseFormat, SamplingParams

router = APIRouter(tags=["openai"])
DEFAULT_MAX_TOKENS = SamplingParams.model_fields["max_tokens"].default


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={200: STREAMED})
async def create_chat_completion(
    body: ChatCompletionRequest, state: Annotated[ApiState, Depends(api_state)],
    caller: Annotated[Caller, Depends(authorize("chat.completions.create", Scope.jobs_write))],
) -> Response | ChatCompletion:
    """Queue the conversation at interactive priority (or the tenant's lower max_priority)
    and answer once it ran. A job that does not finish within the API's wait timeout is
    cancelled and answered 504. With ``stream: true`` the answer is server-sent
    ``chat.completion.chunk`` events as the tokens are decoded (and a usage chunk with
    ``stream_options.include_usage``); a client that disconnects leaves the job
    running."""
    client = state.client(caller.tenant)
    url = await run_in_threadpool(client.events_url) if body.stream else None
    # Interactive, unless the tenant's max_priority is lower: lowered, not refused, as
    # these requests cannot name a priority.
    priority = await run_in_threadpool(client.implicit_priority)
    job = await run_in_threadpool(partial(
        client.generate, model=body.model,
        messages=[m.as_chat_message() for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=body.temperature or 0.0,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
        priority=priority, deadline=body.deadline, sla=body.sla,
        response_format=(body.response_format.model_dump(mode="json")
                         if isinstance(body.response_format, ResponseFormat) else None),
    ))
    caller.created(job.id)
    if url is not None:
        return EventSourceResponse(_chunks(client, url, job, body.model, body.include_usage,
                                           state.settings.api_wait_timeout_s))
    timeout_s = state.settings.api_wait_timeout_s
    try:
        job = await wait_final(client, job.id, timeout_s=timeout_s)
    except TimeoutError:
        job = await give_up(client, job.id, timeout_s)
    return _completion(job, body.model)


async def give_up(client: LlmosClient, job_id: str, timeout_s: float) -> JobPublic:
    """Cancel a job nobody will read; the job itself when it finished meanwhile."""
    try:
        await run_in_threadpool(client.cancel, job_id)
    except IllegalTransition:  # it finished between the last poll and the cancel
        return await run_in_threadpool(client.job, job_id)
    raise ApiError(504, f"the model did not answer within {timeout_s:g} s; job {job_id} "
                   "was cancelled", type_="timeout_error", code="wait_timeout")


def _completion(job: JobPublic, model: str) -> ChatCompletion:
    if (error := ended_error(job)) is not None:
        raise error
    result = job.generate_result()
    return ChatCompletion(
        id=f"chatcmpl-{job.id}", created=int(job.created_at.timestamp()), model=model,
        choices=[Choice(
            index=0, message=AssistantMessage(content=result.text),
            finish_reason="length" if result.finish_reason == "length" else "stop",
        )],
        usage=usage_of(job),
    )


def _chunks(client: LlmosClient, url: str, job: JobPublic, model: str,
            include_usage: bool, timeout_s: float) -> AsyncIterator[str]:
    def chunk(choices: list[ChunkChoice], *, usage_of_job: JobPublic | None = None) -> str:
        return ChatCompletionChunk(
            id=f"chatcmpl-{job.id}", created=int(job.created_at.timestamp()), model=model,
            choices=choices, usage=usage_of(usage_of_job) if usage_of_job else None,
        ).model_dump_json()

    async def stream() -> AsyncIterator[str]:
        yield chunk([ChunkChoice(delta=ChunkDelta(role="assistant", content=""))])
        write = ChunkWriter(
            delta=lambda text: chunk([ChunkChoice(delta=ChunkDelta(content=text))]),
            finish=lambda reason: chunk([ChunkChoice(delta=ChunkDelta(),
                                                     finish_reason=reason)]),
            usage=lambda ended: chunk([], usage_of_job=ended))
        async for data in openai_chunks(client, url, job.id, timeout_s, write, include_usage):
            yield data

    return stream()
