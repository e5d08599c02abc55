"""Streaming through the queue: a real worker decodes the demo model and publishes its
text to the job's Redis stream; the API relays it as server-sent events, the CLI prints
it. Every streamed text is compared with the same greedy request answered whole."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from schemas.common import JobStatus
from schemas.events import JobEvent
from schemas.filters import Direction, RedactionRule, TenantFilters
from tests.support.api_server import REQUEST_HANG_GUARD_S, ApiServer, idle_model, tenant
from tests.support.cli import llmos
from tests.support.stack import Stack, make_stack
from tests.support.waiting import until

MODEL = "tiny-stream"
MESSAGES = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "tell the queue what the worker decoded"}]


@pytest.fixture(scope="module")
def stream_stack(redis_base: str, demo_model_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Redis database 8: a stack flushes its own, and the others are taken (9 and 15
    # graphs, 10 presets, 11-12 the session stacks, 13 the real-model tests, 14 the
    # fuzzer, 15 filters).
    stack = make_stack("sqlite", redis_base, None, tmp_path_factory.mktemp("stream"),
                       redis_db=8)
    stack.client().register_model(MODEL, demo_model_dir)
    stack.start_worker("stream@test", "--model", MODEL, "--concurrency", "4")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def stream_api(stream_stack: Stack) -> Iterator[ApiServer]:
    server = ApiServer.start(stream_stack)
    yield server
    server.stop()


def sdk(api: ApiServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0,
                         timeout=REQUEST_HANG_GUARD_S)


def read_events(http: httpx.Client, path: str, method: str = "GET", **kwargs: object
                ) -> list[JobEvent]:
    """Every server-sent event of ``path``, read until the server ends the stream."""
    with connect_sse(http, method, path, **kwargs) as source:  # type: ignore[arg-type]
        assert source.response.status_code == 200, source.response.read()
        events = [(sse.event, JobEvent.model_validate_json(sse.data))
                  for sse in source.iter_sse()]
    assert all(name == event.type for name, event in events)
    return [event for _, event in events]


def test_a_streamed_chat_completion_is_the_whole_reply_piece_by_piece(
        stream_api: ApiServer) -> None:
    client = sdk(stream_api, stream_api.key(tenant()))
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    # include_usage: one last chunk without choices carries the usage.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert whole.usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)
    assert all(c.usage is None for c in chunks[:-1])


def test_a_streamed_completion_equals_the_whole_one_stop_strings_included(
        stream_api: ApiServer) -> None:
    client = sdk(stream_api, stream_api.key(tenant()))
    prompt = "the worker keeps a prefix cache"
    free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20)
    assert free.object == "text_completion" and free.choices[0].finish_reason == "length"
    # A stop string from the middle of the free text: the streamed text must stop
    # before it, though the tokens that begin it were decoded before it was complete.
    free_text = free.choices[0].text
    stop = free_text[len(free_text) // 2:len(free_text) // 2 + 3]
    assert len(stop) == 3
    for kwargs in ({}, {"stop": [stop]}):
        whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, **kwargs)
        chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=20,
                                                stream=True, **kwargs))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        assert all(c.usage is None for c in chunks)  # include_usage was not asked
    assert stop not in whole.choices[0].text and free_text.startswith(whole.choices[0].text)


def test_a_finished_job_replays_its_tokens_and_status_to_its_tenant_only(
        stream_stack: Stack, stream_api: ApiServer) -> None:
    owner, stranger = tenant(), tenant()
    client = stream_stack.client(owner)
    [job] = client.wait([client.generate(model=MODEL, prompt="replay me", max_tokens=16).id],
                        timeout_s=120)
    assert job.status == JobStatus.succeeded and job.result is not None
    with stream_api.http(stream_api.key(owner)) as http:
        events = read_events(http, f"/v1/jobs/{job.id}/events")
    assert events[0] == JobEvent.of_status(JobStatus.running)
    assert events[-1] == JobEvent.of_status(JobStatus.succeeded)
    assert [e.type for e in events[1:-1]] == ["delta"] * (len(events) - 2)
    assert "".join(e.text or "" for e in events) == job.result["text"]
    # The same through the client facade (what `llmos submit --stream` reads).
    assert list(client.events(job.id)) == events
    with stream_api.http(stream_api.key(stranger)) as http:
        denied = http.get(f"/v1/jobs/{job.id}/events")
    assert denied.status_code == 404 and denied.json()["error"]["code"] == "not_found"


def test_cli_stream_prints_the_jobs_text(stream_stack: Stack) -> None:
    owner = tenant()
    env = {**stream_stack.env, "LLMOS_TENANT": owner}
    out = llmos("submit", "what does the cli print", "--model", MODEL, "--max-tokens", "16",
                "--stream", env=env)
    assert out.returncode == 0, out.stderr
    [job] = stream_stack.client(owner).jobs()
    assert job.status == JobStatus.succeeded and job.result is not None
    assert f"queued {job.id}" in out.stderr
    assert out.stdout == job.result["text"] + "\n"
    # --json: one live event per line, the deltas joining up to the same text.
    out = llmos("submit", "what does the cli print", "--model", MODEL, "--max-tokens", "16",
                "--stream", "--json", env=env)
    assert out.returncode == 0, out.stderr
    events = [JobEvent.model_validate(json.loads(line)) for line in out.stdout.splitlines()]
    assert events[-1] == JobEvent.of_status(JobStatus.succeeded)
    assert "".join(e.text or "" for e in events) == job.result["text"]


def test_a_mindspace_turn_streams_its_reply(stream_stack: Stack,
                                           stream_api: ApiServer) -> None:
    owner = tenant()
    with stream_api.http(stream_api.key(owner)) as http:
        space = http.post("/v1/mindspaces", json={"model": MODEL, "persona": "terse"}).json()
        events = read_events(http, f"/v1/mindspaces/{space['id']}/turns", method="POST",
                             params={"stream": "true"},
                             json={"message": "stream this turn", "max_tokens": 12})
        shown = http.get(f"/v1/mindspaces/{space['id']}").json()
    assert events[-1] == JobEvent.of_status(JobStatus.succeeded)
    reply = "".join(e.text or "" for e in events)
    assert reply and shown["messages"][-1] == {**shown["messages"][-1], "role": "assistant",
                                               "content": reply}
    env = {**stream_stack.env, "LLMOS_TENANT": owner}
    out = llmos("mindspace", "chat", space["id"], "and another", "--stream", env=env)
    assert out.returncode == 0, out.stderr
    [turn] = [j for j in stream_stack.client(owner).jobs() if j.kind == "mindspace_turn"][:1]
    assert turn.result is not None and out.stdout == turn.result["reply"] + "\n"


# On the session stack (SQLite and PostgreSQL): the no-op engine, which answers in one
# piece, a model whose jobs fail, and a model no worker serves.


def test_an_engine_that_does_not_stream_still_streams_its_whole_text(api: ApiServer) -> None:
    client = sdk(api, api.key(tenant()))
    chunks = list(client.chat.completions.create(
        model="echo", max_tokens=3, stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ok ok ok"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_failed_job_ends_its_stream_with_the_sdks_error(api: ApiServer) -> None:
    client = sdk(api, api.key(tenant()))
    with pytest.raises(openai.APIError, match="failed"):
        list(client.chat.completions.create(
            model="broken", stream=True, messages=[{"role": "user", "content": "hi"}]))


def test_a_job_cancelled_before_it_ran_ends_its_events_from_the_database(
        api: ApiServer) -> None:
    owner = tenant()
    model = idle_model(api)  # no worker: nothing ever writes this job's stream
    with api.http(api.key(owner)) as http:
        job = http.post("/v1/jobs", json={"model": model, "prompt": "never runs"}).json()
        assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        events = read_events(http, f"/v1/jobs/{job['id']}/events")
    assert events == [JobEvent.of_status(JobStatus.cancelled)]


def test_a_reader_that_disconnects_leaves_the_job_running_unless_it_asked(
        api: ApiServer) -> None:
    owner = tenant()
    model = idle_model(api)  # the jobs stay queued: only a cancel can end them
    with api.http(api.key(owner)) as http:
        kept, dropped = (http.post("/v1/jobs", json={"model": model, "prompt": p}).json()
                         for p in ("kept", "dropped"))
        for job, cancel in ((kept, "false"), (dropped, "true")):
            with http.stream("GET", f"/v1/jobs/{job['id']}/events",
                             params={"cancel_on_disconnect": cancel}) as response:
                assert response.status_code == 200
            # Leaving the block closed the connection mid-stream.
        until(lambda: http.get(f"/v1/jobs/{dropped['id']}").json()["status"] == "cancelled",
              "the job of the reader that asked for it was cancelled when it left")
        # The first reader left before the second: had it cancelled, that would show.
        assert http.get(f"/v1/jobs/{kept['id']}").json()["status"] == "queued"


def test_stream_options_without_stream_is_a_clear_error(api: ApiServer) -> None:
    client = sdk(api, api.key(tenant()))
    for create in (
        lambda: client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True}),
        lambda: client.completions.create(model="echo", prompt="hi",
                                          stream_options={"include_usage": True}),
    ):
        with pytest.raises(openai.BadRequestError,
                           match="stream_options is only allowed with stream"):
            create()


def test_a_stream_whose_job_does_not_end_in_time_cancels_it(api_short_wait: ApiServer) -> None:
    api = api_short_wait
    owner = tenant()
    model = idle_model(api)  # the job never starts
    with pytest.raises(openai.APIError, match="did not finish within"):
        list(sdk(api, api.key(owner)).completions.create(model=model, prompt="wait",
                                                          stream=True))
    with api.http(api.key(owner)) as http:
        [job] = http.get("/v1/jobs").json()["data"]
    assert job["status"] == "cancelled"


def test_a_tenant_whose_rules_screen_the_output_streams_only_screened_text(
        stream_stack: Stack) -> None:
    client = stream_stack.client(tenant())
    prompt = "what the redaction rule hides"
    [free] = client.wait([client.generate(model=MODEL, prompt=prompt, max_tokens=16).id],
                         timeout_s=120)
    assert free.result is not None
    secret = max(free.result["text"].split(), key=len)  # a word the model will say again
    client.set_filters(TenantFilters(redact=[RedactionRule(
        name="secret", pattern=re.escape(secret), replacement="[X]", direction=Direction.output)]))
    [job] = client.wait([client.generate(model=MODEL, prompt=prompt, max_tokens=16).id],
                        timeout_s=120)
    assert job.result is not None and job.result["text"] == free.result["text"].replace(
        secret, "[X]")
    events = list(client.events(job.id))
    deltas = [e.text or "" for e in events if e.type == "delta"]
    assert "".join(deltas) == job.result["text"]
    assert not any(secret in d for d in deltas)  # the raw text never left the worker


def test_a_stream_with_an_idempotency_key_streams_whole_and_replays(api: ApiServer) -> None:
    owner = tenant()
    client = sdk(api, api.key(owner))
    key = {"Idempotency-Key": f"stream-{owner}"}

    def streamed() -> str:
        chunks = client.chat.completions.create(
            model="echo", max_tokens=3, stream=True, extra_headers=key,
            messages=[{"role": "user", "content": "hi"}])
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    # The middleware that stores answers must not end the stream before it ends.
    assert streamed() == "ok ok ok"
    assert streamed() == "ok ok ok"  # the stored stream, replayed
    with api.http(api.key(owner)) as http:
        assert len(http.get("/v1/jobs").json()["data"]) == 1  # the repeat ran no job
