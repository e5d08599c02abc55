"""/v1/batches: OpenAI-compatible batches of chat completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlmodel import col, select

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import ApiPriority, CursorPage
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.batch_tables import Batch
from llmos_jobs.services import batch_files, batches
from llmos_jobs.services.api_keys import Scope
from llmos_jobs.services.batch_objects import BatchObject
from schemas.common import PRIORITY_CLASSES

router = APIRouter(prefix="/v1/batches", tags=["openai"])
State = Annotated[ApiState, Depends(api_state)]


class BatchCreate(BaseModel):
    input_file_id: str
    endpoint: str = batch_files.ENDPOINT
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    priority: ApiPriority = PRIORITY_CLASSES["batch"]
    webhook: str | None = Field(default=None, description="llmos: told when the batch ends")


@router.post("", response_model=BatchObject)
def create_batch(body: BatchCreate, state: State,
                 caller: Annotated[Caller, Depends(authorize("batches.create", Scope.jobs_write))],
                 ) -> BatchObject:
    """Validate the file's lines and run one job per valid line at batch priority."""
    caller.check_priority(body.priority)
    client = state.client(caller.tenant)
    client.limits.metadata(body.metadata)
    batch = client.create_batch(input_file_id=body.input_file_id, endpoint=body.endpoint,
                           completion_window=body.completion_window, metadata=body.metadata,
                           priority=body.priority, webhook=body.webhook)
    caller.created(batch.id)
    with client.session() as session:
        return batches.public(session, batch)


@router.get("", response_model=CursorPage[BatchObject])
def list_batches(state: State,
                 caller: Annotated[Caller, Depends(authorize("batches.list", Scope.jobs_read))],
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> CursorPage[BatchObject]:
    """The tenant's newest batches."""
    client = state.client(caller.tenant)
    with client.session() as session:
        rows = session.exec(select(Batch).where(Batch.tenant == caller.tenant)
                            .order_by(col(Batch.created_at).desc()).limit(limit)).all()
        data = [batches.public(session, b) for b in rows]
    return CursorPage(data=data, first_id=data[0].id if data else None,
                      last_id=data[-1].id if data else None)


@router.get("/{batch_id}", response_model=BatchObject)
def get_batch(batch_id: str, state: State,
              caller: Annotated[Caller, Depends(authorize("batches.read", Scope.jobs_read))],
              ) -> BatchObject:
    client = state.client(caller.tenant)
    with client.session() as session:
        return batches.public(session, batches.get_batch(session, caller.tenant, batch_id))


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel_batch(batch_id: str, state: State,
                 caller: Annotated[Caller, Depends(authorize("batches.cancel", Scope.jobs_write))],
                 ) -> BatchObject:
    """Queued requests never run; running ones finish; then the batch is cancelled."""
    client = state.client(caller.tenant)
    batch = client.cancel_batch(batch_id)
    with client.session() as session:
        return batches.public(session, batch)
