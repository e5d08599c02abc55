"""POST /v1/completions: OpenAI's completions (one prompt, continued), run as an
interactive job like chat completions; with ``stream`` as server-sent chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.openai_schemas import CompletionRequest, TextChoice, TextCompletion
from llmos_jobs.api.relay import (
    STREAMED,
    ChunkWriter,
    ended_error,
    openai_chunks,
    usage_of,
)
from llmos_jobs.api.routes.chat import DEFAULT_MAX_TOKENS, give_up
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.api.waiting import wait_final
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.services.api_keys import Scope

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", response_model=TextCompletion, responses={200: STREAMED})
async def create_completion(
    body: CompletionRequest, state: Annotated[ApiState, Depends(api_state)],
    caller: Annotated[Caller, Depends(authorize("completions.create", Scope.jobs_write))],
) -> Response | TextCompletion:
    """Queue the prompt at interactive priority (or the tenant's lower max_priority) and
    answer once it ran (cancelled and answered 504 past the API's wait timeout). With
    ``stream: true``: server-sent ``text_completion`` chunks as the tokens are decoded, a
    usage chunk with ``stream_options.include_usage``, then ``[DONE]``; a client that
    disconnects leaves the job running."""
    client = state.client(caller.tenant)
    url = await run_in_threadpool(client.events_url) if body.stream else None
    # Interactive, unless the tenant's max_priority is lower: lowered, not refused, as
    # these requests cannot name a priority.
    priority = await run_in_threadpool(client.implicit_priority)
    job = await run_in_threadpool(partial(
        client.generate, model=body.model, prompt=body.prompt,
        max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS, temperature=body.temperature or 0.0,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
        priority=priority, deadline=body.deadline, sla=body.sla,
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
    if (error := ended_error(job)) is not None:
        raise error
    finish = job.generate_result().finish_reason
    return _object(job, body.model, [TextChoice(
        text=job.generate_result().text, finish_reason="length" if finish == "length" else "stop",
    )], with_usage=True)


def _object(job: JobPublic, model: str, choices: list[TextChoice], *,
            with_usage: bool = False) -> TextCompletion:
    return TextCompletion(id=f"cmpl-{job.id}", created=int(job.created_at.timestamp()),
                          model=model, choices=choices,
                          usage=usage_of(job) if with_usage else None)


def _chunks(client: LlmosClient, url: str, job: JobPublic, model: str,
            include_usage: bool, timeout_s: float) -> AsyncIterator[str]:
    write = ChunkWriter(
        delta=lambda text: _object(job, model, [TextChoice(text=text, finish_reason=None)]
                                   ).model_dump_json(),
        finish=lambda reason: _object(job, model, [TextChoice(text="", finish_reason=reason)]
                                      ).model_dump_json(),
        usage=lambda ended: _object(ended, model, [], with_usage=True).model_dump_json())
    return openai_chunks(client, url, job.id, timeout_s, write, include_usage)
