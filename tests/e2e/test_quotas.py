"""Tenant quotas at submission (docs/quotas.md) on the real stack: the operator's policy
routes, 429 refusals over HTTP with Retry-After and the quota's name, the jobs accepted
before a refusal untouched, the tokens-per-minute window against a moving window
reproduced here, the dispatcher's pacer, batches accepted past max_queued, the CLI."""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from subprocess import Popen
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.errors import InvalidRequest, NoLiveWorkerWarning, QuotaExceeded
from llmos_jobs.services.quotas import TokenPacer, job_cost
from schemas.language import GenerateRequest
from tests.support.api_server import ApiServer, idle_model, tenant, wait_job
from tests.support.cli import assert_one_line_error, llmos
from tests.support.stack import Stack
from tests.support.waiting import until

WINDOW_S = 60.0  # tokens_per_minute: limits' moving window of one minute


@pytest.fixture
def echo_model(stack: Stack) -> Iterator[tuple[str, list[Popen[bytes]]]]:
    """A model of its own, echoing each prompt, that no worker serves until the test
    starts one with the second item: its jobs stay queued until then."""
    model = f"quota-{uuid.uuid4().hex[:8]}"
    stack.client().register_model(model, stack.data_dir / model, engine="noop")
    started: list[Popen[bytes]] = []
    yield model, started
    for process in started:
        stack.stop_worker(process)


def _serve(stack: Stack, model: str, started: list[Popen[bytes]]) -> None:
    started.append(stack.start_worker(f"{model}-{stack.name}@test", "--model", model,
                                      "--concurrency", "4", env={"LLMOS_NOOP_ECHO": "1"}))


def _set_policy(api: ApiServer, who: str, **body: Any) -> dict[str, Any]:
    with api.http(api.operator_key()) as ops:
        response = ops.put(f"/v1/tenants/{who}/policy", json=body)
    assert response.status_code == 200, response.text
    stored: dict[str, Any] = response.json()
    return stored


def _refusals(api: ApiServer, who: str, limit: str) -> float:
    text = httpx.get(f"{api.url}/metrics", timeout=60).text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "llmos_quota_refusals_total"
               and s.labels == {"tenant": who, "limit": limit})


def _refused(response: httpx.Response, limit: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == limit and error["type"] == "rate_limit_error", error
    assert limit in error["message"], error
    return error


def test_policy_routes_round_trip_and_validate(api: ApiServer) -> None:
    who = tenant()
    with api.http(api.operator_key()) as ops:
        fresh = ops.get(f"/v1/tenants/{who}/policy").json()
        assert fresh["weight"] == 1 and fresh["updated_at"] is None
        assert all(fresh[k] is None for k in ("max_queued", "max_running",
                                              "tokens_per_minute", "max_priority"))
        set_ = ops.put(f"/v1/tenants/{who}/policy", json={
            "weight": 2.5, "max_queued": 7, "max_running": 3, "tokens_per_minute": 900,
            "max_priority": "default"}).json()
        assert ops.get(f"/v1/tenants/{who}/policy").json() == set_
        assert (set_["weight"], set_["max_queued"], set_["max_running"],
                set_["tokens_per_minute"], set_["max_priority"]) == (2.5, 7, 3, 900, 5)
        # A field left out keeps its value; null removes it.
        changed = ops.put(f"/v1/tenants/{who}/policy",
                          json={"max_queued": None, "weight": None}).json()
        assert (changed["max_queued"], changed["weight"], changed["max_running"]) == (
            None, 1, 3)
        for bad, field in (({"max_queued": -1}, "max_queued"), ({"weight": 0}, "weight"),
                           ({"max_priority": "urgent"}, "max_priority"),
                           ({"max_running": 0}, "max_running"), ({"burst": 3}, "burst")):
            refused = ops.put(f"/v1/tenants/{who}/policy", json=bad)
            assert refused.status_code == 400 and field in refused.text, refused.text
        assert ops.get(f"/v1/tenants/{who}/policy").json() == changed
        gone = ops.delete(f"/v1/tenants/{who}/policy").json()
        assert gone["updated_at"] is None and gone["max_running"] is None


def test_over_max_queued_is_refused_and_what_was_accepted_runs(
        api: ApiServer, stack: Stack, echo_model: tuple[str, list[Popen[bytes]]]) -> None:
    model, started = echo_model
    who = tenant()
    _set_policy(api, who, max_queued=3)
    before = _refusals(api, who, "max_queued")
    with api.http(api.key(who)) as http:
        prompts = [f"accepted number {i} {uuid.uuid4().hex[:6]}" for i in range(3)]
        accepted = [http.post("/v1/jobs", json={"model": model, "prompt": p,
                                                "max_tokens": 8}) for p in prompts]
        assert [r.status_code for r in accepted] == [202] * 3, accepted[-1].text
        ids = [r.json()["id"] for r in accepted]
        over = [
            http.post("/v1/jobs", json={"model": model, "prompt": "one too many"}),
            http.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "too many"}]}),
            http.post("/v1/tasks/summarise", json={"model": model, "text": "too many"}),
        ]
        for response in over:
            _refused(response, "max_queued")
            assert 1 <= int(response.headers["retry-after"]) <= 60
        # Nothing refused was stored, nothing accepted was touched.
        listed = http.get("/v1/jobs", params={"limit": 50}).json()["data"]
        assert sorted(j["id"] for j in listed) == sorted(ids)
        assert all(j["status"] == "queued" for j in listed)
        assert _refusals(api, who, "max_queued") == before + len(over)

        _serve(stack, model, started)
        done = [wait_job(http, job_id) for job_id in ids]
        assert [j["status"] for j in done] == ["succeeded"] * 3
        # The echo engine answers each prompt with itself: each job ran its own request.
        assert [j["result"]["text"] for j in done] == prompts
        # Its jobs ended: the tenant is under max_queued again.
        again = http.post("/v1/jobs", json={"model": model, "prompt": "room again",
                                            "max_tokens": 2})
        assert again.status_code == 202, again.text
        assert wait_job(http, again.json()["id"])["status"] == "succeeded"


def test_concurrent_submissions_never_pass_max_queued(
        api: ApiServer, stack: Stack, echo_model: tuple[str, list[Popen[bytes]]]) -> None:
    """Submissions arriving together, each counted and inserted on one of the API's
    threads: exactly max_queued of them are accepted, never one each per count taken
    before the others committed."""
    model, _ = echo_model  # served by no worker: what is accepted stays queued
    who, limit, senders = tenant(), 3, 16
    _set_policy(api, who, max_queued=limit)
    start = threading.Barrier(senders)

    def send(i: int) -> httpx.Response:
        with api.http(api.key(who)) as http:
            start.wait()
            return http.post("/v1/jobs", json={"model": model, "prompt": f"together {i}",
                                               "max_tokens": 2})

    with ThreadPoolExecutor(senders) as pool:
        answers = list(pool.map(send, range(senders)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * limit + [429] * (senders - limit), codes
    for refused in (r for r in answers if r.status_code == 429):
        _refused(refused, "max_queued")
    with session_scope(stack.database) as session:
        stored = session.exec(select(Job.id).where(Job.tenant == who)).all()
    assert sorted(stored) == sorted(r.json()["id"] for r in answers if r.status_code == 202)


def test_a_priority_above_max_priority_is_refused(api: ApiServer) -> None:
    model = idle_model(api)
    who = tenant()
    _set_policy(api, who, max_priority="default")
    with api.http(api.key(who)) as http:
        refused = http.post("/v1/jobs", json={"model": model, "prompt": "me first",
                                              "priority": "interactive"})
        error = _refused(refused, "max_priority")
        assert "interactive" in error["message"] and "default" in error["message"]
        # Waiting does not help: no Retry-After.
        assert "retry-after" not in refused.headers
        for allowed in ("default", "batch", 5):
            ok = http.post("/v1/jobs", json={"model": model, "prompt": "in turn",
                                             "priority": allowed})
            assert ok.status_code == 202, ok.text
        assert len(http.get("/v1/jobs").json()["data"]) == 3
        # OpenAI's routes name no priority: their interactive one is lowered, not refused.
        chat = http.post("/v1/chat/completions", json={
            "model": "echo", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == "ok ok"
    priorities = sorted(j.priority for j in api.stack.client(who).jobs())
    assert priorities == [5, 5, 5, 8]
    assert _refusals(api, who, "max_priority") == 1


def test_a_mindspace_turn_over_max_queued_is_refused(api: ApiServer) -> None:
    who = tenant()
    with api.http(api.key(who)) as http:
        mindspace = http.post("/v1/mindspaces", json={"model": idle_model(api)}).json()
        first = http.post(f"/v1/mindspaces/{mindspace['id']}/turns",
                          json={"message": "first"})
        assert first.status_code == 202, first.text
        _set_policy(api, who, max_queued=1)
        refused = http.post(f"/v1/mindspaces/{mindspace['id']}/turns",
                            json={"message": "second"})
        _refused(refused, "max_queued")
        assert [j["id"] for j in http.get("/v1/jobs").json()["data"]] == [first.json()["id"]]


def _cost(model: str, prompt: str, max_tokens: int) -> int:
    return job_cost(GenerateRequest(model=model, prompt=prompt, max_tokens=max_tokens)
                    .model_dump(mode="json"))


def test_tokens_per_minute_follows_a_moving_window(api: ApiServer, stack: Stack) -> None:
    model = idle_model(api)
    who = tenant()
    limit = 400
    _set_policy(api, who, tokens_per_minute=limit)
    client = stack.client(who)
    # Costs that fill the window unevenly: some fit after a refusal, some do not.
    sizes = [120, 90, 150, 60, 30, 10, 80, 5, 200, 1]
    charged: list[tuple[float, int]] = []  # (when, tokens) of each accepted request
    decisions, expected = [], []
    for i, max_tokens in enumerate(sizes):
        prompt = f"request {i}"
        cost = _cost(model, prompt, max_tokens)
        at = time.time()
        # The moving window, reproduced: the charges younger than a minute plus this
        # one may not exceed the limit.
        used = sum(tokens for when, tokens in charged if when > at - WINDOW_S)
        expected.append(used + cost <= limit)
        try:
            with warnings.catch_warnings():  # the model is idle on purpose
                warnings.simplefilter("ignore", NoLiveWorkerWarning)
                client.generate(model=model, prompt=prompt, max_tokens=max_tokens)
        except QuotaExceeded as refusal:
            assert refusal.limit == "tokens_per_minute"
            assert refusal.retry_after_s is not None and 1 <= refusal.retry_after_s <= 60
            decisions.append(False)
        else:
            charged.append((at, cost))
            decisions.append(True)
    assert decisions == expected
    assert True in decisions and False in decisions
    assert len(client.jobs(limit=50)) == decisions.count(True)
    # A request that could never fit is a bad request, not a wait.
    with pytest.raises(InvalidRequest, match="tokens_per_minute"):
        client.generate(model=model, prompt="too big", max_tokens=limit)
    # The same refusal over HTTP: 429, Retry-After within the window.
    with api.http(api.key(who)) as http:
        response = http.post("/v1/jobs", json={"model": model, "prompt": "x",
                                                "max_tokens": limit // 2})
        _refused(response, "tokens_per_minute")
        assert 1 <= int(response.headers["retry-after"]) <= 60


# The window is kept in Redis and lasts a minute: once is enough.
@pytest.mark.postgres_only
def test_the_pacer_admits_again_once_the_window_moves(stack: Stack, api: ApiServer) -> None:
    who = tenant()
    _set_policy(api, who, tokens_per_minute=100)
    pacer = TokenPacer(stack.client(who).submitter.quotas)
    first = time.time()
    assert pacer.admit(who, 70)
    assert pacer.admit(who, 30)
    assert not pacer.admit(who, 1)
    # Paced, not refused: a job bigger than the whole quota waits for an empty window.
    assert not pacer.admit(who, 500)
    assert pacer.admit(tenant(), 10**6)  # a tenant without a policy is never paced
    until(lambda: pacer.admit(who, 500), "the pacer admits once the window moved",
          timeout_s=WINDOW_S + 120, poll_s=0.5)
    # Not before the first charges left the window: a minute after them.
    assert time.time() - first >= WINDOW_S - 1
    assert not pacer.admit(who, 1)  # the big job took the whole window


# Waits out the Redis window (a minute or more); batches run on both databases elsewhere.
@pytest.mark.postgres_only
def test_a_batch_past_its_quotas_is_accepted_and_paced(api: ApiServer, stack: Stack) -> None:
    """Six lines against max_queued 1 and a tokens-per-minute window that holds a few of
    them: the batch is accepted whole, the dispatcher releases what the window allows
    and the rest once it has moved on, and every line completes."""
    who = tenant()
    per_minute = 150
    _set_policy(api, who, max_queued=1, tokens_per_minute=per_minute)
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST",
                         "url": "/v1/chat/completions",
                         "body": {"model": "echo", "max_tokens": 20,
                                  "messages": [{"role": "user", "content": f"line {i}"}]}})
             for i in range(6)]
    with api.http(api.key(who)) as http:
        uploaded = http.post("/v1/files", files={"file": ("in.jsonl",
                                                          "\n".join(lines).encode())},
                             data={"purpose": "batch"}).json()
        created = http.post("/v1/batches", json={"input_file_id": uploaded["id"],
                                                 "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"})
        assert created.status_code == 200, created.text

        def ended() -> dict[str, Any] | None:
            batch: dict[str, Any] = http.get(f"/v1/batches/{created.json()['id']}").json()
            return batch if batch["status"] in ("completed", "failed") else None

        done = until(ended, "the batch ended", WINDOW_S * 4 + 120, poll_s=0.5)
        assert done["status"] == "completed", done
        output = http.get(f"/v1/files/{done['output_file_id']}/content").text
    outputs = sorted(json.loads(x)["custom_id"] for x in output.splitlines())
    assert outputs == sorted(f"r{i}" for i in range(6))
    assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    with stack.database.session() as session:
        jobs = list(session.exec(select(Job).where(Job.batch_id == done["id"])))
    # The lines cost more than one window holds (each is charged as at submission) ...
    assert sum(job_cost(j.payload) for j in jobs) > per_minute
    # ... so the last one started only once the window had moved on: a lower bound.
    first = min(j.created_at for j in jobs)
    last = max(j.started_at for j in jobs if j.started_at is not None)
    assert (last - first).total_seconds() >= WINDOW_S - 1


@pytest.mark.postgres_only  # the command line's surface, the same on any database
def test_cli_sets_and_shows_a_policy(stack: Stack) -> None:
    who = tenant()
    out = llmos("--tenant", who, "tenant", "set", "--weight", "3", "--max-queued", "10",
                "--tokens-per-minute", "5000", "--max-priority", "interactive", "--json",
                env=stack.env)
    assert out.returncode == 0, out.stderr
    set_ = json.loads(out.stdout)
    shown = llmos("--tenant", who, "tenant", "show", "--json", env=stack.env)
    assert json.loads(shown.stdout) == set_
    assert (set_["weight"], set_["max_queued"], set_["tokens_per_minute"],
            set_["max_priority"], set_["max_running"]) == (3, 10, 5000, 1, None)
    listed = json.loads(llmos("tenant", "list", "--json", env=stack.env).stdout)
    assert [p for p in listed if p["tenant"] == who] == [set_]

    assert_one_line_error(llmos("--tenant", who, "tenant", "set", "--max-queued", "-2",
                                env=stack.env), "max_queued", "greater than or equal to 0")
    assert_one_line_error(llmos("--tenant", who, "tenant", "set", "--max-priority", "soon",
                                env=stack.env), "max_priority", "soon")
    cleared = llmos("--tenant", who, "tenant", "set", "--clear-max-queued", "--json",
                    env=stack.env)
    assert json.loads(cleared.stdout)["max_queued"] is None
    assert json.loads(cleared.stdout)["weight"] == 3

    # A refusal in the CLI: one clear line naming the quota, a non-zero exit.
    llmos("--tenant", who, "tenant", "set", "--max-queued", "0", env=stack.env)
    refused = llmos("--tenant", who, "submit", "x", "--model", "echo", env=stack.env)
    assert_one_line_error(refused, "max_queued")
    assert stack.client(who).jobs() == []
