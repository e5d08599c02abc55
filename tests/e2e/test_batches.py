"""OpenAI-compatible batches through the official SDK, on the real stack."""

from __future__ import annotations

import json
from typing import Any, get_args

import httpx
import openai
import pytest
from openai.types import Batch, FileObject
from openai.types.batch_error import BatchError

from tests.support.api_server import REQUEST_HANG_GUARD_S, ApiServer, idle_model, tenant
from tests.support.waiting import HANG_GUARD_S, until


def sdk(api: ApiServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0,
                         timeout=REQUEST_HANG_GUARD_S)


def line(custom_id: str, text: str, model: str = "echo", max_tokens: int = 2) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": text}]}})


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set[str],
             timeout_s: float = HANG_GUARD_S) -> openai.types.Batch:
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
    # A batch line is a job: it records the version that served it (echo has one).
    assert (job["model"], job["model_version"]) == ("echo", 1)


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
    # On its way to cancelled: the control process may be finalising it already.
    assert cancelled.status in ("cancelling", "finalizing", "cancelled")
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
    done = wait_for(client, created["id"], {"expired"})
    assert done.expired_at is not None and done.output_file_id is None
    assert done.request_counts is not None and done.request_counts.failed == 3
    assert done.error_file_id is not None
    errors = client.files.content(done.error_file_id).text.splitlines()
    assert sorted(json.loads(e)["custom_id"] for e in errors) == ["x0", "x1", "x2"]


def _sdk_parse(model: type[Batch] | type[FileObject], answer: dict[str, Any]
               ) -> Batch | FileObject:
    """``answer`` parsed by the SDK's own type. Its types keep fields they do not know, so
    the answer must also hold no field the type lacks: a misspelt field would pass."""
    assert set(answer) <= set(model.model_fields), set(answer) - set(model.model_fields)
    return model.model_validate(answer)


def _upload(http: httpx.Client, name: str, content: bytes) -> FileObject:
    answer = http.post("/v1/files", files={"file": (name, content)},
                       data={"purpose": "batch"}).raise_for_status().json()
    stored = _sdk_parse(FileObject, answer)
    assert isinstance(stored, FileObject)
    assert (stored.object, stored.filename, stored.bytes, stored.purpose, stored.status) == (
        "file", name, len(content), "batch", "processed")
    assert http.get(f"/v1/files/{stored.id}").raise_for_status().json() == answer
    return stored


def _batch(http: httpx.Client, batch_id: str) -> Batch:
    batch = _sdk_parse(Batch, http.get(f"/v1/batches/{batch_id}").raise_for_status().json())
    assert isinstance(batch, Batch)
    return batch


def test_batch_and_file_answers_are_the_sdks_own_types(api: ApiServer) -> None:
    key = api.key(tenant())
    client = sdk(api, key)
    content = "\n".join([line("a", "one two"), "{not json"]).encode()
    with api.http(key) as http:
        stored = _upload(http, "in.jsonl", content)
        answer = http.post("/v1/batches", json={
            "input_file_id": stored.id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"run": "sdk"}}).raise_for_status().json()
        created = _sdk_parse(Batch, answer)
        assert isinstance(created, Batch)
        assert (created.object, created.input_file_id, created.endpoint,
                created.completion_window, created.status, created.metadata, created.errors
                ) == ("batch", stored.id, "/v1/chat/completions", "24h", "validating",
                      {"run": "sdk"}, None)
        assert created.expires_at == created.created_at + 24 * 3600
        wait_for(client, created.id, {"completed", "failed"})
        done = _batch(http, created.id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed,
                done.request_counts.failed) == (2, 1, 1)
        assert done.in_progress_at is not None and done.completed_at is not None
        assert done.failed_at is None and done.cancelled_at is None and done.errors is None
        assert done.output_file_id is not None and done.error_file_id is not None
        output = _sdk_parse(FileObject, http.get(f"/v1/files/{done.output_file_id}").json())
        assert isinstance(output, FileObject)
        assert output.purpose == "batch_output" and output.bytes == len(
            http.get(f"/v1/files/{done.output_file_id}/content").content)
        listed = http.get("/v1/batches").raise_for_status().json()
    assert {k: v for k, v in listed.items() if k != "data"} == {
        "object": "list", "has_more": False, "first_id": done.id, "last_id": done.id}
    assert [_sdk_parse(Batch, b) for b in listed["data"]] == [done]


def test_a_batch_without_a_valid_line_fails_with_the_sdks_error_list(api: ApiServer) -> None:
    key = api.key(tenant())
    with api.http(key) as http:
        stored = _upload(http, "bad.jsonl", b"{not json\n")
        created = http.post("/v1/batches", json={
            "input_file_id": stored.id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}).raise_for_status().json()
        wait_for(sdk(api, key), created["id"], {"failed"})
        failed = _batch(http, created["id"])
        errors = http.get(f"/v1/batches/{created['id']}").json()["errors"]
    assert failed.errors is not None and failed.errors.object == "list"
    assert all(set(e) <= set(BatchError.model_fields) for e in errors["data"])
    assert [(e.code, e.message) for e in failed.errors.data or []] == [
        ("no_valid_lines", "no line of the file is a valid request")]
    assert failed.failed_at is not None and failed.completed_at is None
    assert failed.request_counts is not None
    assert (failed.request_counts.total, failed.request_counts.completed,
            failed.request_counts.failed) == (1, 0, 1)
    assert failed.error_file_id is not None and failed.output_file_id is None


def test_the_openapi_schema_declares_the_batch_and_file_objects(api: ApiServer) -> None:
    with api.http() as http:
        spec = http.get("/openapi.json").raise_for_status().json()
    schemas = spec["components"]["schemas"]

    def answer(path: str, method: str) -> dict[str, Any]:
        body: dict[str, Any] = spec["paths"][path][method]["responses"]["200"]["content"][
            "application/json"]["schema"]
        return body

    for path, method in [("/v1/batches", "post"), ("/v1/batches/{batch_id}", "get"),
                         ("/v1/batches/{batch_id}/cancel", "post")]:
        assert answer(path, method) == {"$ref": "#/components/schemas/BatchObject"}
    for path, method in [("/v1/files", "post"), ("/v1/files/{file_id}", "get")]:
        assert answer(path, method) == {"$ref": "#/components/schemas/FileObject"}
    page = schemas[answer("/v1/batches", "get")["$ref"].rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"object", "data", "has_more", "first_id", "last_id"}
    assert page["properties"]["data"]["items"] == {"$ref": "#/components/schemas/BatchObject"}
    # What the schema promises is what the SDK needs: every field the SDK requires is
    # required here, every field named here is one the SDK knows, the statuses are its own.
    for ours, theirs in ((schemas["BatchObject"], Batch), (schemas["FileObject"], FileObject)):
        assert set(ours["properties"]) <= set(theirs.model_fields)
        assert {name for name, field in theirs.model_fields.items() if field.is_required()
                } <= set(ours["required"])
    assert schemas["BatchObject"]["properties"]["request_counts"] == {
        "$ref": "#/components/schemas/BatchRequestCounts"}
    status = schemas["BatchObject"]["properties"]["status"]
    if "$ref" in status:  # the enum is a schema of its own
        status = schemas[status["$ref"].rsplit("/", 1)[1]]
    assert status["enum"] == list(get_args(Batch.model_fields["status"].annotation))
    assert set(schemas["FileObject"]["properties"]["purpose"]["enum"]) <= set(
        get_args(FileObject.model_fields["purpose"].annotation))
