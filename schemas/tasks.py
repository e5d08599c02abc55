"""Task presets: typed language jobs whose prompt comes from a template of the model's
family (``llmos_jobs/templates/<kind>/<family>.j2``) and whose output is parsed into a
result of the kind: summarise, translate, answer, classify, extract."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import AfterValidator, Field, JsonValue, field_validator, model_validator

from schemas.common import Contract, JobKind, Usage

FinishReason = Literal["stop", "length", "abort"]
SummaryLength = Literal["short", "medium", "long"]
# The token budget of each named summary length.
SUMMARY_BUDGETS: dict[str, int] = {"short": 64, "medium": 160, "long": 400}

PRESET_KINDS: tuple[JobKind, ...] = (
    JobKind.summarise, JobKind.translate, JobKind.answer, JobKind.classify, JobKind.extract)

def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("the text is empty (only white space)")
    return value


Text = Annotated[str, Field(min_length=1, max_length=1_000_000), AfterValidator(_not_blank)]


def _remote_refs(node: JsonValue, where: str = "") -> list[str]:
    """Where ``node`` holds a reference that is not a local JSON pointer ("#...")."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and not (
                    isinstance(value, str) and value.startswith("#")):
                found.append(f"{where}/{key}")
            found.extend(_remote_refs(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_remote_refs(value, f"{where}/{index}"))
    return found


def check_json_schema(schema: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """``schema`` if it is a valid JSON Schema (draft 2020-12) whose references are all
    local, else ValueError naming what is wrong. A remote reference would have the
    worker fetch a URL the caller chose."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    remote = _remote_refs(schema)
    if remote:
        raise ValueError(f"only local references ('#/$defs/...') are allowed; {remote[0]} "
                         "is not one")
    return schema


class PresetOptions(Contract):
    """What every preset request carries besides its own inputs."""

    version: Literal[1] = 1
    model: str = Field(min_length=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 is greedy")
    timeout_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="seconds the job may run once started; the worker's "
                    "LLMOS_JOB_TIME_LIMIT_S caps it")


class SummariseRequest(PresetOptions):
    text: Text
    length: SummaryLength | Annotated[int, Field(gt=0, le=32_768)] = Field(
        default="medium",
        description="short, medium or long, or a budget in tokens")
    style: Literal["paragraph", "bullets"] = "paragraph"


    @property
    def max_tokens(self) -> int:
        return SUMMARY_BUDGETS[self.length] if isinstance(self.length, str) else self.length


class SummariseResult(Contract):
    version: Literal[1] = 1
    summary: str
    finish_reason: FinishReason
    usage: Usage


class TranslateRequest(PresetOptions):
    text: Text
    target_language: str = Field(min_length=1, max_length=64,
                                 description="the language to translate into, e.g. fr")
    source_language: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="the language of the text; none: the model tells")
    max_tokens: int = Field(default=256, gt=0)



class TranslateResult(Contract):
    version: Literal[1] = 1
    translation: str
    finish_reason: FinishReason
    usage: Usage


class AnswerRequest(PresetOptions):
    question: Text
    context: list[Text] = Field(min_length=1, max_length=64,
                                description="passages the answer may cite, [1] first")
    max_tokens: int = Field(default=128, gt=0)


class AnswerResult(Contract):
    version: Literal[1] = 1
    answer: str
    citations: list[int] = Field(
        description="indices (from 0) into the request's context of the passages the "
                    "answer cites as [n], in order of first citation")
    finish_reason: FinishReason
    usage: Usage


class ClassifyRequest(PresetOptions):
    text: Text
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=2, max_length=64)
    max_tokens: int = Field(default=16, gt=0)


    @model_validator(mode="after")
    def _distinct_labels(self) -> Self:
        seen: set[str] = set()
        for label in self.labels:
            key = label.strip().casefold()
            if not key:
                raise ValueError("a label is empty")
            if key in seen:
                raise ValueError(f"label {label!r} is given twice")
            seen.add(key)
        return self


ClassifyMatch = Literal["exact", "mentioned", "closest"]


class ClassifyResult(Contract):
    version: Literal[1] = 1
    label: str = Field(description="one of the request's labels")
    match: ClassifyMatch = Field(
        description="how the label was read from the output: exact (the output is the "
                    "label), mentioned (the label the output names first), closest (no "
                    "label named: the most similar one)")
    output: str = Field(description="what the model wrote")
    usage: Usage


class ExtractRequest(PresetOptions):
    text: Text
    json_schema: dict[str, JsonValue] = Field(
        description="the fields to extract, as a JSON Schema (draft 2020-12)")
    max_tokens: int = Field(default=256, gt=0)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_json_schema(value)


class ExtractResult(Contract):
    version: Literal[1] = 1
    data: JsonValue = Field(description="the output, valid against the request's schema")
    output: str = Field(description="what the model wrote")
    retried: bool = Field(
        default=False, description="the first output failed the schema; this is the second")
    first_error: str | None = Field(default=None, description="why the first output failed")
    usage: Usage = Field(description="both generations when retried")


PresetRequest = (SummariseRequest | TranslateRequest | AnswerRequest | ClassifyRequest
                 | ExtractRequest)
PresetResult = SummariseResult | TranslateResult | AnswerResult | ClassifyResult | ExtractResult

REQUESTS: dict[JobKind, type[PresetRequest]] = {
    JobKind.summarise: SummariseRequest,
    JobKind.translate: TranslateRequest,
    JobKind.answer: AnswerRequest,
    JobKind.classify: ClassifyRequest,
    JobKind.extract: ExtractRequest,
}
RESULTS: dict[JobKind, type[PresetResult]] = {
    JobKind.summarise: SummariseResult,
    JobKind.translate: TranslateResult,
    JobKind.answer: AnswerResult,
    JobKind.classify: ClassifyResult,
    JobKind.extract: ExtractResult,
}
