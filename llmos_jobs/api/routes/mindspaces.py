"""/v1/mindspaces: create, show (with messages), take a turn, destroy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import Field
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import JobView, MindspaceView, TurnSubmit
from llmos_jobs.api.errors import ApiError
from llmos_jobs.api.relay import events_response
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.api.waiting import wait_final
from llmos_jobs.services.api_keys import Scope
from schemas.mindspace import MindspaceCreate

router = APIRouter(prefix="/v1/mindspaces", tags=["mindspaces"])
State = Annotated[ApiState, Depends(api_state)]


class MindspaceNew(MindspaceCreate):
    """A new mindspace, with any of its settings and limits (the rest default)."""

    context_budget: int | None = Field(default=None, description="history tokens kept")
    max_tokens: int | None = Field(default=None, description="default reply length")
    temperature: float | None = None
    knowledge_top_k: int | None = None
    max_tokens_per_turn: int | None = Field(
        default=None, ge=0, description="limit: new tokens a turn may ask for (0: no limit)")
    knowledge_max_bytes: int | None = Field(
        default=None, ge=0, description="limit: UTF-8 bytes of documents the knowledge base "
                                        "holds (0: no limit)")


@router.post("", status_code=201, response_model=MindspaceView, response_model_exclude_unset=True)
def create_mindspace(
    body: MindspaceNew, state: State,
    caller: Annotated[Caller, Depends(authorize("mindspaces.create", Scope.mindspaces_write))],
) -> MindspaceView:
    settings = body.model_dump(exclude=set(MindspaceCreate.model_fields), exclude_none=True)
    mindspace = state.client(caller.tenant).create_mindspace(
        model=body.model, persona=body.persona, name=body.name, **settings)
    caller.created(mindspace.id)
    return MindspaceView.of(mindspace, operator=caller.operator)


@router.get("/{mindspace_id}", response_model=MindspaceView, response_model_exclude_unset=True)
def get_mindspace(
    mindspace_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("mindspaces.read", Scope.mindspaces_read))],
) -> MindspaceView:
    """The mindspace with its messages, oldest first."""
    return MindspaceView.of(state.client(caller.tenant).mindspace(mindspace_id),
                            operator=caller.operator)


@router.post("/{mindspace_id}/turns", status_code=202, response_model=JobView,
             response_model_exclude_unset=True,
             responses={200: {"model": JobView, "description": "wait=true: the final job; "
                              "stream=true: server-sent events (docs/streaming.md)",
                              "content": {"text/event-stream": {}}}})
async def take_turn(
    mindspace_id: str, body: TurnSubmit, response: Response, state: State,
    caller: Annotated[Caller, Depends(authorize("mindspaces.turn", Scope.mindspaces_write))],
    wait: bool = False,
    stream: bool = False,
) -> JobView | EventSourceResponse:
    """Submit one turn; with ``wait=true`` answer once its job is final (the reply is in
    ``result.reply``), or 504 when the API's wait timeout passes first. With
    ``stream=true``: the turn's live events as server-sent events, as
    ``GET /v1/jobs/{id}/events`` sends them (the reply piece by piece as it is
    decoded, then the final status); disconnecting leaves the turn running."""
    caller.check_priority(body.priority)
    client = state.client(caller.tenant)
    url = await run_in_threadpool(client.events_url) if stream else None
    job = await run_in_threadpool(
        client.chat, mindspace_id, body.message, max_tokens=body.max_tokens,
        temperature=body.temperature, priority=body.priority, timeout_s=body.timeout_s,
        deadline=body.deadline, sla=body.sla)
    if url is not None:
        caller.created(job.id)
        return events_response(client, url, job.id)
    if not wait:
        return JobView.of(job, operator=caller.operator)
    timeout_s = state.settings.api_wait_timeout_s
    try:
        job = await wait_final(client, job.id, timeout_s=timeout_s)
    except TimeoutError:
        raise ApiError(504, f"turn job {job.id} did not finish within {timeout_s:g} s; it "
                       f"stays queued: follow it with GET /v1/jobs/{job.id}",
                       type_="timeout_error", code="wait_timeout") from None
    response.status_code = 200
    return JobView.of(job, operator=caller.operator)


@router.delete("/{mindspace_id}", status_code=204)
def destroy_mindspace(
    mindspace_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("mindspaces.delete", Scope.mindspaces_write))],
) -> None:
    """Destroy the mindspace and its history."""
    state.client(caller.tenant).destroy_mindspace(mindspace_id)
