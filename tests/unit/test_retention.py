"""Retention and idempotency rules on a real SQLite database (no broker): which rows a
prune takes under defaults and per-tenant policies, and how idempotency keys are
claimed, replayed, refused and freed."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from llmos_jobs.db.batch_tables import Batch, StoredFile
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import AuditEvent, Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookDelivery
from llmos_jobs.errors import IdempotencyInProgress, IdempotencyMismatch, InvalidRequest
from llmos_jobs.services import idempotency, retention
from llmos_jobs.services.idempotency import Claimed, Idempotency, Replay
from llmos_jobs.settings import Settings
from schemas.common import JobKind, JobStatus
from tests.support.stack import database_at

NOW = datetime(2026, 6, 1, tzinfo=utcnow().tzinfo)
SETTINGS = Settings(retention_jobs_days=30, retention_files_days=30, retention_audit_days=30,
                    retention_webhooks_days=30)


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = database_at(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(db)
    return db


def _job(tenant: str, days_ago: float, status: JobStatus = JobStatus.succeeded) -> Job:
    then = NOW - timedelta(days=days_ago)
    return Job(tenant=tenant, kind=JobKind.generate, priority=5, model="m", status=status,
               payload={"prompt": "secret"}, result={"text": "answer"}, queue="lang.m",
               created_at=then, finished_at=then if status.is_final else None)


def test_policies_choose_per_tenant_and_defaults_cover_the_rest(database: Database) -> None:
    with database.session() as session:
        session.add_all([
            _job("short", 3), _job("short", 0.5), _job("long", 40), _job("long", 70),
            _job("plain", 40), _job("plain", 10), _job("plain", 99, JobStatus.running),
            Batch(id="batch_open", tenant="plain", endpoint="/v1/chat/completions",
                  input_file_id="file_open", completion_window="24h", priority=8),
            StoredFile(id="file_open", tenant="plain", filename="a", purpose="batch",
                       bytes=1, content="x", created_at=NOW - timedelta(days=90)),
            StoredFile(id="file_old", tenant="plain", filename="b", purpose="batch",
                       bytes=1, content="x", created_at=NOW - timedelta(days=90)),
            AuditEvent(tenant=None, action="x", outcome="ok", status_code=200,
                       created_at=NOW - timedelta(days=31)),
            AuditEvent(tenant="short", action="x", outcome="ok", status_code=200,
                       created_at=NOW - timedelta(days=2)),
            WebhookDelivery(tenant="plain", event_type="e", url="u", payload={},
                            status=DeliveryStatus.pending, created_at=NOW - timedelta(40)),
            WebhookDelivery(tenant="plain", event_type="e", url="u", payload={},
                            status=DeliveryStatus.failed, created_at=NOW - timedelta(40)),
        ])
    retention.set_policy(database, SETTINGS, "short", {"jobs": 1, "audit": 1})
    retention.set_policy(database, SETTINGS, "long", {"jobs": 60})

    only_short = retention.prune(database, SETTINGS, dry_run=True, tenant="short", now=NOW)
    assert only_short.counts.model_dump() == {"jobs": 1, "files": 0, "audit": 1,
                                              "webhooks": 0, "idempotency_keys": 0}
    dry = retention.prune(database, SETTINGS, dry_run=True, now=NOW)
    # short: its 3-day job; long: its 70-day one; plain: its 40-day one (the running
    # job stays); the old file but not an open batch's input; the failed delivery but
    # not the pending one; both aged audit rows.
    assert dry.counts.model_dump() == {"jobs": 3, "files": 1, "audit": 2, "webhooks": 1,
                                       "idempotency_keys": 0}
    done = retention.prune(database, SETTINGS, now=NOW)
    assert done.counts == dry.counts
    with database.session() as session:
        rows = list(session.exec(select(Job)).all())
        expired = sorted((j.tenant, (NOW - j.created_at).days) for j in rows
                         if j.content_expired_at is not None)
        assert expired == [("long", 70), ("plain", 40), ("short", 3)]
        assert all(j.payload == {} and j.result is None for j in rows if j.content_expired_at)
        assert all(j.payload == {"prompt": "secret"} for j in rows if not j.content_expired_at)
        assert [f.id for f in session.exec(select(StoredFile)).all()] == ["file_open"]
    assert retention.prune(database, SETTINGS, dry_run=True, now=NOW).counts.model_dump() \
        == dict.fromkeys(dry.counts.model_dump(), 0)


def test_a_policy_names_known_kinds_and_positive_days(database: Database) -> None:
    with pytest.raises(InvalidRequest, match="unknown retention kind"):
        retention.set_policy(database, SETTINGS, "t", {"logs": 3})
    with pytest.raises(InvalidRequest, match="greater than 0"):
        retention.set_policy(database, SETTINGS, "t", {"jobs": 0})
    shown = retention.set_policy(database, SETTINGS, "t", {"files": 2})
    assert (shown.files_days, shown.jobs_days, shown.overridden) == (2, 30, ["files"])
    back = retention.set_policy(database, SETTINGS, "t", {"files": None})
    assert (back.files_days, back.overridden) == (30, [])


def _idem(database: Database, wait_s: float = 0.0) -> Idempotency:
    return Idempotency(database=database, ttl_s=3600, wait_s=wait_s, abandoned_after_s=600)


def test_request_hashes_ignore_json_spelling_and_keys_are_checked() -> None:
    assert idempotency.request_hash("POST /v1/jobs", b'{"a": 1, "b": [2]}') == \
        idempotency.request_hash("POST /v1/jobs", b'{"b":[2],"a":1}')
    assert idempotency.request_hash("POST /v1/jobs", b'{"a": 1}') != \
        idempotency.request_hash("POST /v1/files", b'{"a": 1}')
    for bad in ("", "with space", "x" * 256, "caf\u00e9"):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            idempotency.check_key(bad)


def test_a_key_is_claimed_once_replayed_refused_and_freed(database: Database) -> None:
    idem = _idem(database)
    args = {"tenant": "t", "key": "k1", "request": "POST /v1/jobs"}
    assert isinstance(idempotency.claim(idem, digest="d1", **args), Claimed)
    with pytest.raises(IdempotencyInProgress, match="still running"):
        idempotency.claim(idem, digest="d1", **args)
    idempotency.complete(idem, tenant="t", key="k1", status_code=202, response="{}",
                         resource_id="job1")
    replay = idempotency.claim(idem, digest="d1", **args)
    assert isinstance(replay, Replay) and (replay.status_code, replay.resource_id) == (202,
                                                                                       "job1")
    with pytest.raises(IdempotencyMismatch, match="different request"):
        idempotency.claim(idem, digest="d2", **args)
    # Another tenant's key of the same name is another key.
    assert isinstance(idempotency.claim(idem, digest="d2", tenant="u", key="k1",
                                        request="POST /v1/jobs"), Claimed)
    idempotency.release(idem, tenant="u", key="k1")
    assert isinstance(idempotency.claim(idem, digest="d3", tenant="u", key="k1",
                                        request="POST /v1/jobs"), Claimed)


def test_concurrent_claims_of_one_key_let_one_through(database: Database) -> None:
    idem = _idem(database, wait_s=60)
    outcomes: list[Claimed | Replay] = []
    start = threading.Barrier(6)

    def claim() -> None:
        start.wait()
        outcome = idempotency.claim(idem, tenant="t", key="race", digest="d",
                                    request="POST /v1/jobs")
        outcomes.append(outcome)
        if isinstance(outcome, Claimed):
            idempotency.complete(idem, tenant="t", key="race", status_code=202,
                                 resource_id="only")

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(o, Claimed) for o in outcomes) == 1
    assert sorted(o.resource_id for o in outcomes if isinstance(o, Replay)) == ["only"] * 5


def test_an_expired_key_is_a_new_key(database: Database) -> None:
    idem = Idempotency(database=database, ttl_s=0.000001, wait_s=0, abandoned_after_s=600)
    args = {"tenant": "t", "key": "k", "request": "POST /v1/jobs"}
    idempotency.claim(idem, digest="d1", **args)
    idempotency.complete(idem, tenant="t", key="k", status_code=202, resource_id="a")
    # Past its time-to-live the key names nothing: another body is a new request.
    assert isinstance(idempotency.claim(idem, digest="d2", **args), Claimed)
