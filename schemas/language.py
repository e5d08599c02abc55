"""Language family: generate from a prompt or chat messages."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from schemas.common import ChatMessage, Contract, Usage
from schemas.tasks import check_json_schema


class JsonSchemaFormat(Contract):
    """OpenAI's ``response_format.json_schema``: a named JSON Schema for the output."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(default="output", min_length=1, max_length=64,
                      pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    # "schema" would shadow a BaseModel attribute: the field is schema_, its name "schema".
    schema_: dict[str, JsonValue] = Field(alias="schema",
                                          description="the JSON Schema the output must match")
    strict: bool | None = Field(default=None, description="accepted; the output is always "
                                                          "validated against the schema")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_json_schema(value)


class ResponseFormat(Contract):
    """Structured output: the output is JSON valid against ``json_schema.schema``; an
    output that is not is generated once more, then the job fails with the error."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


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
    response_format: ResponseFormat | None = None

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
    usage: Usage = Field(description="both generations when retried")
    parsed: JsonValue = Field(
        default=None, description="with a response_format: the output's JSON, valid "
                                  "against its schema")
    retried: bool = Field(
        default=False, description="with a response_format: the first output failed the "
                                   "schema, and this is the second")
    first_error: str | None = Field(default=None, description="why the first output failed")
