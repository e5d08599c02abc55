"""/v1/webhooks: the tenant's signing secret (scope ``admin``) and its deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import ListOf
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.webhook_tables import WebhookDeliveryPublic, WebhookSecretPublic
from llmos_jobs.services.api_keys import Scope
from llmos_jobs.services.webhooks.delivery import list_deliveries
from llmos_jobs.services.webhooks.signing import rotate_secret, tenant_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
State = Annotated[ApiState, Depends(api_state)]


@router.get("/secret", response_model=WebhookSecretPublic)
def get_secret(
    state: State, caller: Annotated[Caller, Depends(authorize("webhooks.secret", Scope.admin))],
) -> WebhookSecretPublic:
    """The secret (`whsec_...`) that signs the tenant's webhooks; created on first use."""
    with state.session() as session:
        return tenant_secret(session=session, tenant=caller.tenant)


@router.post("/secret/rotate", response_model=WebhookSecretPublic)
def rotate(
    state: State, caller: Annotated[Caller, Depends(authorize("webhooks.rotate", Scope.admin))],
) -> WebhookSecretPublic:
    """Replace the secret: every request from now on, retries included, is signed with
    the new one only."""
    with state.session() as session:
        return rotate_secret(session=session, tenant=caller.tenant)


@router.get("/deliveries", response_model=ListOf[WebhookDeliveryPublic])
def deliveries(
    state: State,
    caller: Annotated[Caller, Depends(authorize("webhooks.deliveries", Scope.jobs_read))],
    job_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> ListOf[WebhookDeliveryPublic]:
    """The tenant's newest deliveries with their attempts (never the payloads)."""
    with state.session() as session:
        return ListOf(data=list_deliveries(session=session, tenant=caller.tenant,
                                           job_id=job_id, limit=limit))
