"""/v1/workers: the workers with their health and load (an operator's view)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import ListOf
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.tables import WorkerPublic
from llmos_jobs.services.api_keys import Scope

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=ListOf[WorkerPublic])
def list_workers(
    state: Annotated[ApiState, Depends(api_state)],
    caller: Annotated[Caller, Depends(authorize("workers.list", Scope.admin, operator_only=True))],
    include_gone: Annotated[bool, Query(alias="all")] = False,
) -> ListOf[WorkerPublic]:
    """Live workers (``all=true``: stopped and dead ones too): state, seconds since the
    last heartbeat, running jobs, loaded models, engine and machine statistics.
    Workers serve every tenant, so this needs an operator key."""
    return ListOf(data=state.client(caller.tenant).workers(include_gone=include_gone))
