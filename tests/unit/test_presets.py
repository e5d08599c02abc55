"""Task presets without a stack: template rendering (families, the sandbox), reading
outputs (citations, labels, JSON checked against the jsonschema library), the
structured-output retry, and the schema handed to SGLang."""

from __future__ import annotations

import http.server
import json
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
from jinja2.exceptions import SecurityError, UndefinedError
from pydantic import JsonValue, ValidationError

from llmos_jobs.prompt_templates import TEMPLATES, render_preset, render_retry
from llmos_jobs.services.batches import _request
from llmos_jobs.task_outputs import OutputInvalid, choose_label, citations, json_of, structured
from schemas.common import JobKind
from schemas.language import GenerateRequest
from schemas.tasks import (
    PRESET_KINDS,
    AnswerRequest,
    ClassifyRequest,
    ExtractRequest,
    SummariseRequest,
)
from tests.support.sglang_shapes import check_sampling_params
from workers.engines.base import Completion, EngineSampling
from workers.engines.sglang_io import build_sampling_params
from workers.presets import StructuredOutputInvalid, run_preset, validated

ROOT = Path(__file__).resolve().parents[2]
PERSON: dict[str, JsonValue] = {
    "type": "object", "required": ["name", "age"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


def _done(text: str, prompt_tokens: int = 5) -> Completion:
    return Completion(text=text, finish_reason="stop", prompt_tokens=prompt_tokens,
                      completion_tokens=len(text.split()), cached_tokens=1)


# -- templates ------------------------------------------------------------------------------


def test_every_preset_has_a_default_template_and_the_wheel_ships_them() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["llmos_jobs"]
    for kind in (*[k.value for k in PRESET_KINDS], "json_retry"):
        path = TEMPLATES / kind / "default.j2"
        assert path.is_file()
        assert any(path.relative_to(ROOT / "llmos_jobs").match(g) for g in globs), path


def test_the_prompt_carries_the_inputs_in_the_templates_order() -> None:
    request = AnswerRequest(model="m", question="who reaps?",
                            context=["the queue", "the reaper reaps"])
    prompt = render_preset(request, "answer", "llama")
    assert prompt.index("[1] the queue") < prompt.index("[2] the reaper reaps") \
        < prompt.index("Question: who reaps?")
    assert prompt.endswith("Answer:\n")
    bullets = render_preset(SummariseRequest(model="m", text="t", length="short",
                                             style="bullets"), "summarise", "x")
    assert "bullet" in bullets and "48 words" in bullets  # 3/4 of the short budget (64)
    schema = render_preset(ExtractRequest(model="m", text="t", json_schema=PERSON),
                           "extract", "x")
    assert json.dumps(PERSON, indent=2) in schema


@pytest.fixture
def family_root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "classify").mkdir()
    (tmp_path / "classify" / "default.j2").write_text("default {{ text }}")
    (tmp_path / "classify" / "qwen2.j2").write_text(
        "<|im_start|>user\n{{ text }} -> {{ labels | join('|') }}<|im_end|>")
    yield tmp_path


def test_a_family_template_wins_over_the_default(family_root: Path) -> None:
    request = ClassifyRequest(model="m", text="hi", labels=["a", "b"])
    assert render_preset(request, "classify", "qwen2", family_root) == \
        "<|im_start|>user\nhi -> a|b<|im_end|>"  # (no newline at the end of that file)
    assert render_preset(request, "classify", "Qwen2", family_root).startswith("<|im_start|>")
    assert render_preset(request, "classify", "llama", family_root) == "default hi"
    # A family name is never a path.
    assert render_preset(request, "classify", "../classify/qwen2", family_root) == "default hi"


def test_the_shipped_chatml_family_wraps_the_default_instruction() -> None:
    request = ClassifyRequest(model="m", text="hi", labels=["a", "b"])
    plain = render_preset(request, "classify", "llama")
    chatml = render_preset(request, "classify", "qwen2")
    assert chatml.startswith("<|im_start|>system\n")
    assert f"<|im_start|>user\n{plain}<|im_end|>\n" in chatml
    assert chatml.endswith("<|im_start|>assistant\n")
    retry = render_retry(chatml, '{"x": 1}', "bad", "qwen2")
    assert retry.startswith(chatml + '{"x": 1}<|im_end|>\n<|im_start|>user\n')
    assert retry.endswith("<|im_start|>assistant\n")


def test_templates_run_in_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "summarise").mkdir()
    request = SummariseRequest(model="m", text="hi")
    (tmp_path / "summarise" / "default.j2").write_text(
        "{{ text.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(SecurityError):
        render_preset(request, "summarise", "x", tmp_path)
    (tmp_path / "summarise" / "evil.j2").write_text("{{ undefined_thing }}")
    with pytest.raises(UndefinedError):
        render_preset(request, "summarise", "evil", tmp_path)


# -- reading outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "cited"), [
    ("The reaper does [2].", [1]),
    ("See [3, 1] and [1; 2] again [3]", [2, 0, 1]),
    ("No citation; [0] and [9] are no passages, nor is [a]", []),
    ("[ 2 ][1]", [1, 0]),
])
def test_citations_are_indices_of_passages_cited(answer: str, cited: list[int]) -> None:
    assert citations(answer, 3) == cited


@pytest.mark.parametrize(("output", "label", "match"), [
    ("positive", "positive", "exact"),
    ("  Positive.\n", "positive", "exact"),
    ('"neutral"', "neutral", "exact"),
    ("The sentiment is negative, not positive.", "negative", "mentioned"),
    ("very positive", "very positive", "exact"),
    ("it is very positive", "very positive", "mentioned"),  # the longest at one place
    ("positively", "positive", "closest"),  # not a whole word: similarity decides
    ("nega", "negative", "closest"),
])
def test_the_label_is_read_robustly(output: str, label: str, match: str) -> None:
    labels = ["positive", "negative", "neutral", "very positive"]
    assert choose_label(output, labels) == (label, match)


@pytest.mark.parametrize(("output", "value"), [
    ('{"a": 1}', {"a": 1}),
    ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
    ('Here it is: {"a": {"b": null}} hope that helps', {"a": {"b": None}}),
    ("[1, 2] then {", [1, 2]),
    ("{broken then [3]", [3]),
])
def test_json_is_found_in_the_output(output: str, value: Any) -> None:
    assert json_of(output) == value


def test_an_output_without_json_says_so() -> None:
    with pytest.raises(OutputInvalid, match="not JSON: 'no json here'"):
        json_of("no json here")


@pytest.mark.parametrize("instance", [
    {"name": "Ada", "age": 36}, {"name": "Ada"}, {"name": "Ada", "age": -1},
    {"name": 7, "age": 1}, {"name": "Ada", "age": 1, "extra": True}, [], "Ada",
])
def test_structured_output_agrees_with_the_jsonschema_library(instance: Any) -> None:
    reference = jsonschema.Draft202012Validator(PERSON)
    if reference.is_valid(instance):
        assert structured(json.dumps(instance), PERSON) == instance
    else:
        with pytest.raises(OutputInvalid) as invalid:
            structured(json.dumps(instance), PERSON)
        expected = jsonschema.exceptions.best_match(reference.iter_errors(instance))
        assert expected is not None and expected.message in str(invalid.value)


# -- the retry ------------------------------------------------------------------------------


def test_a_valid_first_output_is_not_retried() -> None:
    calls: list[tuple[str, str]] = []
    outcome = validated(PERSON, _done('{"name": "Ada", "age": 3}'),
                        lambda out, err: calls.append((out, err)) or _done("x"))
    assert outcome.value == {"name": "Ada", "age": 3} and outcome.first_error is None
    assert calls == []


def test_an_invalid_first_output_is_retried_once_with_its_error() -> None:
    calls: list[tuple[str, str]] = []

    def again(output: str, error: str) -> Completion:
        calls.append((output, error))
        return _done('{"name": "Ada", "age": 3}', prompt_tokens=9)

    outcome = validated(PERSON, _done('{"name": "Ada"}'), again)
    assert calls == [('{"name": "Ada"}', "the output does not match the schema at "
                                         "(root): 'age' is a required property")]
    assert outcome.value == {"name": "Ada", "age": 3}
    assert outcome.first_error == calls[0][1]
    assert (outcome.usage.prompt_tokens, outcome.usage.cached_tokens) == (14, 2)


def test_two_invalid_outputs_fail_with_both_errors() -> None:
    with pytest.raises(StructuredOutputInvalid,
                       match=r"twice\. First try: .*not JSON.*Second try: .*age: -1 is less"):
        validated(PERSON, _done("nope"), lambda out, err: _done('{"name": "A", "age": -1}'))


def test_run_preset_reads_outputs_it_is_given() -> None:
    outputs = iter(["Negative!", "It is [2], also [1].", '{"name": "Bo"}',
                    '```json\n{"name": "Bo", "age": 4}\n```'])
    prompts: list[tuple[str, EngineSampling]] = []

    def generate(prompt: str, sampling: EngineSampling, timeout_s: float | None
                 ) -> Completion:
        prompts.append((prompt, sampling))
        return _done(next(outputs))

    label, _ = run_preset(JobKind.classify, {"model": "m", "text": "bad", "labels": [
        "positive", "negative"]}, "llama", generate)
    assert label.model_dump()["label"] == "negative"
    answer, _ = run_preset(JobKind.answer, {"model": "m", "question": "q",
                                            "context": ["a", "b"]}, "llama", generate)
    assert answer.model_dump()["citations"] == [1, 0]
    extracted, usage = run_preset(JobKind.extract, {"model": "m", "text": "Bo is 4",
                                                    "json_schema": PERSON}, "llama", generate)
    assert extracted.model_dump()["data"] == {"name": "Bo", "age": 4}
    assert extracted.model_dump()["retried"] is True and usage.prompt_tokens == 10
    first, second = prompts[2][0], prompts[3][0]
    assert second == render_retry(first, '{"name": "Bo"}', extracted.model_dump()[
        "first_error"], "llama")
    # The schema travels with the sampling, for engines that constrain decoding.
    assert prompts[2][1].json_schema is not None
    assert json.loads(prompts[2][1].json_schema) == PERSON


# -- contracts and SGLang --------------------------------------------------------------------


def test_response_format_is_openais_shape_and_checks_the_schema() -> None:
    request = GenerateRequest.model_validate({
        "model": "m", "prompt": "p", "response_format": {
            "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}})
    assert request.response_format is not None
    assert request.model_dump(mode="json")["response_format"]["json_schema"]["schema"] == PERSON
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        GenerateRequest.model_validate({"model": "m", "prompt": "p", "response_format": {
            "type": "json_schema", "json_schema": {"schema": {"minimum": "zero"}}}})
    with pytest.raises(ValidationError, match="json_schema"):
        GenerateRequest.model_validate({"model": "m", "prompt": "p",
                                        "response_format": {"type": "json_object"}})


def test_sglang_gets_the_schema_for_constrained_decoding() -> None:
    text = json.dumps(PERSON)
    params = build_sampling_params(EngineSampling(max_tokens=5, json_schema=text))
    assert params == {"max_new_tokens": 5, "temperature": 0.0, "json_schema": text}
    check_sampling_params(params)  # a field of SGLang's SamplingParams
    assert "json_schema" not in build_sampling_params(EngineSampling(max_tokens=5))


def test_batch_lines_may_ask_for_structured_output() -> None:
    line = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    request = GenerateRequest.model_validate(_request({**line, "response_format": fmt}))
    assert request.response_format is not None
    assert request.response_format.json_schema.schema_ == PERSON
    plain = GenerateRequest.model_validate(_request({**line,
                                                     "response_format": {"type": "text"}}))
    assert plain.response_format is None
    with pytest.raises(ValidationError, match="response_format"):
        GenerateRequest.model_validate(_request({**line, "response_format": {
            "type": "json_object"}}))


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_schema_never_makes_the_worker_fetch_a_url() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        # Refused at submission, naming where...
        with pytest.raises(ValidationError, match=r"only local references.*/properties/a/\$ref"):
            ExtractRequest(model="m", text="t",
                           json_schema={"properties": {"a": {"$ref": url}}})
        # ...and not fetched by a worker handed one anyway.
        with pytest.raises(OutputInvalid, match="cannot be resolved"):
            structured('"text"', {"$ref": url})
        assert _Counting.hits == []
        # Local references still work.
        local: dict[str, JsonValue] = {"$defs": {"n": {"type": "integer"}},
                                       "properties": {"a": {"$ref": "#/$defs/n"}}}
        ExtractRequest(model="m", text="t", json_schema=local)
        with pytest.raises(OutputInvalid, match="at a: 'x' is not of type 'integer'"):
            structured('{"a": "x"}', local)
    finally:
        server.shutdown()
        server.server_close()
