"""OpenAI-compatible batches through the official SDK, on the real stack."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.api_server import ApiServer, idle_model, tenant
from tests.support.waiting import until


def sdk(api: ApiServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0, timeout=30)


def line(custom_id: str, text: str, model: str = "echo", max_tokens: int = 2) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": text}]}})


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 90
             ) -> openai.types.Batch:
    def reached() -> openai.types.Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return until(reached, f"batch {batch_id} reached one of {sorted(statuses)}", timeout_s,
                 poll_s=0.2)


@pytest.mark.brokers
def test_a_batch_with_broken_lines_runs_the_valid_ones(api: ApiServer) -> None:
    client = sdk(api, api.key(tenant()))
    lines = [
        line("a", "first request"),
        "{not json",
        line("b", "second request", max_tokens=3),
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
        line("a", "duplicate id"),
        line("c", "wrong model", model="no-such-model"),
        json.dumps({"custom_id": "d", "method": "GET", "url": "/v1/chat/completions",
                    "body": {}}),
        line("e", "third request", max_tokens=1),
    ]
    uploaded = client.files.create(file=("in.jsonl", "\n".join(lines).encode()),
                                   purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": "test"})
    assert batch.status == "validating" and batch.metadata == {"run": "test"}
    done = wait_for(client, batch.id, {"completed", "failed"})
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (8, 3, 5)
    assert done.output_file_id and done.error_file_id
    outputs = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in outputs] == ["a", "b", "e"]
    assert [o["response"]["body"]["choices"][0]["message"]["content"] for o in outputs] == [
        "ok ok", "ok ok ok", "ok"]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in outputs)
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    by_line = {e["error"]["line"]: e["error"]["code"] for e in errors}
    assert by_line == {2: "invalid_json", 4: "missing_custom_id", 5: "duplicate_custom_id",
                       6: "invalid_body", 7: "invalid_method"}
    assert "no-such-model" in next(e for e in errors if e["error"]["line"] == 6)["error"][
        "message"]
    with api.http(api.key(tenant())) as http:  # another tenant sees none of it
        assert http.get(f"/v1/batches/{batch.id}").status_code == 404
        assert http.get(f"/v1/files/{uploaded.id}/content").status_code == 404
    listed = client.batches.list()
    assert batch.id in [b.id for b in listed.data]


def test_batch_jobs_run_at_batch_priority(api: ApiServer) -> None:
    key = api.key(tenant())
    client = sdk(api, key)
    uploaded = client.files.create(file=("p.jsonl", line("only", "hello").encode()),
                                   purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(client, batch.id, {"completed"})
    with api.http(key) as http:
        jobs = http.get("/v1/jobs", params={"limit": 5}).json()["data"]
    [job] = [j for j in jobs if j["batch_id"] == batch.id]
    assert job["priority"] == 8 and job["custom_id"] == "only"


def test_cancelling_a_batch_stops_its_queued_requests(api: ApiServer) -> None:
    key = api.key(tenant())
    client = sdk(api, key)
    model = idle_model(api)  # no worker serves it: everything stays queued
    body = "\n".join(line(f"r{i}", "wait", model=model) for i in range(5))
    uploaded = client.files.create(file=("c.jsonl", body.encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(client, batch.id, {"in_progress"})
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_for(client, batch.id, {"cancelled"})
    assert done.request_counts is not None and done.request_counts.failed == 5
    assert done.error_file_id is not None and done.output_file_id is None
    errors = client.files.content(done.error_file_id).text.splitlines()
    assert all(json.loads(e)["error"]["code"] == "job_cancelled" for e in errors)


def test_files_over_the_limits_are_refused(api: ApiServer) -> None:
    client = sdk(api, api.key(tenant()))
    try:
        client.files.create(file=("x.jsonl", b"x"), purpose="fine-tune")
    except openai.BadRequestError as exc:
        assert "purpose 'fine-tune' is not supported" in str(exc)
    else:
        raise AssertionError("a fine-tune upload was accepted")
    empty = client.files.create(file=("e.jsonl", b"\n\n"), purpose="batch")
    try:
        client.batches.create(input_file_id=empty.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    except openai.BadRequestError as exc:
        assert "holds no request" in str(exc)
    else:
        raise AssertionError("an empty batch was accepted")


def test_a_batch_past_its_completion_window_expires(api: ApiServer) -> None:
    key = api.key(tenant())
    client = sdk(api, key)
    model = idle_model(api)  # nothing serves it: the requests wait until the window closes
    body = "\n".join(line(f"x{i}", "too late", model=model) for i in range(3))
    uploaded = client.files.create(file=("x.jsonl", body.encode()), purpose="batch")
    with api.http(key) as http:
        bad = http.post("/v1/batches", json={"input_file_id": uploaded.id,
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "tomorrow"})
        assert bad.status_code == 400 and "completion_window" in bad.text
        created = http.post("/v1/batches", json={"input_file_id": uploaded.id,
                                                 "endpoint": "/v1/chat/completions",
                                                 "completion_window": "2s"}).json()
    assert created["expires_at"] == created["created_at"] + 2
    done = wait_for(client, created["id"], {"expired"}, timeout_s=60)
    assert done.expired_at is not None and done.output_file_id is None
    assert done.request_counts is not None and done.request_counts.failed == 3
    assert done.error_file_id is not None
    errors = client.files.content(done.error_file_id).text.splitlines()
    assert sorted(json.loads(e)["custom_id"] for e in errors) == ["x0", "x1", "x2"]
