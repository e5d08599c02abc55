"""Language family: generate from a prompt or chat messages."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from schemas.common import ChatMessage, Contract, Usage


class SamplingParams(Contract):
    max_tokens: int = Field(default=64, gt=0, description="tokens to generate at most")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 is greedy")
    stop: list[str] = Field(default_factory=list, max_length=8)
    timeout_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="seconds the job may run once started (then it fails with reason "
                    "'timeout'); the worker's LLMOS_JOB_TIME_LIMIT_S caps it")


class GenerateRequest(SamplingParams):
    """Payload of a ``generate`` job: exactly one of ``prompt`` and ``messages``."""

    version: Literal[1] = 1
    model: str = Field(min_length=1)
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty")
        return self


class GenerateResult(Contract):
    version: Literal[1] = 1
    text: str
    finish_reason: Literal["stop", "length", "abort"] = Field(
        description="abort: the job was cancelled while it ran"
    )
    usage: Usage
