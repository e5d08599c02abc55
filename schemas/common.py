"""Types shared by every task family: priority, status, usage, chat messages."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

# 0 is the highest priority and 9 the lowest (the Redis transport's order). The
# classes leave 0 and 9 free for operators.
PRIORITY_CLASSES: dict[str, int] = {"interactive": 1, "default": 5, "batch": 8}
DEFAULT_PRIORITY = PRIORITY_CLASSES["default"]

Priority = Annotated[int, Field(ge=0, le=9, description="0 (highest) to 9 (lowest)")]


def parse_priority(value: str | int) -> int:
    """A priority number from a number or a class name; ValueError names what is wrong."""
    if isinstance(value, int):
        number = value
    elif value.strip().lower() in PRIORITY_CLASSES:
        return PRIORITY_CLASSES[value.strip().lower()]
    else:
        try:
            number = int(value)
        except ValueError:
            classes = ", ".join(f"{k} ({v})" for k, v in PRIORITY_CLASSES.items())
            raise ValueError(
                f"unknown priority {value!r}: use a number 0-9 or one of {classes}"
            ) from None
    if not 0 <= number <= 9:
        raise ValueError(f"priority {number} is outside 0-9 (0 is the highest)")
    return number


class JobKind(StrEnum):
    generate = "generate"
    model_op = "model_op"
    mindspace_turn = "mindspace_turn"
    # Task presets (schemas.tasks): language jobs with a templated prompt and a typed result.
    summarise = "summarise"
    # The member's name must be its value (SQLAlchemy stores enum names); it hides
    # str.translate on JobKind members, which nothing calls.
    translate = "translate"  # type: ignore[assignment]
    answer = "answer"
    classify = "classify"
    extract = "extract"


class JobStatus(StrEnum):
    waiting = "waiting"  # a mindspace turn behind an earlier turn; not in the broker yet
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    # A tenant's content filter blocked its input or output (the rule is on the job).
    filtered = "filtered"
    # Its deadline passed before it could start; it never ran (llmos_jobs.services.deadlines).
    expired = "expired"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled,
                        JobStatus.filtered, JobStatus.expired)


class Contract(BaseModel):
    """Base of every contract: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class DeadlineOptions(BaseModel):
    """When a job must have started, as a request asks it: an absolute ``deadline`` or
    an ``sla`` class (seconds from submission, LLMOS_SLA_<CLASS>_S), at most one. A job
    not started by then ends `expired` without running (docs/deadlines.md). Whether the
    moment is in the future and the class is known is checked at submission
    (llmos_jobs.sla), where the clock and the classes are."""

    deadline: AwareDatetime | None = Field(
        default=None, description="the latest moment the job may start, ISO 8601 with a "
                                  "zone (e.g. 2026-11-30T05:00:00Z)")
    sla: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="an SLA class instead of a deadline: interactive, standard or batch "
                    "(seconds from submission set by LLMOS_SLA_<CLASS>_S)")

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if self.deadline is not None and self.sla is not None:
            raise ValueError("give a deadline or an sla class, not both")
        return self


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Usage(Contract):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cached_tokens: int = Field(
        default=0, ge=0, description="prompt tokens served from the prefix cache"
    )
