"""/v1/retention/{tenant}: how long a tenant's content is kept. Operators set it (a
tenant must not shorten its own audit trail); a tenant key reads its own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.retention_tables import RetentionPolicyPublic
from llmos_jobs.errors import NotFound
from llmos_jobs.services.api_keys import Scope
from schemas.common import Contract

router = APIRouter(prefix="/v1/retention", tags=["retention"])
State = Annotated[ApiState, Depends(api_state)]
_DAYS = "days kept; null: the deployment's default (LLMOS_RETENTION_*_DAYS)"


class RetentionUpdate(Contract):
    """Days per kind; a kind left out keeps what it had."""

    jobs_days: float | None = Field(default=None, gt=0, description=f"job content: {_DAYS}")
    files_days: float | None = Field(default=None, gt=0, description=f"files: {_DAYS}")
    audit_days: float | None = Field(default=None, gt=0, description=f"audit rows: {_DAYS}")
    webhooks_days: float | None = Field(default=None, gt=0,
                                        description=f"webhook deliveries: {_DAYS}")


@router.get("/{tenant}", response_model=RetentionPolicyPublic)
def get_retention(
    tenant: str, state: State,
    caller: Annotated[Caller, Depends(authorize("retention.read", Scope.jobs_read))],
) -> RetentionPolicyPublic:
    """A tenant's retention in days per kind; ``overridden`` names the kinds it has set."""
    if not caller.operator and tenant != caller.tenant:
        # As for every other tenant's object: not found, whether the tenant exists or not.
        raise NotFound(f"tenant {tenant} not found")
    return state.client(tenant).retention()


@router.put("/{tenant}", response_model=RetentionPolicyPublic)
def put_retention(
    tenant: str, body: RetentionUpdate, state: State,
    caller: Annotated[Caller, Depends(authorize("retention.set", Scope.admin,
                                                operator_only=True))],
) -> RetentionPolicyPublic:
    """Set a tenant's own retention (operator keys only)."""
    days = {name.removesuffix("_days"): getattr(body, name) for name in body.model_fields_set}
    caller.created(tenant)
    return state.client(tenant).set_retention(**days)
