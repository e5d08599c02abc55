"""/v1/mindspaces: list, configure, snapshots and restore, fork, knowledge base."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import ListOf, MindspaceView
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.tables import SnapshotPublic
from llmos_jobs.services.api_keys import Scope
from llmos_jobs.services.mindspace_limits import MindspaceUsage

router = APIRouter(prefix="/v1/mindspaces", tags=["mindspaces"])
State = Annotated[ApiState, Depends(api_state)]
Reader = Annotated[Caller, Depends(authorize("mindspaces.read", Scope.mindspaces_read))]


def writer(action: str) -> Any:
    return Depends(authorize(action, Scope.mindspaces_write))


class Configure(BaseModel):
    persona: str | None = Field(default=None, description="'' removes it")
    context_budget: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    knowledge_top_k: int | None = None
    max_tokens_per_turn: int | None = Field(
        default=None, ge=0, description="limit: new tokens a turn may ask for (0: no limit)")
    knowledge_max_bytes: int | None = Field(
        default=None, ge=0, description="limit: UTF-8 bytes of documents the knowledge base "
                                        "holds (0: no limit)")


class SnapshotCreate(BaseModel):
    name: str | None = None


class KnowledgeAdd(BaseModel):
    title: str = Field(min_length=1)
    text: str = Field(min_length=1, description="text or Markdown")


class KnowledgeDocumentOut(BaseModel):
    id: str
    title: str
    chunks: int


@router.get("", response_model=ListOf[MindspaceView], response_model_exclude_unset=True)
def list_mindspaces(state: State, caller: Reader) -> ListOf[MindspaceView]:
    return ListOf(object="list", data=[MindspaceView.of(m, operator=caller.operator)
                                       for m in state.client(caller.tenant).mindspaces()])


@router.patch("/{mindspace_id}", response_model=MindspaceView,
              response_model_exclude_unset=True)
def configure(mindspace_id: str, body: Configure, state: State,
              caller: Annotated[Caller, writer("mindspaces.configure")]) -> MindspaceView:
    """Change the persona or settings; the history stays."""
    settings = body.model_dump(exclude={"persona"}, exclude_none=True)
    configured = state.client(caller.tenant).configure_mindspace(
        mindspace_id, persona=body.persona, **settings)
    return MindspaceView.of(configured, operator=caller.operator)


@router.get("/{mindspace_id}/usage", response_model=MindspaceUsage)
def usage(mindspace_id: str, state: State, caller: Reader) -> MindspaceUsage:
    """What the mindspace holds and used so far (history messages and tokens, knowledge
    bytes and chunks, turns, tokens in and out), beside each of its limits."""
    return state.client(caller.tenant).mindspace_usage(mindspace_id)


@router.post("/{mindspace_id}/snapshots", status_code=201, response_model=SnapshotPublic)
def snapshot(mindspace_id: str, body: SnapshotCreate, state: State,
             caller: Annotated[Caller, writer("mindspaces.snapshot")]) -> SnapshotPublic:
    snap = state.client(caller.tenant).snapshot(mindspace_id, name=body.name)
    caller.created(snap.id)
    return snap


@router.get("/{mindspace_id}/snapshots", response_model=ListOf[SnapshotPublic])
def snapshots(mindspace_id: str, state: State, caller: Reader) -> ListOf[SnapshotPublic]:
    return ListOf(data=state.client(caller.tenant).snapshots(mindspace_id))


@router.post("/snapshots/{snapshot_id}/restore", status_code=201,
             response_model=MindspaceView, response_model_exclude_unset=True)
def restore(snapshot_id: str, state: State,
            caller: Annotated[Caller, writer("mindspaces.restore")]) -> MindspaceView:
    """A new mindspace from the snapshot; the original is untouched."""
    restored = state.client(caller.tenant).restore(snapshot_id)
    caller.created(restored.id)
    return MindspaceView.of(restored, operator=caller.operator)


@router.post("/{mindspace_id}/fork", status_code=201, response_model=MindspaceView,
             response_model_exclude_unset=True)
def fork(mindspace_id: str, state: State,
         caller: Annotated[Caller, writer("mindspaces.fork")]) -> MindspaceView:
    """A new mindspace sharing the history up to now."""
    forked = state.client(caller.tenant).fork(mindspace_id)
    caller.created(forked.id)
    return MindspaceView.of(forked, operator=caller.operator)


@router.post("/{mindspace_id}/knowledge", status_code=201, response_model=KnowledgeDocumentOut)
def add_knowledge(mindspace_id: str, body: KnowledgeAdd, state: State,
                  caller: Annotated[Caller, writer("mindspaces.knowledge.add")],
                  ) -> KnowledgeDocumentOut:
    doc = state.client(caller.tenant).add_knowledge(mindspace_id, body.text, title=body.title)
    caller.created(doc.id)
    return KnowledgeDocumentOut(id=doc.id, title=doc.title, chunks=doc.chunks)


@router.get("/{mindspace_id}/knowledge", response_model=ListOf[KnowledgeDocumentOut])
def list_knowledge(mindspace_id: str, state: State, caller: Reader
                   ) -> ListOf[KnowledgeDocumentOut]:
    docs = state.client(caller.tenant).knowledge(mindspace_id)
    return ListOf(data=[KnowledgeDocumentOut(id=d.id, title=d.title, chunks=d.chunks)
                        for d in docs])


@router.delete("/{mindspace_id}/knowledge/{document_id}", status_code=204)
def remove_knowledge(mindspace_id: str, document_id: str, state: State,
                     caller: Annotated[Caller, writer("mindspaces.knowledge.remove")],
                     ) -> Response:
    state.client(caller.tenant).remove_knowledge(mindspace_id, document_id)
    return Response(status_code=204)
