"""Operator actions from the Python client and the CLI leave audit rows like HTTP
calls do: who (user@host), tenant, action, object, outcome."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from llmos_jobs.client.audit import default_actor
from llmos_jobs.db import audit as audit_rows
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import AuditEventPublic
from llmos_jobs.errors import InvalidRequest, NotFound
from tests.support.cli import llmos
from tests.support.stack import Stack


def rows(stack: Stack, tenant: str) -> list[tuple[Any, ...]]:
    with session_scope(stack.database) as session:
        events = [AuditEventPublic.model_validate(e, from_attributes=True)
                  for e in audit_rows.list_events(session=session, tenant=tenant, limit=100)]
    return [(e.actor, e.action, e.resource_id, e.outcome, e.status_code, e.key_id)
            for e in reversed(events)]


def test_the_python_client_audits_its_actions(stack: Stack) -> None:
    tenant = f"aud-{uuid.uuid4().hex[:8]}"
    client = stack.client(tenant)
    name = f"aud-{uuid.uuid4().hex[:6]}"
    client.register_model(name, stack.data_dir / name, engine="noop")
    job = client.generate(model="echo", prompt="audited", max_tokens=1)
    with pytest.raises(InvalidRequest):
        client.model_op("not-registered", "unload")
    with pytest.raises(NotFound):
        client.destroy_mindspace("no-such-mindspace")
    me = default_actor()
    assert rows(stack, tenant) == [
        (me, "models.register", name, "ok", 200, None),
        (me, "jobs.create", job.id, "ok", 200, None),
        (me, "models.unload", "not-registered", "error", 400, None),
        (me, "mindspaces.delete", "no-such-mindspace", "denied", 404, None),
    ]


def test_the_cli_audits_operator_actions(stack: Stack) -> None:
    tenant = f"aud-{uuid.uuid4().hex[:8]}"
    env = {**stack.env, "LLMOS_TENANT": tenant}
    name = f"aud-{uuid.uuid4().hex[:6]}"
    assert llmos("model", "register", name, str(stack.data_dir / name), "--engine", "noop",
                 env=env).returncode == 0
    created = llmos("key", "create", "--tenant", tenant, "--json", env=env)
    key_id = json.loads(created.stdout)["id"]
    assert llmos("key", "revoke", key_id, env=env).returncode == 0
    actions = [(r[1], r[2], r[3]) for r in rows(stack, tenant)]
    assert actions == [("models.register", name, "ok"), ("keys.create", key_id, "ok"),
                       ("keys.revoke", key_id, "ok")]
    assert all(r[0] == default_actor() for r in rows(stack, tenant))
    listed = llmos("audit", "list", "--tenant", tenant, "--json", env=env)
    assert [e["actor"] for e in json.loads(listed.stdout)] == [default_actor()] * 3
