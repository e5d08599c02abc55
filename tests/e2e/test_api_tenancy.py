"""Every route of the app, called with a tenant key on another tenant's ids, with a
tenant key on operator routes, and with an operator key: a tenant changes and learns
nothing outside its tenant. The table below must name every route the app serves, so
a new route cannot skip this test."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.support.api_server import ApiServer, idle_model, tenant
from tests.support.cli import llmos

# How a route is checked: "operator" (shared things: a tenant key gets 403), "owned"
# (takes another tenant's id: 404), "collection" (lists or creates in the caller's own
# tenant: nothing of the other tenant's shows).
OPERATOR, OWNED, COLLECTION = "operator", "owned", "collection"

ROUTES: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] = {
    ("GET", "/v1/jobs"): (COLLECTION, None),
    ("POST", "/v1/jobs"): (COLLECTION, {"model": "{idle}", "prompt": "mine", "max_tokens": 2}),
    ("GET", "/v1/jobs/{job_id}"): (OWNED, None),
    ("POST", "/v1/tasks/summarise"): (COLLECTION, {"model": "{idle}", "text": "mine"}),
    ("POST", "/v1/tasks/translate"): (COLLECTION, {"model": "{idle}", "text": "mine",
                                                   "target_language": "fr"}),
    ("POST", "/v1/tasks/answer"): (COLLECTION, {"model": "{idle}", "question": "mine?",
                                                "context": ["mine"]}),
    ("POST", "/v1/tasks/classify"): (COLLECTION, {"model": "{idle}", "text": "mine",
                                                  "labels": ["a", "b"]}),
    ("POST", "/v1/tasks/extract"): (COLLECTION, {"model": "{idle}", "text": "mine",
                                                 "json_schema": {"type": "object"}}),
    ("POST", "/v1/jobs/{job_id}/cancel"): (OWNED, None),
    ("GET", "/v1/jobs/{job_id}/events"): (OWNED, None),
    ("GET", "/v1/mindspaces"): (COLLECTION, None),
    ("POST", "/v1/mindspaces"): (COLLECTION, {"model": "echo"}),
    ("GET", "/v1/mindspaces/{mindspace_id}"): (OWNED, None),
    ("PATCH", "/v1/mindspaces/{mindspace_id}"): (OWNED, {"persona": "hijacked"}),
    ("DELETE", "/v1/mindspaces/{mindspace_id}"): (OWNED, None),
    ("POST", "/v1/mindspaces/{mindspace_id}/turns"): (OWNED, {"message": "hi"}),
    ("POST", "/v1/mindspaces/{mindspace_id}/snapshots"): (OWNED, {"name": "x"}),
    ("GET", "/v1/mindspaces/{mindspace_id}/snapshots"): (OWNED, None),
    ("GET", "/v1/mindspaces/{mindspace_id}/usage"): (OWNED, None),
    ("POST", "/v1/mindspaces/snapshots/{snapshot_id}/restore"): (OWNED, None),
    ("POST", "/v1/mindspaces/{mindspace_id}/fork"): (OWNED, None),
    ("POST", "/v1/mindspaces/{mindspace_id}/knowledge"): (OWNED, {"title": "t", "text": "x"}),
    ("GET", "/v1/mindspaces/{mindspace_id}/knowledge"): (OWNED, None),
    ("DELETE", "/v1/mindspaces/{mindspace_id}/knowledge/{document_id}"): (OWNED, None),
    ("GET", "/v1/models"): (COLLECTION, None),
    ("POST", "/v1/models"): (OPERATOR, {"name": "echo", "path": "/etc", "engine": "noop"}),
    ("POST", "/v1/models/{name}/load"): (OPERATOR, None),
    ("POST", "/v1/models/{name}/unload"): (OPERATOR, None),
    ("POST", "/v1/models/{name}/warmup"): (OPERATOR, None),
    ("GET", "/v1/models/{name}/versions"): (OPERATOR, None),
    ("PUT", "/v1/models/{name}/deployment"): (OPERATOR, {"replicas": 1}),
    ("GET", "/v1/models/{name}/deployment"): (OPERATOR, None),
    ("POST", "/v1/models/{name}/update"): (OPERATOR, {"path": "/etc"}),
    ("POST", "/v1/models/{name}/rollback"): (OPERATOR, None),
    ("GET", "/v1/workers"): (OPERATOR, None),
    ("POST", "/v1/chat/completions"): (COLLECTION, {
        "model": "echo", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/v1/completions"): (COLLECTION, {"model": "echo", "max_tokens": 2, "prompt": "x"}),
    ("GET", "/v1/keys"): (COLLECTION, None),
    ("POST", "/v1/keys"): (COLLECTION, {"name": "mine"}),
    ("DELETE", "/v1/keys/{key_id}"): (OWNED, None),
    ("POST", "/v1/files"): (COLLECTION, None),  # multipart: sent below
    ("GET", "/v1/files/{file_id}"): (OWNED, None),
    ("GET", "/v1/files/{file_id}/content"): (OWNED, None),
    ("POST", "/v1/batches"): (OWNED, {"input_file_id": "{file_id}",
                                      "endpoint": "/v1/chat/completions",
                                      "completion_window": "24h"}),
    ("GET", "/v1/batches"): (COLLECTION, None),
    ("GET", "/v1/batches/{batch_id}"): (OWNED, None),
    ("POST", "/v1/batches/{batch_id}/cancel"): (OWNED, None),
    ("GET", "/v1/webhooks/secret"): (COLLECTION, None),
    ("POST", "/v1/webhooks/secret/rotate"): (COLLECTION, None),
    ("GET", "/v1/webhooks/deliveries"): (COLLECTION, None),
    ("POST", "/v1/embeddings"): (COLLECTION, {"model": "all-MiniLM-L6-v2", "input": "x"}),
    ("GET", "/v1/retention/{tenant}"): (OWNED, None),
    ("PUT", "/v1/retention/{tenant}"): (OPERATOR, {"jobs_days": 1}),
    ("GET", "/v1/tenants/{tenant}/filters"): (OPERATOR, None),
    ("PUT", "/v1/tenants/{tenant}/filters"): (OPERATOR, {"block": []}),
    ("POST", "/v1/tenants/{tenant}/filters/test"): (OPERATOR, {"text": "x"}),
    ("GET", "/v1/tenants/{tenant}/policy"): (OPERATOR, None),
    ("PUT", "/v1/tenants/{tenant}/policy"): (OPERATOR, {"max_queued": 0}),
    ("DELETE", "/v1/tenants/{tenant}/policy"): (OPERATOR, None),
}


def _owner_objects(api: ApiServer, http: httpx.Client, secret_text: str) -> dict[str, str]:
    """One object of every kind in the owner's tenant; their ids by path parameter."""
    idle = idle_model(api)
    job = http.post("/v1/jobs", json={"model": idle, "prompt": secret_text}).json()
    ms = http.post("/v1/mindspaces", json={"model": "echo", "persona": secret_text}).json()
    snap = http.post(f"/v1/mindspaces/{ms['id']}/snapshots", json={}).json()
    doc = http.post(f"/v1/mindspaces/{ms['id']}/knowledge",
                    json={"title": secret_text, "text": secret_text}).json()
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": idle, "max_tokens": 2,
                                "messages": [{"role": "user", "content": secret_text}]}})
    file = http.post("/v1/files", files={"file": ("a.jsonl", line.encode())},
                     data={"purpose": "batch"}).json()
    batch = http.post("/v1/batches", json={"input_file_id": file["id"],
                                           "endpoint": "/v1/chat/completions",
                                           "completion_window": "24h"}).json()
    [key] = http.get("/v1/keys").json()["data"]
    return {"job_id": job["id"], "mindspace_id": ms["id"], "snapshot_id": snap["id"],
            "document_id": doc["id"], "file_id": file["id"], "batch_id": batch["id"],
            "key_id": key["id"], "name": "echo", "idle": idle, "tenant": key["tenant"]}


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


def _call(http: httpx.Client, method: str, template: str, body: dict[str, Any] | None,
          ids: dict[str, str]) -> httpx.Response:
    path = template.format(**ids)
    if (method, template) == ("POST", "/v1/files"):
        return http.post(path, files={"file": ("b.jsonl", b"{}\n")}, data={"purpose": "batch"})
    return http.request(method, path, json=_fill(body, ids))


def test_a_tenant_changes_and_learns_nothing_outside_its_tenant(api: ApiServer) -> None:
    owner, other = tenant(), tenant()
    secret_text = f"owner-secret-{uuid.uuid4().hex}"
    with api.http(api.key(owner)) as mine:
        ids = _owner_objects(api, mine, secret_text)
        owner_secret = mine.get("/v1/webhooks/secret").json()
        with api.http() as anonymous:
            spec = anonymous.get("/openapi.json").json()
        served = {(m.upper(), p) for p, ops in spec["paths"].items() if p != "/healthz"
                  for m in ops}
        assert served == set(ROUTES), served ^ set(ROUTES)

        with api.http(api.key(other)) as theirs:
            # With the wrong tenant's ids, in an order that would destroy things if it could.
            for (method, template), (kind, body) in ROUTES.items():
                response = _call(theirs, method, template, body, ids)
                where = (method, template, response.status_code, response.text[:300])
                assert secret_text not in response.text, where
                if kind == OPERATOR:
                    assert response.status_code == 403, where
                    assert "operator action" in response.json()["error"]["message"], where
                elif kind == OWNED:
                    assert response.status_code in (400, 404), where
                    if response.status_code == 400:  # the batch: the owner's file is not found
                        assert ids["file_id"] in response.text and "not found" in response.text
                else:
                    assert response.status_code < 500, where
                    assert not any(v in response.text for k, v in ids.items()
                                   if k not in ("name", "idle", "tenant")), where
            # Naming the owner's tenant in the operator header does not help a tenant key.
            assert theirs.get(f"/v1/jobs/{ids['job_id']}",
                              headers={"X-Llmos-Tenant": owner}).status_code == 403

        # The owner's things are as they were.
        job = mine.get(f"/v1/jobs/{ids['job_id']}").json()
        assert job["status"] == "queued"
        ms = mine.get(f"/v1/mindspaces/{ids['mindspace_id']}").json()
        assert ms["persona"] == secret_text
        assert [d["id"] for d in mine.get(f"/v1/mindspaces/{ids['mindspace_id']}/knowledge")
                .json()["data"]] == [ids["document_id"]]
        assert mine.get(f"/v1/batches/{ids['batch_id']}").json()["status"] != "cancelled"
        assert mine.get("/v1/webhooks/secret").json() == owner_secret
        assert mine.get("/v1/keys").json()["data"][0]["revoked_at"] is None
        mine.close()


def test_an_operator_key_reaches_shared_routes_and_acts_for_a_named_tenant(
        api: ApiServer) -> None:
    owner = tenant()
    with api.http(api.key(owner)) as mine:
        job = mine.post("/v1/jobs", json={"model": idle_model(api), "prompt": "x"}).json()
    with api.http(api.operator_key()) as ops:
        assert ops.get("/v1/workers").status_code == 200
        assert ops.get(f"/v1/jobs/{job['id']}").status_code == 404  # acts for the default
        as_owner = {"X-Llmos-Tenant": owner}
        assert ops.get(f"/v1/jobs/{job['id']}", headers=as_owner).status_code == 200
        owner_keys = ops.get("/v1/keys", params={"tenant": owner}).json()["data"]
        assert [k["tenant"] for k in owner_keys] == [owner]
        issued = ops.post("/v1/keys", json={"tenant": owner, "scopes": ["jobs:read"]}).json()
        assert issued["tenant"] == owner
        assert ops.delete(f"/v1/keys/{issued['id']}").json()["revoked_at"] is not None
        operator = ops.post("/v1/keys", json={"operator": True, "scopes": ["models:read"]})
        assert operator.status_code == 201 and operator.json()["tenant"] is None
    with api.http(api.key(owner, "admin")) as admin:
        refused = admin.post("/v1/keys", json={"operator": True})
        assert refused.status_code == 403
        assert admin.post("/v1/keys", json={"tenant": "elsewhere"}).status_code == 403


def test_model_paths_must_lie_under_the_model_roots(api: ApiServer) -> None:
    root = api.stack.data_dir
    outside = root.parent / f"outside-{uuid.uuid4().hex[:6]}"
    outside.mkdir()
    (root / "link-out").symlink_to(outside)
    with api.http(api.operator_key()) as ops:
        answers = []
        for path in ["/etc", "/nonexistent-dir", str(outside), str(root / "link-out"),
                     str(root / ".." / outside.name), "relative/model"]:
            response = ops.post("/v1/models", json={"name": "x-" + uuid.uuid4().hex[:6],
                                                    "path": path, "engine": "transformers"})
            assert response.status_code == 400, (path, response.text)
            message = response.json()["error"]["message"]
            assert "model root" in message and "LLMOS_MODEL_ROOTS" in message
            answers.append(message.replace(repr(path), "PATH"))
        # Existing or not, directory or not: outside the roots the answer is the same.
        assert len(set(answers[:5])) == 1, answers


def test_llmos_key_create_operator_issues_a_key_without_a_tenant(api: ApiServer) -> None:
    out = llmos("key", "create", "--operator", "--scopes", "admin", "--json", env=api.stack.env)
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    assert issued["tenant"] is None
    with api.http(issued["key"]) as ops:
        assert ops.get("/v1/workers").status_code == 200
    both = llmos("key", "create", "--operator", "--tenant", "acme", env=api.stack.env)
    assert both.returncode != 0 and "operator key has no tenant" in both.stderr


def test_a_tenant_does_not_see_which_worker_holds_its_mindspace(api: ApiServer) -> None:
    owner = tenant()
    with api.http(api.key(owner)) as http:
        ms = http.post("/v1/mindspaces", json={"model": "echo"}).json()
        turn = http.post(f"/v1/mindspaces/{ms['id']}/turns", params={"wait": "true"},
                         json={"message": "hi", "max_tokens": 2})
        assert turn.status_code == 200 and "worker" not in turn.json()
        for view in (http.get(f"/v1/mindspaces/{ms['id']}").json(),
                     http.post(f"/v1/mindspaces/{ms['id']}/fork").json(),
                     *http.get("/v1/mindspaces").json()["data"]):
            assert "worker" not in view and view["tenant"] == owner
    with api.http(api.operator_key()) as ops:
        seen = ops.get(f"/v1/mindspaces/{ms['id']}", headers={"X-Llmos-Tenant": owner}).json()
        assert seen["worker"] == f"noop-{api.stack.name}@test"
