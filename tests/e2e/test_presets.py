"""Task presets and structured output through real workers: the demo model on the
transformers engine (each job's text is compared with a solo greedy run of the rendered
prompt on the engine itself), and an echoing no-op model whose output the test writes
(so the JSON a structured output holds is chosen here, and checked with jsonschema)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from llmos_jobs.client import LlmosClient
from llmos_jobs.db import registry
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.prompt_templates import render_preset, render_retry
from llmos_jobs.task_outputs import OutputInvalid, choose_label, citations, structured
from schemas.common import JobKind, JobStatus
from schemas.tasks import PRESET_KINDS, REQUESTS
from tests.support.api_server import REQUEST_HANG_GUARD_S, ApiServer, tenant
from tests.support.cli import assert_one_line_error, llmos
from tests.support.stack import Stack, make_stack
from workers.engines.base import Completion, EngineRequest, EngineSampling
from workers.engines.transformers import TransformersEngine

PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def preset_stack(redis_base: str, demo_model_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Redis database 10: 11-12 are the session stacks', 13 test_real_model's, 14 the fuzzer's.
    stack = make_stack("sqlite", redis_base, None, tmp_path_factory.mktemp("presets"),
                       redis_db=10)
    client = stack.client()
    client.register_model("tiny-presets", demo_model_dir)
    client.register_model("echo-presets", stack.data_dir / "echo", engine="noop")
    stack.start_worker("presets@test", "--model", "tiny-presets", "--concurrency", "2")
    stack.start_worker("echo-presets@test", "--model", "echo-presets",
                       env={"LLMOS_NOOP_ECHO": "1"})
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def reference(demo_model_dir: Path) -> Iterator[TransformersEngine]:
    """The same weights in this process, one request at a time: the solo reference."""
    engine = TransformersEngine("reference", str(demo_model_dir))
    engine.load()
    yield engine
    engine.unload()


def solo(engine: TransformersEngine, prompt: str, max_tokens: int) -> Completion:
    [done] = engine.generate([EngineRequest(EngineSampling(max_tokens), prompt=prompt)])
    return done


def rendered(kind: JobKind, request: dict[str, Any]) -> str:
    # The demo model is a llama: no llama template ships, so the default one serves it.
    return render_preset(REQUESTS[kind].model_validate(request), kind.value, "llama")


def test_the_demo_models_family_is_read_from_its_config(demo_model_dir: Path) -> None:
    assert registry.model_type_of(str(demo_model_dir)) == "llama"


def test_text_presets_match_a_solo_greedy_run_of_their_prompt(
        preset_stack: Stack, reference: TransformersEngine) -> None:
    client = preset_stack.client("presets-text")
    passages = ["the queue holds jobs", "a worker serves one model", "redis is the broker"]
    requests: dict[JobKind, dict[str, Any]] = {
        JobKind.summarise: {"model": "tiny-presets", "text": "jobs wait in a queue " * 8,
                            "length": 12, "style": "bullets"},
        JobKind.translate: {"model": "tiny-presets", "text": "the worker is busy",
                            "target_language": "fr", "max_tokens": 10},
        JobKind.answer: {"model": "tiny-presets", "question": "what is the broker?",
                         "context": passages, "max_tokens": 16},
        JobKind.classify: {"model": "tiny-presets", "text": "the model is loaded",
                           "labels": ["queue", "worker", "model"], "max_tokens": 6},
    }
    jobs = {kind: client.task(kind, request) for kind, request in requests.items()}
    done = {kind: job for kind, job in zip(
        jobs, client.wait([j.id for j in jobs.values()], timeout_s=180), strict=True)}
    assert all(j.status == JobStatus.succeeded for j in done.values()), done
    budgets = {JobKind.summarise: 12, JobKind.translate: 10, JobKind.answer: 16,
               JobKind.classify: 6}
    alone = {kind: solo(reference, rendered(kind, request), budgets[kind])
             for kind, request in requests.items()}

    summary = done[JobKind.summarise].summarise_result()
    assert summary.summary == alone[JobKind.summarise].text.strip()
    assert summary.usage.completion_tokens == alone[JobKind.summarise].completion_tokens
    assert summary.usage.prompt_tokens == len(reference.tokenize(
        rendered(JobKind.summarise, requests[JobKind.summarise])))
    translation = done[JobKind.translate].translate_result()
    assert translation.translation == alone[JobKind.translate].text.strip()
    answer = done[JobKind.answer].answer_result()
    assert answer.answer == alone[JobKind.answer].text.strip()
    assert answer.citations == citations(alone[JobKind.answer].text, len(passages))
    label = done[JobKind.classify].classify_result()
    assert label.output == alone[JobKind.classify].text
    assert (label.label, label.match) == choose_label(label.output, ["queue", "worker",
                                                                     "model"])


def test_extract_whose_output_fails_twice_fails_with_the_validation_error(
        preset_stack: Stack, reference: TransformersEngine) -> None:
    client = preset_stack.client("presets-extract")
    request = {"model": "tiny-presets", "text": "Ada is 36", "json_schema": PERSON,
               "max_tokens": 12}
    [job] = client.wait([client.task(JobKind.extract, request).id], timeout_s=180)
    # The reference: both tries on the engine alone, read by the same parser.
    prompt = rendered(JobKind.extract, request)
    first = solo(reference, prompt, 12)
    with pytest.raises(OutputInvalid) as first_error:
        structured(first.text, PERSON)
    second = solo(reference, render_retry(prompt, first.text, str(first_error.value),
                                          "llama"), 12)
    with pytest.raises(OutputInvalid) as second_error:
        structured(second.text, PERSON)
    assert job.status == JobStatus.failed
    assert job.error_type == "StructuredOutputInvalid"
    assert job.error_message == (
        f"the output failed its JSON Schema twice. First try: {first_error.value}. "
        f"Second try: {second_error.value}")


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


def test_response_format_returns_json_valid_against_the_schema(preset_stack: Stack) -> None:
    client = preset_stack.client("presets-format")
    person = {"name": "Ada", "age": 36}
    job = client.generate(model="echo-presets", prompt=json.dumps(person), max_tokens=50,
                          response_format=_format(PERSON))
    [done] = client.wait([job.id])
    assert done.status == JobStatus.succeeded, done.error_message
    result = done.generate_result()
    jsonschema.validate(result.parsed, PERSON)  # the reference validator agrees
    assert result.parsed == person and not result.retried and result.first_error is None


def test_response_format_retries_once_then_fails_with_jsonschemas_error(
        preset_stack: Stack) -> None:
    client = preset_stack.client("presets-format-bad")
    wrong = {"name": "Ada", "age": -1}
    job = client.generate(model="echo-presets", prompt=json.dumps(wrong), max_tokens=400,
                          response_format=_format(PERSON))
    [done] = client.wait([job.id])
    assert done.status == JobStatus.failed and done.error_type == "StructuredOutputInvalid"
    with pytest.raises(jsonschema.ValidationError) as expected:
        jsonschema.validate(wrong, PERSON)
    # The echo repeats the JSON on the second try too: both tries fail the same way.
    assert done.error_message is not None
    assert done.error_message.count(f"at age: {expected.value.message}") == 2
    assert "twice" in done.error_message


def test_bad_preset_requests_are_refused_naming_the_field(preset_stack: Stack) -> None:
    client: LlmosClient = preset_stack.client("presets-bad")
    with pytest.raises(InvalidRequest, match=r"json_schema.*not a valid JSON Schema"):
        client.extract(model="tiny-presets", text="x", json_schema={"type": "thing"})
    with pytest.raises(InvalidRequest, match="label 'A' is given twice"):
        client.classify(model="tiny-presets", text="x", labels=["a", "A"])
    with pytest.raises(InvalidRequest, match="unknown task 'poem'"):
        client.task("poem", {"model": "tiny-presets"})
    with pytest.raises(InvalidRequest, match=r"response_format\.json_schema\.schema"):
        client.generate(model="echo-presets", prompt="x",
                        response_format=_format({"type": 7}))
    assert client.jobs() == []  # nothing was queued


# -- the CLI --------------------------------------------------------------------------


def _cli_job(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stdout + out.stderr
    job: dict[str, Any] = json.loads(out.stdout)
    return job


def test_cli_presets_match_the_solo_reference(preset_stack: Stack, reference: TransformersEngine,
                                              tmp_path: Path) -> None:
    env = {**preset_stack.env, "LLMOS_TENANT": "presets-cli"}
    common = ("--model", "tiny-presets", "--wait", "--json")
    text = "the control process reaps workers whose heartbeat stopped"
    summary = _cli_job(subprocess.run(
        [sys.executable, "-m", "llmos_jobs.cli.main", "summarise", "-", "--length", "8",
         *common], input=text, env=env, capture_output=True, text=True, timeout=120))
    alone = solo(reference, rendered(JobKind.summarise, {
        "model": "m", "text": text, "length": 8}), 8)
    assert summary["kind"] == "summarise"
    assert summary["result"]["summary"] == alone.text.strip()

    translated = _cli_job(llmos("translate", "--to", "fr", "--max-tokens", "6", text, *common,
                                env=env))
    alone = solo(reference, rendered(JobKind.translate, {
        "model": "m", "text": text, "target_language": "fr"}), 6)
    assert translated["result"]["translation"] == alone.text.strip()

    passages = tmp_path / "passages.txt"
    passages.write_text("workers heartbeat\n\nthe reaper re-enqueues\n\nredis is the broker\n")
    answered = _cli_job(llmos("answer", "--context", str(passages), "--max-tokens", "8",
                              "who re-enqueues?", *common, env=env))
    context = ["workers heartbeat", "the reaper re-enqueues", "redis is the broker"]
    alone = solo(reference, rendered(JobKind.answer, {
        "model": "m", "question": "who re-enqueues?", "context": context}), 8)
    assert answered["payload"]["context"] == context
    assert answered["result"]["answer"] == alone.text.strip()

    labels = ["reaper", "broker"]
    classified = _cli_job(llmos("classify", "--label", labels[0], "--label", labels[1],
                                "--max-tokens", "4", text, *common, env=env))
    alone = solo(reference, rendered(JobKind.classify, {
        "model": "m", "text": text, "labels": labels, "max_tokens": 4}), 4)
    assert classified["result"]["label"] == choose_label(alone.text, labels)[0]


def test_cli_schema_files_shape_structured_output(preset_stack: Stack, tmp_path: Path) -> None:
    env = {**preset_stack.env, "LLMOS_TENANT": "presets-cli-schema"}
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    person = {"name": "Grace", "age": 85}
    job = _cli_job(llmos("submit", json.dumps(person), "--model", "echo-presets",
                         "--max-tokens", "40", "--schema", str(schema), "--wait", "--json",
                         env=env))
    assert job["result"]["parsed"] == person
    jsonschema.validate(job["result"]["parsed"], PERSON)
    # The demo model writes no JSON: extract fails, and --wait exits 1 saying why.
    failed = llmos("extract", "--schema", str(schema), "--model", "tiny-presets",
                   "--max-tokens", "4", "Grace is 85", "--wait", env=env)
    assert failed.returncode == 1
    assert "StructuredOutputInvalid" in failed.stdout and "twice" in failed.stdout
    schema.write_text("[1, 2]")
    assert_one_line_error(llmos("extract", "--schema", str(schema), "x", env=env),
                          "must hold a JSON object")
    assert_one_line_error(llmos("summarise", str(tmp_path / "absent.txt"), env=env),
                          "is not a file")


# -- HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preset_api(preset_stack: Stack) -> Iterator[ApiServer]:
    server = ApiServer.start(preset_stack)
    yield server
    server.stop()


def test_http_tasks_are_typed_and_match_the_solo_reference(
        preset_api: ApiServer, preset_stack: Stack, reference: TransformersEngine) -> None:
    name = tenant()
    http = preset_api.http(preset_api.key(name))
    body = {"model": "tiny-presets", "text": "tenants share the workers fairly",
            "length": 9, "priority": "interactive"}
    queued = http.post("/v1/tasks/summarise", json=body)
    assert queued.status_code == 202, queued.text
    assert queued.json()["kind"] == "summarise" and queued.json()["priority"] == 1
    [done] = preset_stack.client(name).wait([queued.json()["id"]])
    shown = http.get(f"/v1/jobs/{done.id}").json()
    alone = solo(reference, rendered(JobKind.summarise, {
        k: v for k, v in body.items() if k != "priority"}), 9)
    assert shown["result"]["summary"] == alone.text.strip()
    assert done.summarise_result().summary == alone.text.strip()

    refused = http.post("/v1/tasks/extract", json={"model": "tiny-presets", "text": "x",
                                                   "json_schema": {"type": 3}})
    assert refused.status_code == 400 and "json_schema" in refused.json()["error"]["message"]
    unknown = http.post("/v1/tasks/poem", json={})
    assert unknown.status_code == 404 and "summarise" in unknown.json()["error"]["message"]
    spec = http.get("/openapi.json").json()
    for kind in ("summarise", "translate", "answer", "classify", "extract"):
        ref = spec["paths"][f"/v1/tasks/{kind}"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{kind.capitalize()}Submit"
    assert "/v1/tasks/{kind}" not in spec["paths"]


def test_openai_sdk_response_format_json_schema(preset_api: ApiServer) -> None:
    sdk = openai.OpenAI(base_url=f"{preset_api.url}/v1", api_key=preset_api.key(tenant()),
                        max_retries=0, timeout=REQUEST_HANG_GUARD_S)
    person = {"name": "Ada", "age": 36}
    completion = sdk.chat.completions.create(
        model="echo-presets", max_tokens=40, response_format=_format(PERSON),  # type: ignore[arg-type]
        messages=[{"role": "user", "content": json.dumps(person)}])
    content = completion.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), PERSON)
    assert json.loads(content) == person
    with pytest.raises(openai.InternalServerError, match="StructuredOutputInvalid") as info:
        sdk.chat.completions.create(
            model="echo-presets", max_tokens=40, response_format=_format(PERSON),  # type: ignore[arg-type]
            messages=[{"role": "user", "content": json.dumps({"name": "Ada"})}])
    assert "'age' is a required property" in str(info.value)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        sdk.chat.completions.create(
            model="echo-presets", max_tokens=4, response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "{}"}])


# -- both databases ------------------------------------------------------------------------


def test_every_preset_kind_is_stored_and_run_on_each_database(stack: Stack) -> None:
    """The session stacks (SQLite and PostgreSQL, whose job kind is an enum type that
    migration 0015 extends); their no-op worker answers "ok" per token."""
    client = stack.client(f"presets-{stack.name}")
    jobs = [
        client.summarise(model="echo", text="a long text", length=3),
        client.translate(model="echo", text="bonjour", target_language="en", max_tokens=2),
        client.answer(model="echo", question="q?", context=["p"], max_tokens=2),
        client.classify(model="echo", text="t", labels=["no", "ok"], max_tokens=3),
        client.extract(model="echo", text="t", json_schema=PERSON, max_tokens=2),
    ]
    summary, translation, answer, label, extract = client.wait([j.id for j in jobs])
    assert [j.kind for j in (summary, translation, answer, label, extract)] == list(
        PRESET_KINDS)
    assert summary.summarise_result().summary == "ok ok ok"
    assert translation.translate_result().translation == "ok ok"
    assert answer.answer_result().citations == []
    assert (label.classify_result().label, label.classify_result().match) == ("ok",
                                                                              "mentioned")
    assert extract.status == JobStatus.failed
    assert extract.error_type == "StructuredOutputInvalid"
    assert client.jobs(status=JobStatus.failed)[0].kind == JobKind.extract
