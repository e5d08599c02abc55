"""/v1/models: the OpenAI-compatible model list; registering and placing models is an
operator's act (an operator key with scope ``models:admin``), since models are shared by
every tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import ModelOpBody
from llmos_jobs.api.openai_schemas import OpenAIModel, OpenAIModelList
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.db.model_tables import ModelVersionPublic
from llmos_jobs.db.tables import JobPublic, RegisteredModelPublic
from llmos_jobs.model_roots import confine
from llmos_jobs.services.api_keys import Scope
from schemas.model import ModelOp, ModelRegister

router = APIRouter(prefix="/v1/models", tags=["models"])
State = Annotated[ApiState, Depends(api_state)]
OpBody = Annotated[ModelOpBody | None, Body()]


@router.get("", response_model=OpenAIModelList)
def list_models(
    state: State, caller: Annotated[Caller, Depends(authorize("models.list", Scope.models_read))],
) -> OpenAIModelList:
    """Registered models, in the shape of OpenAI's ``GET /v1/models``."""
    models = state.client(caller.tenant).models()
    return OpenAIModelList(data=[
        OpenAIModel(id=m.name, created=int(m.created_at.timestamp())) for m in models
    ])


@router.post("", status_code=201, response_model=RegisteredModelPublic)
def register_model(
    body: ModelRegister, state: State,
    caller: Annotated[Caller, Depends(authorize("models.register", Scope.models_admin,
                                                    operator_only=True))],
) -> RegisteredModelPublic:
    """Register (or re-register) a model directory on the API server's machine; it must
    lie under a model root (``LLMOS_MODEL_ROOTS``)."""
    path = confine(body.path, state.settings.model_root_paths())
    model = state.client(caller.tenant).register_model(body.name, path, body.engine.value,
                                                       keep_alive=body.keep_alive)
    caller.created(model.name)
    return model


@router.get("/{name}/versions", response_model=list[ModelVersionPublic])
def model_versions(
    name: str, state: State,
    caller: Annotated[Caller, Depends(authorize("models.versions", Scope.models_admin,
                                                    operator_only=True))],
) -> list[ModelVersionPublic]:
    """The versions of a model (paths and content hashes: an operator's view)."""
    return state.client(caller.tenant).model_versions(name)


def _model_op(state: ApiState, caller: Caller, name: str, op: ModelOp,
              body: ModelOpBody | None) -> JobPublic:
    body = body or ModelOpBody()
    return state.client(caller.tenant).model_op(name, op, worker=body.worker,
                                                priority=body.priority)


@router.post("/{name}/load", status_code=202, response_model=JobPublic)
def load_model(
    name: str, state: State,
    caller: Annotated[Caller, Depends(authorize("models.load", Scope.models_admin,
                                                    operator_only=True))],
    body: OpBody = None,
) -> JobPublic:
    """Queue loading the model on a worker serving it, or on the worker named."""
    return _model_op(state, caller, name, ModelOp.load, body)


@router.post("/{name}/unload", status_code=202, response_model=JobPublic)
def unload_model(
    name: str, state: State,
    caller: Annotated[Caller, Depends(authorize("models.unload", Scope.models_admin,
                                                    operator_only=True))],
    body: OpBody = None,
) -> JobPublic:
    """Queue unloading the model from a worker, freeing its memory."""
    return _model_op(state, caller, name, ModelOp.unload, body)


@router.post("/{name}/warmup", status_code=202, response_model=JobPublic)
def warm_up_model(
    name: str, state: State,
    caller: Annotated[Caller, Depends(authorize("models.warmup", Scope.models_admin,
                                                    operator_only=True))],
    body: OpBody = None,
) -> JobPublic:
    """Queue loading the model and one short generation through it."""
    return _model_op(state, caller, name, ModelOp.warmup, body)
