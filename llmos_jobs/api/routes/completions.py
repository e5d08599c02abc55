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
    DONE,
    STREAMED,
    Ended,
    TimedOut,
    ended_error,
    error_data,
    text_then_end,
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
    """Queue the prompt at interactive priority and answer once it ran (cancelled and
    answered 504 past the API's wait timeout). With ``stream: true``: server-sent
    ``text_completion`` chunks as the tokens are decoded, a usage chunk with
    ``stream_options.include_usage``, then ``[DONE]``; a client that disconnects leaves
    the job running."""
    client = state.client(caller.tenant)
    url = await run_in_threadpool(client.events_url) if body.stream else None
    job = await run_in_threadpool(partial(
        client.generate, model=body.model, prompt=body.prompt,
        max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS, temperature=body.temperature or 0.0,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
        priority="interactive",
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


async def _chunks(client: LlmosClient, url: str, job: JobPublic, model: str,
                  include_usage: bool, timeout_s: float) -> AsyncIterator[str]:
    async for piece in text_then_end(client, url, job.id, timeout_s):
        if isinstance(piece, TimedOut):
            yield error_data(piece.error)
            return
        if isinstance(piece, Ended):
            if (error := ended_error(piece.job)) is not None:
                yield error_data(error)
                return
            finish = piece.job.generate_result().finish_reason
            yield _object(job, model, [TextChoice(
                text="", finish_reason="length" if finish == "length" else "stop",
            )]).model_dump_json()
            if include_usage:
                yield _object(piece.job, model, [], with_usage=True).model_dump_json()
        else:
            yield _object(job, model, [TextChoice(text=piece, finish_reason=None)]
                          ).model_dump_json()
    yield DONE
