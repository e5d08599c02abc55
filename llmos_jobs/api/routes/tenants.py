"""/v1/tenants/{tenant}/filters and /v1/tenants/{tenant}/policy: a tenant's content
filters and its scheduling policy (weight, quotas). Setting and reading them is an
operator's act (an operator key with scope ``admin``): a tenant does not loosen its own
rules or raise its own quotas."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from llmos_jobs.api.auth import Authorize, Caller, authorize
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.tenant_tables import TenantPolicyPublic
from llmos_jobs.services.api_keys import Scope
from llmos_jobs.services.tenant_policies import PolicyUpdate
from schemas.common import Contract
from schemas.filters import Direction, FilterVerdict, TenantFilters

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
State = Annotated[ApiState, Depends(api_state)]


class FilterTrial(Contract):
    text: str = Field(min_length=1)
    side: Direction = Field(default=Direction.input, description="in or out")


def _operator(action: str) -> Authorize:
    return authorize(action, Scope.admin, operator_only=True)


@router.get("/{tenant}/filters", response_model=TenantFilters)
def get_filters(tenant: str, state: State,
                caller: Annotated[Caller, Depends(_operator("filters.show"))]) -> TenantFilters:
    """The tenant's content filters (the defaults when none were set)."""
    caller.audit.tenant = tenant
    return state.client(tenant).filters()


@router.put("/{tenant}/filters", response_model=TenantFilters)
def put_filters(tenant: str, body: TenantFilters, state: State,
                caller: Annotated[Caller, Depends(_operator("filters.set"))]) -> TenantFilters:
    """Replace the tenant's content filters; jobs that start from now on use them."""
    caller.audit.tenant = tenant
    return state.client(tenant).set_filters(body)


@router.post("/{tenant}/filters/test", response_model=FilterVerdict)
def try_filters(tenant: str, body: FilterTrial, state: State,
                caller: Annotated[Caller, Depends(_operator("filters.test"))]
                ) -> FilterVerdict:
    """What the tenant's rules make of a text, without running a job (the moderation
    step, which needs a worker, is left out)."""
    caller.audit.tenant = tenant
    return state.client(tenant).try_filters(body.text, side=body.side)


@router.get("/{tenant}/policy", response_model=TenantPolicyPublic)
def get_policy(tenant: str, state: State,
               caller: Annotated[Caller, Depends(_operator("policy.show"))]
               ) -> TenantPolicyPublic:
    """The tenant's weight and quotas; the default (weight 1, no quota, ``updated_at``
    null) when none was set."""
    caller.audit.tenant = tenant
    return state.client(tenant).policy()


@router.put("/{tenant}/policy", response_model=TenantPolicyPublic)
def put_policy(tenant: str, body: PolicyUpdate, state: State,
               caller: Annotated[Caller, Depends(_operator("policy.set"))]
               ) -> TenantPolicyPublic:
    """Change the fields sent (null removes a quota, or sets the weight back to 1); the
    others keep their value. Submissions from now on are checked against it."""
    caller.audit.tenant = tenant
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return state.client(tenant).set_policy(**changes)


@router.delete("/{tenant}/policy", response_model=TenantPolicyPublic)
def delete_policy(tenant: str, state: State,
                  caller: Annotated[Caller, Depends(_operator("policy.delete"))]
                  ) -> TenantPolicyPublic:
    """Remove the tenant's policy: weight 1 and no quota again."""
    caller.audit.tenant = tenant
    return state.client(tenant).delete_policy()
