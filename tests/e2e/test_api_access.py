"""Who may call the HTTP API: keys (401), scopes (403), tenants (404), and the audit
log that records each call, denied ones included."""

from __future__ import annotations

import hashlib
import json
import re
import uuid

from llmos_jobs.db import keys as key_rows
from llmos_jobs.db.session import session_scope
from tests.support.api_server import ApiServer, audit, tenant
from tests.support.cli import llmos

WRONG_KEY = "llmos_" + "x" * 40


def test_every_route_but_health_and_docs_refuses_a_missing_or_wrong_key(api: ApiServer
                                                                        ) -> None:
    with api.http() as http:
        spec = http.get("/openapi.json").json()
        routes = [(method.upper(), re.sub(r"\{[^}]+\}", "some-id", path))
                  for path, operations in spec["paths"].items() if path != "/healthz"
                  for method in operations]
        assert len(routes) >= 15
        for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"},
                        {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic eDp5"}):
            for method, path in routes:
                response = http.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert response.json()["error"]["type"] == "authentication_error"


def test_a_revoked_key_is_refused_from_the_next_call(api: ApiServer) -> None:
    env = api.stack.env
    owner = tenant()
    out = llmos("key", "create", "--tenant", owner, "--scopes", "jobs:read", "--name", "ci",
                "--json", env=env)
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    assert issued["key"].startswith("llmos_") and issued["scopes"] == ["jobs:read"]
    with api.http(issued["key"]) as http:
        assert http.get("/v1/jobs").status_code == 200
        assert llmos("key", "revoke", issued["id"], env=env).returncode == 0
        refused = http.get("/v1/jobs")
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    listed = llmos("key", "list", "--tenant", owner, "--json", env=env)
    [row] = json.loads(listed.stdout)
    assert row["id"] == issued["id"] and row["revoked_at"] is not None
    assert row["prefix"] == issued["key"][:14]
    # Neither the key nor its digest ever leaves again.
    assert issued["key"] not in listed.stdout and "hash" not in listed.stdout


def test_only_the_keys_digest_is_stored(api: ApiServer) -> None:
    key_id, key = api.issue(tenant(), "models:read")
    with session_scope(api.stack.database) as session:
        row = key_rows.get_api_key(session=session, key_id=key_id)
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.prefix == key[:14] and row.scopes == ["models:read"]
    assert all(key not in str(value) for value in row.model_dump().values())
    with api.http(key[:-1] + ("A" if key[-1] != "A" else "B")) as near_miss:
        assert near_miss.get("/v1/models").status_code == 401  # same prefix, other secret


def test_a_key_without_the_scope_is_forbidden(api: ApiServer) -> None:
    with api.http(api.key(tenant(), "jobs:read")) as http:
        assert http.get("/v1/jobs").status_code == 200
        refused = http.post("/v1/jobs", json={"model": "echo", "prompt": "x"})
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert error["type"] == "permission_error"
        assert "jobs.create needs the scope 'jobs:write'" in error["message"]
        for method, path in [("GET", "/v1/workers"), ("GET", "/v1/models"),
                             ("POST", "/v1/models"), ("GET", "/v1/mindspaces/x"),
                             ("POST", "/v1/chat/completions"), ("GET", "/v1/keys")]:
            assert http.request(method, path, json={}).status_code == 403, path
    with api.http(api.key(tenant(), "admin")) as http:  # admin holds every tenant scope
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/jobs").status_code == 200
        assert http.get("/v1/workers").status_code == 403  # shared: an operator's view


def test_another_tenants_ids_answer_not_found(api: ApiServer) -> None:
    owner, other = tenant(), tenant()
    with api.http(api.key(owner)) as mine:
        job = mine.post("/v1/jobs", json={"model": "echo", "prompt": "mine"}).json()
        ms = mine.post("/v1/mindspaces", json={"model": "echo"}).json()
        owner_key_id = mine.get("/v1/keys").json()["data"][0]["id"]
        with api.http(api.key(other)) as theirs:
            for method, path, body in [
                ("GET", f"/v1/jobs/{job['id']}", None),
                ("POST", f"/v1/jobs/{job['id']}/cancel", None),
                ("GET", f"/v1/mindspaces/{ms['id']}", None),
                ("POST", f"/v1/mindspaces/{ms['id']}/turns", {"message": "hi"}),
                ("DELETE", f"/v1/mindspaces/{ms['id']}", None),
                ("DELETE", f"/v1/keys/{owner_key_id}", None),
            ]:
                response = theirs.request(method, path, json=body)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"]["type"] == "not_found_error"
            assert theirs.get("/v1/jobs").json()["data"] == []
        # Nothing of the owner's was touched.
        assert mine.get(f"/v1/mindspaces/{ms['id']}").status_code == 200
        assert mine.get(f"/v1/jobs/{job['id']}").json()["status"] != "cancelled"
        assert mine.get("/v1/jobs").status_code == 200
        mine.close()
        rows = audit(api, other)
        assert {(r["action"], r["outcome"], r["status_code"]) for r in rows} >= {
            ("jobs.read", "denied", 404), ("mindspaces.delete", "denied", 404)}
        assert {r["resource_id"] for r in rows} >= {job["id"], ms["id"]}


def test_keys_over_http_stay_within_the_tenant(api: ApiServer) -> None:
    owner = tenant()
    with api.http(api.key(owner, "admin")) as admin:
        created = admin.post("/v1/keys", json={"name": "reader", "scopes": ["jobs:read"]})
        assert created.status_code == 201, created.text
        reader = created.json()
        assert reader["tenant"] == owner and reader["scopes"] == ["jobs:read"]
        bad = admin.post("/v1/keys", json={"scopes": ["jobs:everything"]})
        assert bad.status_code == 400 and "unknown scope 'jobs:everything'" in bad.text
        listed = admin.get("/v1/keys").json()["data"]
        assert len(listed) == 2 and all("key" not in k for k in listed)
        with api.http(reader["key"]) as http:
            assert http.get("/v1/jobs").status_code == 200
            assert admin.delete(f"/v1/keys/{reader['id']}").json()["revoked_at"] is not None
            assert http.get("/v1/jobs").status_code == 401


def test_audit_rows_record_ok_and_denied_calls(api: ApiServer) -> None:
    owner = tenant()
    key_id, key = api.issue(owner, "jobs:read,jobs:write")
    with api.http(key) as http:
        job = http.post("/v1/jobs", json={"model": "echo", "prompt": "audited"}).json()
        assert http.get("/v1/workers").status_code == 403
    probe = uuid.uuid4().hex
    with api.http() as anonymous:
        assert anonymous.get(f"/v1/jobs/{probe}").status_code == 401
        assert anonymous.get("/healthz").status_code == 200  # not audited
    rows = audit(api, owner)
    assert [(r["action"], r["outcome"], r["status_code"], r["resource_id"]) for r in rows] == [
        ("workers.list", "denied", 403, None), ("jobs.create", "ok", 202, job["id"])]
    assert all(r["key_id"] == key_id and r["tenant"] == owner for r in rows)
    [unknown] = [r for r in audit(api) if r["resource_id"] == probe]
    assert (unknown["tenant"], unknown["key_id"], unknown["action"], unknown["outcome"]) == (
        None, None, "jobs.read", "denied")
    assert unknown["created_at"].endswith("Z") or "+00:00" in unknown["created_at"]
