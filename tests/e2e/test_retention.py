"""Retention on the live stack (SQLite and PostgreSQL): a tenant's policy set with the
CLI, `llmos prune --dry-run` counting exactly what a prune then removes, pruned jobs
keeping their metadata, and the control process's periodic task doing the same."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlmodel import col

from broker_config import CONTROL_QUEUE, TaskName
from llmos_jobs import broker
from llmos_jobs.db.batch_tables import StoredFile
from llmos_jobs.db.tables import AuditEvent, Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookAttempt, WebhookDelivery
from llmos_jobs.errors import ContentExpired, NotFound
from llmos_jobs.services.batch_files import get_file
from tests.support.api_server import ApiServer, tenant
from tests.support.cli import llmos
from tests.support.stack import Stack
from tests.support.waiting import until

AGED = timedelta(days=2)


def _json(stack: Stack, *args: str) -> dict[str, Any]:
    out = llmos(*args, "--json", env=stack.env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _content(stack: Stack, who: str) -> dict[str, Any]:
    """What the tenant has, read from the database itself."""
    client = stack.client(who)
    with stack.database.session() as session:
        jobs = {j.id: (j.payload, j.result, j.content_expired_at)
                for j in session.exec(select(Job).where(col(Job.tenant) == who)).scalars()}
        files = list(session.exec(select(StoredFile.id).where(  # type: ignore[call-overload]
            col(StoredFile.tenant) == who)).scalars())
        audit = session.execute(select(func.count()).select_from(AuditEvent).where(
            col(AuditEvent.tenant) == who)).scalar_one()
        hooks = list(session.exec(select(WebhookDelivery.id).where(  # type: ignore[call-overload]
            col(WebhookDelivery.tenant) == who)).scalars())
    del client
    return {"jobs": jobs, "files": files, "audit": audit, "webhooks": hooks}


def _tenant_with_content(stack: Stack) -> tuple[str, list[str], int]:
    """A tenant with two finished jobs, a file, audit rows and a delivered webhook; all
    of it aged AGED. Returns the tenant, its job ids and how many audit rows it has."""
    who = tenant()
    client = stack.client(who)
    jobs = [client.generate(model="echo", prompt=f"secret {i}", max_tokens=2) for i in range(2)]
    client.wait([j.id for j in jobs])
    client.upload_file(filename="in.jsonl", content=b'{"a": 1}\n')
    then = utcnow() - AGED
    with stack.database.session() as session:
        delivery = WebhookDelivery(tenant=who, event_type="job.succeeded",
                                   url="http://example.invalid/", payload={"secret": 1},
                                   status=DeliveryStatus.delivered, created_at=then)
        session.add(delivery)
        session.flush()
        session.add(WebhookAttempt(delivery_id=delivery.id, number=1, status_code=200,
                                   duration_ms=1.0, attempted_at=then))
        session.execute(update(Job).where(col(Job.tenant) == who).values(
            created_at=then, finished_at=then))
        session.execute(update(StoredFile).where(col(StoredFile.tenant) == who).values(
            created_at=then))
        aged = session.execute(update(AuditEvent).where(col(AuditEvent.tenant) == who)
                               .values(created_at=then)).rowcount  # type: ignore[attr-defined]
    return who, [j.id for j in jobs], int(aged)


def test_dry_run_counts_what_a_prune_then_removes_and_jobs_keep_their_metadata(
        api: ApiServer) -> None:
    stack = api.stack
    short, short_jobs, aged_audit = _tenant_with_content(stack)
    kept, _, _ = _tenant_with_content(stack)  # aged too, but within the 30-day default
    policy = _json(stack, "retention", "set", "--tenant", short, "--jobs-days", "1",
                   "--files-days", "1", "--audit-days", "1", "--webhooks-days", "1")
    assert policy["jobs_days"] == 1 and sorted(policy["overridden"]) == [
        "audit", "files", "jobs", "webhooks"]
    # A recent job of the same tenant is within its day.
    recent = stack.client(short).generate(model="echo", prompt="fresh", max_tokens=2)
    stack.client(short).wait([recent.id])
    before = _content(stack, short)
    before_kept = _content(stack, kept)

    dry = _json(stack, "prune", "--dry-run")
    assert dry["dry_run"] is True
    expected = {"jobs": 2, "files": 1, "audit": aged_audit, "webhooks": 1,
                "idempotency_keys": 0}
    # Its client's audit rows (two jobs, an upload) are aged; setting the policy and
    # the recent job are not.
    assert aged_audit == 3 and before["audit"] == aged_audit + 2
    assert dry["counts"] == expected
    assert _content(stack, short) == before  # nothing went

    done = _json(stack, "prune")
    assert done["dry_run"] is False and done["counts"] == dry["counts"]
    after = _content(stack, short)
    for job_id in short_jobs:
        assert after["jobs"][job_id][:2] == ({}, None)
        assert after["jobs"][job_id][2] is not None
    assert after["jobs"][recent.id] == before["jobs"][recent.id]
    assert after["files"] == [] and after["webhooks"] == []
    assert after["audit"] == before["audit"] - aged_audit
    assert _content(stack, kept) == before_kept
    with stack.database.session() as session:
        attempts = session.execute(select(func.count()).select_from(WebhookAttempt).where(
            col(WebhookAttempt.delivery_id).in_(before["webhooks"]))).scalar_one()
    assert attempts == 0

    # The pruned job keeps its metadata and says its content expired.
    job = stack.client(short).job(short_jobs[0])
    assert (job.status, job.model, job.tenant) == ("succeeded", "echo", short)
    assert job.usage is not None and job.usage.completion_tokens == 2
    assert job.finished_at is not None and job.content_expired_at is not None
    with pytest.raises(ContentExpired, match="content expired"):
        job.generate_result()
    assert stack.client(short).job(recent.id).generate_result().text == "ok ok"
    with api.http(api.key(short)) as http:
        shown = http.get(f"/v1/jobs/{job.id}").json()
    assert shown["content_expired_at"] is not None and shown["payload"] == {}
    assert shown["status"] == "succeeded" and shown["usage"]["completion_tokens"] == 2
    with stack.database.session() as session, pytest.raises(NotFound):
        get_file(session, short, before["files"][0])

    # Nothing is left to prune: a second dry run counts nothing.
    assert _json(stack, "prune", "--dry-run")["counts"] == dict.fromkeys(expected, 0)


def test_the_control_process_prunes_on_its_task(api: ApiServer) -> None:
    stack = api.stack
    who, job_ids, _ = _tenant_with_content(stack)
    _json(stack, "retention", "set", "--tenant", who, "--jobs-days", "1")
    broker.app_for(stack.settings()).send_task(TaskName.prune.value, queue=CONTROL_QUEUE)

    def pruned() -> bool:
        return all(stack.client(who).job(j).content_expired_at is not None for j in job_ids)

    until(pruned, "the control process pruned the aged jobs")
    # Its files were not due: files keep the 30-day default.
    assert len(_content(stack, who)["files"]) == 1


def test_operators_set_retention_over_http_and_tenants_read_their_own(
        api: ApiServer) -> None:
    who = tenant()
    with api.http(api.operator_key()) as ops:
        set_ = ops.put(f"/v1/retention/{who}", json={"audit_days": 7})
        assert set_.status_code == 200, set_.text
        assert set_.json()["audit_days"] == 7 and set_.json()["overridden"] == ["audit"]
        assert set_.json()["jobs_days"] == api.stack.settings().retention_jobs_days
        bad = ops.put(f"/v1/retention/{who}", json={"audit_days": -1})
        assert bad.status_code == 400 and "audit_days" in bad.json()["error"]["message"]
    with api.http(api.key(who)) as own:
        assert own.get(f"/v1/retention/{who}").json()["audit_days"] == 7
        assert own.put(f"/v1/retention/{who}", json={"audit_days": 1}).status_code == 403
        assert own.get(f"/v1/retention/{tenant()}").status_code == 404
    shown = _json(api.stack, "retention", "show", "--tenant", who)
    assert shown["audit_days"] == 7
