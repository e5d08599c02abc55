"""The job pipeline end to end: client → broker → real worker process → database.

The tests marked ``brokers`` run on RabbitMQ too: a job's life, a failure, mindspace
turns, a worker's direct queue, priority order and a priority class."""

from __future__ import annotations

import base64
import json
import random
import uuid

import pytest

from broker_config import language_queue
from llmos_jobs.client import LlmosClient
from llmos_jobs.errors import InvalidRequest, NoLiveWorkerWarning, NotFound
from schemas.common import JobStatus
from tests.support.stack import Stack


def _worker_pid(stack: Stack, name: str) -> int:
    [row] = [w for w in stack.client().workers() if w.name == name]
    return row.pid


@pytest.mark.brokers
def test_generate_lifecycle_and_usage_land_in_the_database(stack: Stack) -> None:
    client = stack.client()
    job = client.generate(model="echo", prompt="one two three four", max_tokens=5,
                          priority="interactive")
    assert job.status == JobStatus.queued and job.priority == 1
    [done] = client.wait([job.id])
    assert done.status == JobStatus.succeeded
    assert done.worker == f"noop-{stack.name}@test"
    assert done.worker_pid == _worker_pid(stack, done.worker)  # threads pool: main process
    assert done.attempts == 1
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.created_at.tzinfo is not None
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 5)
    assert done.result is not None and done.result["text"] == "ok ok ok ok ok"
    assert done.payload["prompt"] == "one two three four"


@pytest.mark.brokers
def test_a_failing_job_is_failed_with_its_error(stack: Stack) -> None:
    client = stack.client()
    job = client.generate(model="broken", prompt="hello", max_tokens=4)
    [done] = client.wait([job.id])
    assert done.status == JobStatus.failed
    assert done.error_type  # the engine's real exception class, e.g. OSError
    assert done.error_message
    assert done.result is None and done.usage is None


def test_the_message_carries_the_job_id_not_the_prompt(stack: Stack) -> None:
    client = stack.client()
    model = f"parked-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    secret = "a prompt that must never be in the broker"
    with pytest.warns(NoLiveWorkerWarning, match="no live worker"):
        job = client.generate(model=model, prompt=secret, priority=7)
    raw = stack.redis().lrange(f"{language_queue(model)}:7", 0, -1)
    assert len(raw) == 1
    assert secret.encode() not in raw[0]
    message = json.loads(raw[0])
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [job.id]
    assert message["properties"]["priority"] == 7


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": "echo", "prompt": "   "}, "prompt is empty"),
        ({"model": "echo", "prompt": ""}, "prompt"),
        ({"model": "nope", "prompt": "hi"}, "model 'nope' is not registered"),
        ({"model": "echo", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": "echo", "prompt": "hi", "max_tokens": 5000}, "does not fit the context"),
        ({"model": "echo", "prompt": "hi", "priority": 10}, "outside 0-9"),
        ({"model": "echo", "prompt": "hi", "priority": "urgent"}, "unknown priority 'urgent'"),
        ({"model": "echo", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "echo", "messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
         "exactly one of"),
    ],
)
def test_bad_input_is_rejected_and_nothing_is_enqueued(
    stack: Stack, kwargs: dict[str, object], needle: str
) -> None:
    client = stack.client()
    before_jobs = len(client.jobs(limit=10_000))
    r = stack.redis()
    before_queue = sum(r.llen(k) for k in r.scan_iter("lang.*"))
    with pytest.raises(InvalidRequest, match=needle.replace(".", r"\.")):
        client.generate(**kwargs)  # type: ignore[arg-type]
    assert len(client.jobs(limit=10_000)) == before_jobs
    assert sum(r.llen(k) for k in r.scan_iter("lang.*")) == before_queue


def test_a_turn_in_an_unknown_mindspace_is_rejected(stack: Stack) -> None:
    with pytest.raises(NotFound, match="mindspace nope not found"):
        stack.client().chat("nope", "hello")


@pytest.mark.brokers
def test_mindspace_history_is_kept_and_used_as_context(stack: Stack) -> None:
    client = stack.client()
    mindspace = client.create_mindspace(model="echo", persona="be brief")
    first = client.wait([client.chat(mindspace.id, "hello there", max_tokens=3).id])[0]
    second = client.wait([client.chat(mindspace.id, "and again", max_tokens=3).id])[0]
    assert first.status == second.status == JobStatus.succeeded
    assert first.usage is not None and second.usage is not None
    # persona (2) + "hello there" (2) then + history (2 + 3) + "and again" (2)
    assert (first.usage.prompt_tokens, second.usage.prompt_tokens) == (4, 9)
    shown = client.mindspace(mindspace.id)
    assert [(m.role, m.content) for m in shown.messages] == [
        ("user", "hello there"), ("assistant", "ok ok ok"),
        ("user", "and again"), ("assistant", "ok ok ok"),
    ]
    with pytest.raises(NotFound):
        stack.client(tenant="someone-else").mindspace(mindspace.id)
    client.destroy_mindspace(mindspace.id)
    with pytest.raises(NotFound):
        client.mindspace(mindspace.id)


def test_jobs_of_another_tenant_answer_not_found(stack: Stack) -> None:
    job = stack.client(tenant="alpha").generate(model="echo", prompt="mine")
    with pytest.raises(NotFound):
        stack.client(tenant="beta").job(job.id)
    with pytest.raises(NotFound):
        stack.client(tenant="beta").cancel(job.id)
    assert all(j.tenant == "beta" for j in stack.client(tenant="beta").jobs())


@pytest.mark.brokers
def test_model_load_and_unload_on_a_named_worker(stack: Stack) -> None:
    client = stack.client()
    worker = f"noop-{stack.name}@test"
    [loaded] = client.wait([client.model_op("echo", "load", worker=worker).id])
    assert loaded.status == JobStatus.succeeded and loaded.queue == f"w.{worker}"
    assert loaded.result is not None and loaded.result["loaded"] is True
    [echo] = [m for m in client.models() if m.name == "echo"]
    assert worker in echo.loaded_on
    [unloaded] = client.wait([client.model_op("echo", "unload", worker=worker).id])
    assert unloaded.result is not None and unloaded.result["loaded"] is False
    [echo] = [m for m in client.models() if m.name == "echo"]
    assert worker not in echo.loaded_on


@pytest.mark.brokers
def test_priority_order_fifo_within_a_level_and_cancelled_jobs_never_run(stack: Stack) -> None:
    # The broker's own order: every job is published at once (with the dispatcher on,
    # the jobs released before a worker exists would run first; its order is tested in
    # tests/e2e/test_fair_share.py).
    client = LlmosClient(tenant="default",
                         settings=stack.settings().model_copy(update={"dispatch": "off"}))
    model = f"prio-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    rng = random.Random(7)
    with pytest.warns(NoLiveWorkerWarning):
        jobs = [client.generate(model=model, prompt=f"job {i}", max_tokens=1,
                                priority=rng.choice([0, 1, 2, 5, 5, 8, 9]))
                for i in range(120)]
    cancelled = {j.id for j in jobs[::10]}
    for job_id in cancelled:
        assert client.cancel(job_id).status == JobStatus.cancelled
    worker = stack.start_worker(f"prio-{stack.name}@test", "--model", model,
                                "--concurrency", "1")
    try:
        done = client.wait([j.id for j in jobs])
    finally:
        stack.stop_worker(worker)
    ran = [j for j in done if j.id not in cancelled]
    assert all(j.status == JobStatus.succeeded for j in ran)
    assert all(j.started_at is None and j.worker is None for j in done if j.id in cancelled)
    order = sorted(ran, key=lambda j: j.started_at)  # type: ignore[arg-type, return-value]
    submitted = {j.id: i for i, j in enumerate(jobs)}
    keys = [(j.priority, submitted[j.id]) for j in order]
    assert keys == sorted(keys)


@pytest.mark.brokers
def test_generate_many_runs_the_valid_part_and_names_the_rest(stack: Stack) -> None:
    client = stack.client()
    requests = [
        {"model": "echo", "prompt": "one", "max_tokens": 1},
        {"model": "echo", "prompt": ""},
        {"model": "nope", "prompt": "x"},
        {"model": "echo", "prompt": "two words", "max_tokens": 2},
    ]
    submitted = client.generate_many(requests, priority="batch")
    assert sorted(submitted.errors) == [1, 2]
    assert "not registered" in submitted.errors[2]
    done = client.wait([j.id for j in submitted.jobs])
    assert [j.status for j in done] == [JobStatus.succeeded] * 2
    assert [j.payload["prompt"] for j in done] == ["one", "two words"]
    assert {j.priority for j in done} == {8}


def test_a_gpu_pinned_worker_is_named_for_its_gpu(stack: Stack) -> None:
    import socket

    # No GPU here: the worker still pins itself (CUDA_VISIBLE_DEVICES) and says which;
    # bench/gpu_check.sh checks on a GPU machine that torch then sees exactly one device.
    name = f"gpu3@{socket.gethostname()}"
    process = stack.start_worker(name, "--gpu", "3", "--model", "echo", "--concurrency", "1",
                                 wait=False, named=False)
    try:
        stack.wait_for_worker(name, process)
        [row] = [w for w in stack.client().workers() if w.pid == process.pid]
        assert row.engine_device == "cuda:3"
    finally:
        stack.stop_worker(process)
