"""POST /v1/chat/completions: OpenAI's chat completions, run as an interactive job
through the same queue, worker and database as every other job."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.errors import ApiError
from llmos_jobs.api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    PromptTokensDetails,
)
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.api.waiting import wait_final
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.errors import IllegalTransition
from llmos_jobs.services.api_keys import Scope
from schemas.common import JobStatus
from schemas.language import ResponseFormat, SamplingParams

router = APIRouter(tags=["openai"])
DEFAULT_MAX_TOKENS = SamplingParams.model_fields["max_tokens"].default


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionRequest, state: Annotated[ApiState, Depends(api_state)],
    caller: Annotated[Caller, Depends(authorize("chat.completions.create", Scope.jobs_write))],
) -> ChatCompletion:
    """Queue the conversation at interactive priority and answer once it ran. A job that
    does not finish within the API's wait timeout is cancelled and answered 504."""
    if body.stream:
        raise ApiError(400, "stream=true is not supported yet: call without stream to get "
                       "the whole reply in one response", type_="invalid_request_error",
                       code="unsupported_parameter", param="stream")
    client = state.client(caller.tenant)
    job = await run_in_threadpool(partial(
        client.generate, model=body.model,
        messages=[m.as_chat_message() for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=body.temperature or 0.0,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop or [],
        priority="interactive",
        response_format=(body.response_format.model_dump(mode="json")
                         if isinstance(body.response_format, ResponseFormat) else None),
    ))
    caller.created(job.id)
    timeout_s = state.settings.api_wait_timeout_s
    try:
        job = await wait_final(client, job.id, timeout_s=timeout_s)
    except TimeoutError:
        job = await _give_up(client, job.id, timeout_s)
    return _completion(job, body.model)


async def _give_up(client: LlmosClient, job_id: str, timeout_s: float) -> JobPublic:
    """Cancel a job nobody will read; the job itself when it finished meanwhile."""
    try:
        await run_in_threadpool(client.cancel, job_id)
    except IllegalTransition:  # it finished between the last poll and the cancel
        return await run_in_threadpool(client.job, job_id)
    raise ApiError(504, f"the model did not answer within {timeout_s:g} s; job {job_id} "
                   "was cancelled", type_="timeout_error", code="wait_timeout")


def _completion(job: JobPublic, model: str) -> ChatCompletion:
    if job.status == JobStatus.failed:
        raise ApiError(500, f"job {job.id} failed: {job.error_type}: {job.error_message}",
                       type_="server_error", code="job_failed")
    if job.status != JobStatus.succeeded or job.result is None or job.usage is None:
        raise ApiError(409, f"job {job.id} was {job.status.value} before it answered",
                       type_="invalid_request_error", code="job_cancelled")
    result, usage = job.generate_result(), job.usage
    return ChatCompletion(
        id=f"chatcmpl-{job.id}", created=int(job.created_at.timestamp()), model=model,
        choices=[Choice(
            index=0, message=AssistantMessage(content=result.text),
            finish_reason="length" if result.finish_reason == "length" else "stop",
        )],
        usage=CompletionUsage(
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        ),
    )
