"""/v1/keys: a tenant's administrator manages the tenant's own keys (scope ``admin``);
an operator key with ``admin`` manages every tenant's keys and other operators' keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import KeyCreate, ListOf
from llmos_jobs.api.errors import forbidden
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db import keys as key_rows
from llmos_jobs.db.tables import ApiKeyIssued, ApiKeyPublic
from llmos_jobs.services.api_keys import Scope, issue_key, parse_scopes

router = APIRouter(prefix="/v1/keys", tags=["keys"])
State = Annotated[ApiState, Depends(api_state)]


def _within(caller: Caller) -> str | None:
    """The tenant whose keys the caller may see and revoke; None: every key (operators)."""
    return None if caller.operator else caller.tenant


@router.get("", response_model=ListOf[ApiKeyPublic])
def list_keys(
    state: State, caller: Annotated[Caller, Depends(authorize("keys.list", Scope.admin))],
    tenant: Annotated[str | None, Query(max_length=128,
                                        description="operators: one tenant's keys")] = None,
) -> ListOf[ApiKeyPublic]:
    """The tenant's keys (an operator: every key, or one tenant's), revoked ones
    included; never the secrets."""
    within = tenant if caller.operator else caller.tenant
    with state.session() as session:
        rows = key_rows.list_api_keys(session=session, tenant=within)
        return ListOf(data=[ApiKeyPublic.model_validate(r, from_attributes=True) for r in rows])


@router.post("", status_code=201, response_model=ApiKeyIssued)
def create_key(
    body: KeyCreate, state: State,
    caller: Annotated[Caller, Depends(authorize("keys.create", Scope.admin))],
) -> ApiKeyIssued:
    """A new key of the caller's tenant; ``key`` is in this answer only. An operator may
    name another tenant or ask for an operator key."""
    if not caller.operator and (body.operator or body.tenant not in (None, caller.tenant)):
        raise forbidden("a tenant key issues keys of its own tenant only")
    tenant = None if body.operator else body.tenant or caller.tenant
    with state.session() as session:
        issued = issue_key(session=session, tenant=tenant, name=body.name,
                           scopes=parse_scopes(body.scopes))
    caller.created(issued.id)
    return issued


@router.delete("/{key_id}", response_model=ApiKeyPublic)
def revoke_key(
    key_id: str, state: State,
    caller: Annotated[Caller, Depends(authorize("keys.revoke", Scope.admin))],
) -> ApiKeyPublic:
    """Revoke one of the tenant's keys (an operator: any key); it is refused from the
    next call on."""
    with state.session() as session:
        row = key_rows.revoke_api_key(session=session, key_id=key_id, tenant=_within(caller))
        return ApiKeyPublic.model_validate(row, from_attributes=True)
