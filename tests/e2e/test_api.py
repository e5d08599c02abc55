"""The HTTP API served for real (`llmos api`) on real Redis, a real worker, and SQLite
or PostgreSQL: jobs, mindspaces, models, workers, errors."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.support.api_server import API_WAIT_TIMEOUT_S, ApiServer, idle_model, tenant, wait_job


def test_health_and_docs_need_no_key_and_document_the_error_shape(api: ApiServer) -> None:
    with api.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert "swagger" in http.get("/docs").text.lower()
        spec = http.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/mindspaces/{mindspace_id}/turns",
            "/v1/models", "/v1/workers", "/v1/chat/completions", "/v1/keys"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            # Validation errors are answered 400 in the OpenAI shape, never FastAPI's 422.
            assert "422" not in operation["responses"], (method, path)


def test_a_job_submitted_over_http_runs_on_the_worker(api: ApiServer) -> None:
    owner = tenant()
    with api.http(api.key(owner)) as http:
        response = http.post("/v1/jobs", json={"model": "echo", "prompt": "one two three",
                                               "max_tokens": 4, "priority": "batch"})
        assert response.status_code == 202, response.text
        queued = response.json()
        assert queued["status"] == "queued" and queued["priority"] == 8
        assert queued["tenant"] == owner
        done = wait_job(http, queued["id"])
        assert done["status"] == "succeeded", done
        assert done["result"]["text"] == "ok ok ok ok"
        assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0}
        # Where it ran is the operators' business: a tenant key does not see it.
        placement = {"queue", "task_id", "worker", "worker_pid"}
        assert not placement & set(done), done
        listed = http.get("/v1/jobs", params={"status": "succeeded"}).json()
        assert listed["object"] == "list"
        assert [j["id"] for j in listed["data"]] == [queued["id"]]  # this tenant's only
    with api.http(api.operator_key("jobs:read")) as ops:
        seen = ops.get(f"/v1/jobs/{queued['id']}", headers={"X-Llmos-Tenant": owner}).json()
        assert seen["queue"] == "lang.echo" and seen["worker"] == f"noop-{api.stack.name}@test"
        assert seen["task_id"] and seen["worker_pid"] > 0
    assert set(seen) == set(done) | placement
    # The same row, as the Python client of that tenant (and no other) sees it.
    assert api.stack.client(owner).job(queued["id"]).status == "succeeded"
    assert queued["id"] not in [j.id for j in api.stack.client("default").jobs(limit=1000)]


def test_chat_messages_and_numeric_priorities_are_accepted(api: ApiServer) -> None:
    with api.http(api.key(tenant(), "jobs:read,jobs:write")) as http:
        job = http.post("/v1/jobs", json={
            "model": "echo", "messages": [{"role": "user", "content": "a b"}],
            "max_tokens": 2, "priority": 1,
        }).json()
        assert job["priority"] == 1 and job["payload"]["messages"][0]["content"] == "a b"
        assert wait_job(http, job["id"])["result"]["text"] == "ok ok"


def test_priority_zero_is_an_operator_privilege(api: ApiServer) -> None:
    owner = tenant()
    body = {"model": "echo", "prompt": "first", "max_tokens": 2, "priority": 0}
    with api.http(api.key(owner)) as http:
        refused = http.post("/v1/jobs", json=body)
        assert refused.status_code == 403, refused.text
        assert "priority 0 is reserved for operators" in refused.json()["error"]["message"]
        ms = http.post("/v1/mindspaces", json={"model": "echo"}).json()
        turn = http.post(f"/v1/mindspaces/{ms['id']}/turns", json={"message": "hi",
                                                                  "priority": 0})
        assert turn.status_code == 403
        assert http.get("/v1/jobs").json()["data"] == []  # nothing was queued
    with api.http(api.operator_key()) as ops:
        job = ops.post("/v1/jobs", json=body, headers={"X-Llmos-Tenant": owner})
        assert job.status_code == 202 and job.json()["priority"] == 0
        assert job.json()["tenant"] == owner


def test_bad_input_is_400_naming_the_field_and_nothing_is_enqueued(api: ApiServer) -> None:
    cases: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None, str]] = [
        ("POST", "/v1/jobs", {"model": "echo", "prompt": "x", "max_tokens": 0}, None,
         "max_tokens"),
        ("POST", "/v1/jobs", {"model": "echo", "prompt": "x", "priority": "urgent"}, None,
         "priority: unknown priority 'urgent'"),
        ("POST", "/v1/jobs", {"model": "echo"}, None, "exactly one of 'prompt' and 'messages'"),
        ("POST", "/v1/jobs", {"model": "echo", "prompt": "x", "top_k": 3}, None, "top_k"),
        ("POST", "/v1/jobs", {"model": "nope", "prompt": "x"}, None, "'nope' is not registered"),
        ("POST", "/v1/jobs", {"model": "echo", "prompt": "x", "max_tokens": 10_000}, None,
         "does not fit the context"),
        ("GET", "/v1/jobs", None, {"limit": 0}, "query parameter limit"),
        ("GET", "/v1/jobs", None, {"status": "bogus"}, "query parameter status"),
        ("POST", "/v1/mindspaces", {"persona": "p"}, None, "model: Field required"),
    ]
    owner = tenant()
    with api.http(api.key(owner)) as http:
        for method, path, body, params, needle in cases:
            response = http.request(method, path, json=body, params=params)
            assert response.status_code == 400, (path, body, params, response.text)
            error = response.json()["error"]
            assert needle in error["message"], (needle, error)
            assert error["type"] == "invalid_request_error"
        garbled = http.post("/v1/jobs", content=b"{not json",
                            headers={"Content-Type": "application/json"})
        assert garbled.status_code == 400 and "JSON" in garbled.json()["error"]["message"]
        assert http.get("/v1/jobs").json()["data"] == []


def test_cancel_a_queued_job_then_a_second_cancel_conflicts(api: ApiServer) -> None:
    model = idle_model(api)
    with api.http(api.key(tenant())) as http:
        job = http.post("/v1/jobs", json={"model": model, "prompt": "never runs"}).json()
        cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "illegal_transition"
        assert "cancelled job cannot become cancelled" in again.json()["error"]["message"]
        assert http.get(f"/v1/jobs/{uuid.uuid4().hex}").status_code == 404


def test_mindspace_turns_keep_the_history(api: ApiServer) -> None:
    with api.http(api.key(tenant(), "mindspaces:read,mindspaces:write,jobs:read")) as http:
        created = http.post("/v1/mindspaces", json={"model": "echo", "persona": "terse",
                                                    "name": "notes"})
        assert created.status_code == 201, created.text
        ms = created.json()
        assert ms["messages"] == [] and ms["persona"] == "terse"
        turn = http.post(f"/v1/mindspaces/{ms['id']}/turns", params={"wait": "true"},
                         json={"message": "hello there", "max_tokens": 2})
        assert turn.status_code == 200, turn.text
        assert turn.json()["status"] == "succeeded"
        assert turn.json()["result"]["reply"] == "ok ok"
        queued = http.post(f"/v1/mindspaces/{ms['id']}/turns", json={"message": "again"})
        assert queued.status_code == 202 and queued.json()["priority"] == 1
        assert wait_job(http, queued.json()["id"])["status"] == "succeeded"
        shown = http.get(f"/v1/mindspaces/{ms['id']}").json()
        assert [(m["role"], m["content"]) for m in shown["messages"]][:3] == [
            ("user", "hello there"), ("assistant", "ok ok"), ("user", "again")]
        assert len(shown["messages"]) == 4
        assert http.delete(f"/v1/mindspaces/{ms['id']}").status_code == 204
        assert http.get(f"/v1/mindspaces/{ms['id']}").status_code == 404


def test_a_waited_turn_that_times_out_is_504_and_keeps_its_job(
        api_short_wait: ApiServer) -> None:
    api = api_short_wait
    model = idle_model(api)
    with api.http(api.key(tenant())) as http:
        ms = http.post("/v1/mindspaces", json={"model": model}).json()
        started = time.monotonic()
        response = http.post(f"/v1/mindspaces/{ms['id']}/turns", params={"wait": "true"},
                             json={"message": "anyone?"})
        assert response.status_code == 504
        assert time.monotonic() - started >= API_WAIT_TIMEOUT_S
        error = response.json()["error"]
        assert error["code"] == "wait_timeout"
        job_id = error["message"].split()[2]
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        http.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()


def test_models_list_register_load_and_unload(api: ApiServer) -> None:
    name = f"ops-{uuid.uuid4().hex[:6]}"
    worker = f"noop-{api.stack.name}@test"
    with api.http(api.operator_key("models:read,models:admin,jobs:read")) as http:
        registered = http.post("/v1/models", json={
            "name": name, "path": str(api.stack.data_dir / name), "engine": "noop"})
        assert registered.status_code == 201, registered.text
        assert registered.json()["context_length"] > 0
        listed = http.get("/v1/models").json()
        assert {"echo", "broken", name} <= {m["id"] for m in listed["data"]}
        load = http.post(f"/v1/models/{name}/load", json={"worker": worker})
        assert load.status_code == 202 and load.json()["queue"] == f"w.{worker}"
        loaded = wait_job(http, load.json()["id"])
        assert loaded["result"]["loaded"] is True and loaded["result"]["worker"] == worker
        unload = http.post(f"/v1/models/{name}/unload", json={"worker": worker})
        assert wait_job(http, unload.json()["id"])["result"]["loaded"] is False
        missing = http.post("/v1/models/nope/load")
        assert missing.status_code == 400 and "not registered" in missing.text


def test_workers_show_health_and_load(api: ApiServer) -> None:
    with api.http(api.operator_key("admin")) as http:
        workers = http.get("/v1/workers").json()["data"]
    [mine] = [w for w in workers if w["name"] == f"noop-{api.stack.name}@test"]
    assert mine["state"] == "alive" and mine["seconds_since_heartbeat"] < 10
    assert mine["running_jobs"] >= 0 and "rss_mb" in mine["resources"]
    assert "lang.echo" in mine["queues"]
