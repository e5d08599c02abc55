"""Idempotency-Key on the HTTP API (`llmos api` for real) and idempotency_key on the
Python client: a repeat returns the first request's object and creates nothing."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import col

from llmos_jobs.db.batch_tables import StoredFile
from llmos_jobs.errors import IdempotencyMismatch
from tests.support.api_server import ApiServer, audit, idle_model, tenant
from tests.support.cli import llmos


def _jobs(http: httpx.Client) -> list[str]:
    listed = http.get("/v1/jobs", params={"limit": 1000}).raise_for_status().json()
    return [job["id"] for job in listed["data"]]


def test_a_retried_post_returns_the_first_job(api: ApiServer) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"model": "echo", "prompt": "one two", "max_tokens": 2}
    owner = tenant()
    with api.http(api.key(owner)) as http:
        first = http.post("/v1/jobs", json=body, headers=key)
        # The same request, its JSON spelled otherwise: the same request.
        again = http.post("/v1/jobs", content=b'{"max_tokens":2, "prompt":"one two",'
                                               b'"model":"echo"}',
                          headers={**key, "Content-Type": "application/json"})
        assert first.status_code == 202, first.text
        assert again.status_code == 202 and again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert _jobs(http) == [first.json()["id"]]
        # Without a key every POST is a new job.
        other = http.post("/v1/jobs", json=body).raise_for_status().json()
        assert sorted(_jobs(http)) == sorted([first.json()["id"], other["id"]])
    # The replay is audited like the call it repeats, naming the job it returned.
    created = [(r["action"], r["resource_id"], r["status_code"])
               for r in reversed(audit(api, owner)) if r["action"] == "jobs.create"]
    assert created == [("jobs.create", first.json()["id"], 202)] * 2 + [
        ("jobs.create", other["id"], 202)]


def test_the_key_with_another_body_is_refused(api: ApiServer) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    with api.http(api.key(tenant())) as http:
        first = http.post("/v1/jobs", headers=key,
                          json={"model": "echo", "prompt": "a", "max_tokens": 1})
        changed = http.post("/v1/jobs", headers=key,
                            json={"model": "echo", "prompt": "b", "max_tokens": 1})
        assert first.status_code == 202
        assert changed.status_code == 422, changed.text
        error = changed.json()["error"]
        assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
        assert "different request" in error["message"] and key["Idempotency-Key"] in \
            error["message"]
        assert _jobs(http) == [first.json()["id"]]
        bad = http.post("/v1/jobs", headers={"Idempotency-Key": "has space"},
                        json={"model": "echo", "prompt": "a", "max_tokens": 1})
        assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]["message"]
        assert _jobs(http) == [first.json()["id"]]


def test_keys_are_per_tenant_and_a_replay_needs_the_route_s_scope(api: ApiServer) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"model": "echo", "prompt": "x", "max_tokens": 1}
    owner, stranger = tenant(), tenant()
    with api.http(api.key(owner)) as http, api.http(api.key(stranger)) as other:
        mine = http.post("/v1/jobs", json=body, headers=key).json()
        theirs = other.post("/v1/jobs", json=body, headers=key)
        assert theirs.status_code == 202 and theirs.json()["id"] != mine["id"]
        assert "Idempotent-Replayed" not in theirs.headers
    with api.http(api.key(owner, "jobs:read")) as reader:
        refused = reader.post("/v1/jobs", json=body, headers=key)
        assert refused.status_code == 403, refused.text


def test_concurrent_posts_with_one_key_create_one_job(api: ApiServer) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    # A model no worker serves: the job stays queued, so the answers are comparable.
    body = {"model": idle_model(api), "prompt": "race", "max_tokens": 1}
    answers: list[httpx.Response] = []
    start = threading.Barrier(8)
    with api.http(api.key(tenant())) as http:
        def post() -> None:
            start.wait()
            answers.append(http.post("/v1/jobs", json=body, headers=key))

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1
        assert _jobs(http) == list(ids)
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7


def test_a_chat_completion_is_answered_once(api: ApiServer) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body: dict[str, Any] = {"model": "echo", "max_tokens": 2,
                            "messages": [{"role": "user", "content": "hello there"}]}
    with api.http(api.key(tenant())) as http:
        first = http.post("/v1/chat/completions", json=body, headers=key)
        again = http.post("/v1/chat/completions", json=body, headers=key)
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        assert _jobs(http) == [first.json()["id"].removeprefix("chatcmpl-")]


def test_the_client_returns_the_first_job_for_a_repeated_key(api: ApiServer) -> None:
    client = api.stack.client(tenant())
    key = f"k-{uuid.uuid4()}"
    first = client.generate(model="echo", prompt="p q", max_tokens=2, idempotency_key=key)
    again = client.generate(model="echo", prompt="p q", max_tokens=2, idempotency_key=key)
    assert again.id == first.id
    with pytest.raises(IdempotencyMismatch, match="different request"):
        client.generate(model="echo", prompt="p q", max_tokens=3, idempotency_key=key)
    assert [j.id for j in client.jobs(limit=1000)] == [first.id]


def test_the_cli_submits_once_per_key(api: ApiServer) -> None:
    env = {**api.stack.env, "LLMOS_TENANT": tenant()}
    key = f"k-{uuid.uuid4()}"
    runs = [llmos("submit", "one two", "--model", "echo", "--idempotency-key", key, "--json",
                  env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    first, again = (json.loads(r.stdout) for r in runs)
    assert again["id"] == first["id"]
    changed = llmos("submit", "three", "--model", "echo", "--idempotency-key", key, env=env)
    assert changed.returncode == 1 and "different request" in changed.stderr
    listed = llmos("job", "list", "--json", env=env)
    assert [j["id"] for j in json.loads(listed.stdout)] == [first["id"]]


def test_a_batch_submitted_twice_with_one_key_is_one_batch(api: ApiServer,
                                                           tmp_path: Path) -> None:
    env = {**api.stack.env, "LLMOS_TENANT": tenant()}
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "echo", "max_tokens": 1,
                                "messages": [{"role": "user", "content": "q"}]}})
    path = tmp_path / "b.jsonl"
    path.write_text(line)
    key = f"k-{uuid.uuid4()}"
    runs = [llmos("batch", "submit", str(path), "--idempotency-key", key, "--json", env=env)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    first, again = (json.loads(r.stdout) for r in runs)
    assert again["id"] == first["id"] and again["input_file_id"] == first["input_file_id"]
    listed = json.loads(llmos("batch", "list", "--json", env=env).stdout)
    assert [b["id"] for b in listed["data"]] == [first["id"]]
    path.write_text(line + "\n" + line.replace('"a"', '"b"'))
    changed = llmos("batch", "submit", str(path), "--idempotency-key", key, env=env)
    assert changed.returncode == 1 and "different request" in changed.stderr
    with api.stack.database.session() as session:
        files = session.execute(select(func.count()).select_from(StoredFile).where(
            col(StoredFile.tenant) == env["LLMOS_TENANT"],
            col(StoredFile.purpose) == "batch")).scalar_one()
    assert files == 1  # one upload (the batch's output is another); the refused run's none
