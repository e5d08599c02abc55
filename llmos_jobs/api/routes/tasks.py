"""/v1/tasks/{kind}: queue a task preset (summarise, translate, answer, classify,
extract) with its typed body; its result is read like any job's, GET /v1/jobs/{id}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import Field

from llmos_jobs.api.auth import Caller, authorize
from llmos_jobs.api.bodies import ApiPriority, JobView
from llmos_jobs.api.errors import ApiError
from llmos_jobs.api.state import ApiState, api_state
from llmos_jobs.services.api_keys import Scope
from schemas.common import PRIORITY_CLASSES, Contract, DeadlineOptions, JobKind
from schemas.tasks import (
    PRESET_KINDS,
    AnswerRequest,
    ClassifyRequest,
    ExtractRequest,
    PresetRequest,
    SummariseRequest,
    TranslateRequest,
)

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
State = Annotated[ApiState, Depends(api_state)]
Creator = Annotated[Caller, Depends(authorize("jobs.create", Scope.jobs_write))]


class TaskOptions(DeadlineOptions, Contract):
    priority: ApiPriority = PRIORITY_CLASSES["default"]
    webhook: str | None = Field(
        default=None, max_length=2048,
        description="http(s) URL POSTed the job's outcome, signed with the tenant's secret")


class SummariseSubmit(SummariseRequest, TaskOptions):
    """A summarise job; its result (GET /v1/jobs/{id}) is a SummariseResult."""


class TranslateSubmit(TranslateRequest, TaskOptions):
    """A translate job; its result is a TranslateResult."""


class AnswerSubmit(AnswerRequest, TaskOptions):
    """An answer job; its result is an AnswerResult (with the passages cited)."""


class ClassifySubmit(ClassifyRequest, TaskOptions):
    """A classify job; its result is a ClassifyResult (one of the labels)."""


class ExtractSubmit(ExtractRequest, TaskOptions):
    """An extract job; its result is an ExtractResult (JSON valid against the schema)."""


def _queue(kind: JobKind, body: PresetRequest, options: TaskOptions, state: ApiState,
           caller: Caller) -> JobView:
    caller.check_priority(options.priority)
    request = body.model_dump(mode="json", exclude={"priority", "webhook", "deadline", "sla"})
    job = state.client(caller.tenant).task(kind, request, priority=options.priority,
                                           webhook=options.webhook, deadline=options.deadline,
                                           sla=options.sla)
    caller.created(job.id)
    return JobView.of(job, operator=caller.operator)


@router.post("/summarise", status_code=202, response_model=JobView,
             response_model_exclude_unset=True)
def summarise(body: SummariseSubmit, state: State, caller: Creator) -> JobView:
    """Summarise a text: length short, medium, long or a token budget; style paragraph or
    bullets."""
    return _queue(JobKind.summarise, body, body, state, caller)


@router.post("/translate", status_code=202, response_model=JobView,
             response_model_exclude_unset=True)
def translate(body: TranslateSubmit, state: State, caller: Creator) -> JobView:
    """Translate a text into target_language."""
    return _queue(JobKind.translate, body, body, state, caller)


@router.post("/answer", status_code=202, response_model=JobView,
             response_model_exclude_unset=True)
def answer(body: AnswerSubmit, state: State, caller: Creator) -> JobView:
    """Answer a question from context passages; the result cites them by index."""
    return _queue(JobKind.answer, body, body, state, caller)


@router.post("/classify", status_code=202, response_model=JobView,
             response_model_exclude_unset=True)
def classify(body: ClassifySubmit, state: State, caller: Creator) -> JobView:
    """Choose one of the given labels for a text."""
    return _queue(JobKind.classify, body, body, state, caller)


@router.post("/extract", status_code=202, response_model=JobView,
             response_model_exclude_unset=True)
def extract(body: ExtractSubmit, state: State, caller: Creator) -> JobView:
    """Extract fields described by a JSON Schema; the output is validated against it
    (generated once more when invalid, then the job fails with the error)."""
    return _queue(JobKind.extract, body, body, state, caller)


@router.post("/{kind}", status_code=404, include_in_schema=False)
def unknown(kind: str, caller: Creator) -> None:
    raise ApiError(404, f"unknown task {kind!r}: use one of "
                   f"{', '.join(k.value for k in PRESET_KINDS)}",
                   type_="invalid_request_error", code="unknown_task", param="kind")
