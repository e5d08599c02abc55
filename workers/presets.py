"""Running a task preset: render the prompt of the model's family, generate, read the
output into the kind's result. Structured output (extract, a generate request's
``response_format``) is validated against its schema and generated once more when it
fails; a second failure fails the job with the validation error."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import JsonValue

from llmos_jobs.prompt_templates import render_preset, render_retry
from llmos_jobs.task_outputs import OutputInvalid, choose_label, citations, structured
from schemas.common import JobKind, Usage
from schemas.tasks import (
    REQUESTS,
    AnswerRequest,
    AnswerResult,
    ClassifyRequest,
    ClassifyResult,
    ExtractRequest,
    ExtractResult,
    PresetResult,
    SummariseRequest,
    SummariseResult,
    TranslateRequest,
    TranslateResult,
)
from workers.engines.base import Completion, EngineSampling

# One generation of ``prompt`` for the job, under its deadline (workers.execution).
Generate = Callable[[str, EngineSampling, float | None], Completion]


class StructuredOutputInvalid(Exception):
    """The output failed its JSON Schema twice: the job fails with this (error type
    ``StructuredOutputInvalid``)."""


def usage_of(*done: Completion) -> Usage:
    return Usage(prompt_tokens=sum(d.prompt_tokens for d in done),
                 completion_tokens=sum(d.completion_tokens for d in done),
                 cached_tokens=sum(d.cached_tokens for d in done))


@dataclass(frozen=True)
class Structured:
    done: Completion  # the generation whose output is valid
    value: JsonValue
    usage: Usage  # of both generations when retried
    first_error: str | None  # why the first output failed; None: it did not


def validated(schema: dict[str, JsonValue], first: Completion,
              again: Callable[[str, str], Completion]) -> Structured:
    """``first``'s JSON if it matches ``schema``; else ``again(output, error)``'s, or
    StructuredOutputInvalid with both errors."""
    try:
        return Structured(first, structured(first.text, schema), usage_of(first), None)
    except OutputInvalid as exc:
        first_error = str(exc)
    if first.finish_reason == "abort":  # cancelled: nothing will be recorded
        return Structured(first, None, usage_of(first), first_error)
    second = again(first.text, first_error)
    try:
        value = structured(second.text, schema)
    except OutputInvalid as exc:
        raise StructuredOutputInvalid(
            f"the output failed its JSON Schema twice. First try: {first_error}. "
            f"Second try: {exc}") from None
    return Structured(second, value, usage_of(first, second), first_error)


def schema_text(schema: dict[str, JsonValue]) -> str:
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)


def run_preset(kind: JobKind, payload: dict[str, JsonValue], family: str,
               generate: Generate) -> tuple[PresetResult, Usage]:
    """The result of a preset job of ``kind`` on a model of ``family``."""
    request = REQUESTS[kind].model_validate(payload)
    prompt = render_preset(request, kind.value, family)
    timeout = request.timeout_s
    if isinstance(request, ExtractRequest):
        return _extract(request, prompt, family, generate)
    done = generate(prompt, EngineSampling(request.max_tokens, request.temperature), timeout)
    usage = usage_of(done)
    result: PresetResult
    if isinstance(request, SummariseRequest):
        result = SummariseResult(summary=done.text.strip(), finish_reason=done.finish_reason,
                                 usage=usage)
    elif isinstance(request, TranslateRequest):
        result = TranslateResult(translation=done.text.strip(),
                                 finish_reason=done.finish_reason, usage=usage)
    elif isinstance(request, AnswerRequest):
        result = AnswerResult(answer=done.text.strip(),
                              citations=citations(done.text, len(request.context)),
                              finish_reason=done.finish_reason, usage=usage)
    else:
        assert isinstance(request, ClassifyRequest)
        label, match = choose_label(done.text, request.labels)
        result = ClassifyResult(label=label, match=match, output=done.text, usage=usage)
    return result, usage


def _extract(request: ExtractRequest, prompt: str, family: str, generate: Generate
             ) -> tuple[ExtractResult, Usage]:
    sampling = EngineSampling(request.max_tokens, request.temperature,
                              json_schema=schema_text(request.json_schema))
    first = generate(prompt, sampling, request.timeout_s)
    outcome = validated(
        request.json_schema, first,
        lambda output, error: generate(render_retry(prompt, output, error, family),
                                       sampling, request.timeout_s))
    result = ExtractResult(data=outcome.value, output=outcome.done.text,
                           retried=outcome.first_error is not None,
                           first_error=outcome.first_error, usage=outcome.usage)
    return result, outcome.usage
