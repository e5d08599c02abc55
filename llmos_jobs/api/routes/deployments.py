"""/v1/models/{name}/deployment, /update, /rollback: deployments and their updates,
an operator's act (models are shared by every tenant)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import Field

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.deployment_tables import DeploymentPublic
from llmos_jobs.model_roots import confine
from llmos_jobs.services.api_keys import Scope
from schemas.common import Contract

router = APIRouter(prefix="/v1/models", tags=["deployments"])
State = Annotated[ApiState, Depends(api_state)]


class DeployBody(Contract):
    replicas: int = Field(ge=1, le=1024, description="how many workers hold and serve it")
    gpu_memory_gb: float | None = Field(
        default=None, gt=0, description="free accelerator memory a worker needs for it")


class UpdateBody(Contract):
    path: str = Field(min_length=1, description="the new version's model directory")
    strategy: Literal["rolling", "blue-green"] = "rolling"


@router.put("/{name}/deployment", response_model=DeploymentPublic)
def deploy_model(
    name: str, body: DeployBody, state: State,
    caller: Annotated[Caller, Depends(authorize("models.deploy", Scope.models_admin,
                                                    operator_only=True))],
) -> DeploymentPublic:
    """State the desired replicas of a model; the control process places them."""
    return state.client(caller.tenant).deploy_model(name, replicas=body.replicas,
                                                    gpu_memory_gb=body.gpu_memory_gb)


@router.get("/{name}/deployment", response_model=DeploymentPublic)
def deployment_status(
    name: str, state: State,
    caller: Annotated[Caller, Depends(authorize("models.deployment", Scope.models_admin,
                                                    operator_only=True))],
) -> DeploymentPublic:
    """A deployment's state, replicas, progress and why its last update rolled back."""
    return state.client(caller.tenant).deployment(name)


@router.post("/{name}/update", status_code=202, response_model=DeploymentPublic)
def update_model(
    name: str, body: UpdateBody, state: State,
    caller: Annotated[Caller, Depends(authorize("models.update", Scope.models_admin,
                                                    operator_only=True))],
) -> DeploymentPublic:
    """Register the directory as the deployed model's next version and roll it out."""
    path = confine(body.path, state.settings.model_root_paths())
    return state.client(caller.tenant).update_model(name, path, strategy=body.strategy)


@router.post("/{name}/rollback", status_code=202, response_model=DeploymentPublic)
def rollback_model(
    name: str, state: State,
    caller: Annotated[Caller, Depends(authorize("models.rollback", Scope.models_admin,
                                                    operator_only=True))],
) -> DeploymentPublic:
    """Move the deployment back to the version its last update left."""
    return state.client(caller.tenant).rollback_model(name)
