"""Types shared by every task family: priority, status, usage, chat messages."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Contract(BaseModel):
    """Base of every contract: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Usage(Contract):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cached_tokens: int = Field(
        default=0, ge=0, description="prompt tokens served from the prefix cache"
    )
