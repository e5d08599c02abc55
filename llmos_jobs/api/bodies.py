"""Bodies of the HTTP API that are not task contracts: submissions with a priority,
list envelopes, key creation. Task payloads themselves stay in ``schemas/``."""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from llmos_jobs.db.tables import JobPublic, MindspacePublic
from schemas.common import PRIORITY_CLASSES, Contract, DeadlineOptions, parse_priority
from schemas.language import GenerateRequest
from schemas.mindspace import MindspaceTurnRequest

T = TypeVar("T")


def _priority_number(value: object) -> object:
    # A class name or a number; anything else is left for the int check to refuse.
    if isinstance(value, int | str) and not isinstance(value, bool):
        return parse_priority(value)
    return value


ApiPriority = Annotated[
    int,
    BeforeValidator(_priority_number),
    WithJsonSchema({
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                  {"type": "string", "enum": list(PRIORITY_CLASSES)}],
        "description": "0 (highest) to 9, or a class: "
                       + ", ".join(f"{k} ({v})" for k, v in PRIORITY_CLASSES.items()),
    }),
]


class ListOf(BaseModel, Generic[T]):
    """The list envelope of every collection, as OpenAI's API has it."""

    object: Literal["list"] = "list"
    data: list[T]


class CursorPage(ListOf[T], Generic[T]):
    """A list envelope with OpenAI's cursor fields, where OpenAI's list has them
    (batches). The whole list is one page: ``has_more`` is always false."""

    has_more: bool = False
    first_id: str | None
    last_id: str | None


# Where a job ran: the deployment's business, not the tenant's.
PLACEMENT_FIELDS = frozenset({"queue", "task_id", "worker", "worker_pid"})


class JobView(JobPublic):
    """A job as the HTTP API shows it. To a tenant key the fields saying where it ran
    (queue, Celery task id, worker host and pid) are absent; an operator key sees them."""

    queue: str | None = None  # type: ignore[assignment]
    task_id: str | None = None  # type: ignore[assignment]
    worker: str | None = None
    worker_pid: int | None = None

    @classmethod
    def of(cls, job: JobPublic, *, operator: bool) -> JobView:
        # Fields left out are "unset", and routes answer with exclude_unset: omitted.
        return cls.model_validate(job.model_dump(exclude=None if operator else
                                                 set(PLACEMENT_FIELDS)))


class MindspaceView(MindspacePublic):
    """A mindspace as the HTTP API shows it: to a tenant key, the worker that holds its
    prefix cache (a host name) is absent; an operator key sees it."""

    worker: str | None = None

    @classmethod
    def of(cls, mindspace: MindspacePublic, *, operator: bool) -> MindspaceView:
        return cls.model_validate(mindspace.model_dump(exclude=None if operator else
                                                       {"worker"}))


class JobSubmit(GenerateRequest, DeadlineOptions):
    """A language job: the ``generate`` payload plus its priority, webhook and deadline."""

    priority: ApiPriority = PRIORITY_CLASSES["default"]
    webhook: str | None = Field(
        default=None, max_length=2048,
        description="http(s) URL POSTed the job's outcome (job.succeeded, job.failed, "
                    "job.cancelled), Standard Webhooks-signed with the tenant's secret",
    )


class TurnSubmit(DeadlineOptions, Contract):
    message: str = Field(min_length=1)
    # Unset: the mindspace's own defaults (its settings).
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    timeout_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description=MindspaceTurnRequest.model_fields["timeout_s"].description)
    priority: ApiPriority = PRIORITY_CLASSES["interactive"]


class ModelOpBody(Contract):
    worker: str | None = Field(default=None, description="aim at one worker's direct queue")
    priority: ApiPriority = PRIORITY_CLASSES["interactive"]


class KeyCreate(Contract):
    name: str | None = Field(default=None, max_length=128)
    scopes: list[str] | None = Field(default=None, max_length=16,
                                     description="none named: every scope")
    tenant: str | None = Field(default=None, min_length=1, max_length=128,
                               description="operator keys only: the new key's tenant "
                                           "(default: the tenant the call acts for)")
    operator: bool = Field(default=False, description="operator keys only: issue an "
                                                      "operator key (no tenant)")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
