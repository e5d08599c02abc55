"""A worker's heartbeat row: what a beat may change, and a worker declared dead while
alive coming back in one write (made alive first and beating later, a reaper pass in
between found it alive with its old heartbeat and declared it dead again, over and
over, on a loaded machine)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import registry
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.db.types import utcnow
from schemas.common import JobKind, JobStatus
from tests.support.stack import database_at

NAME = "beating@test"


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = database_at(f"sqlite:///{tmp_path / 'llmos.db'}")
    upgrade(db)
    return db


def _record(database: Database, state: str) -> None:
    silent_since = utcnow() - timedelta(hours=1)
    with session_scope(database) as session:
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=NAME, host="host", pid=1, pool="threads", concurrency=1,
            engine_device="cpu", queues=[], state=state,
            started_at=silent_since, last_heartbeat=silent_since))
        session.commit()


def _beat(database: Database, *, rejoin: bool) -> bool:
    with session_scope(database) as session:
        return registry.heartbeat(session=session, name=NAME, queues=["q"], engines={},
                                  resources={}, now=utcnow(), holding=[], rejoin=rejoin)


def _row(database: Database) -> WorkerRecord:
    with session_scope(database) as session:
        row = session.get(WorkerRecord, NAME)
        assert row is not None
        session.expunge(row)
        return row


def test_a_beat_of_a_worker_declared_dead_changes_nothing_unless_it_rejoins(
        database: Database) -> None:
    _record(database, "dead")
    before = _row(database)
    assert not _beat(database, rejoin=False)
    assert (_row(database).state, _row(database).last_heartbeat) == ("dead",
                                                                      before.last_heartbeat)
    started = utcnow()
    assert _beat(database, rejoin=True)
    after = _row(database)
    # Alive and beating at once: no reaper pass can see it alive and silent.
    assert after.state == "alive" and after.last_heartbeat >= started
    assert after.queues == ["q"]


def test_a_stopped_worker_does_not_rejoin(database: Database) -> None:
    _record(database, "stopped")
    assert not _beat(database, rejoin=True)
    assert _row(database).state == "stopped"


def test_reaping_after_a_rejoin_leaves_the_worker_alive(database: Database) -> None:
    _record(database, "dead")
    assert _beat(database, rejoin=True)
    with session_scope(database) as session:
        live = registry.live_workers(session=session, dead_after_s=4)
    assert [w.name for w in live] == [NAME]


def test_a_lost_pool_claim_is_not_requeued_once_its_message_claimed_it_again(
        database: Database) -> None:
    """A pool child killed mid-job: the pool hands the same message to a new child,
    which claims the job again, while the control process finds the first claim's
    process missing from the heartbeat. Its verdict covers that claim only: requeued
    after the second claim, the job would run a third time."""
    killed, successor = 2, 3
    claimed_at = utcnow() - timedelta(seconds=5)
    with session_scope(database) as session:
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=NAME, host="host", pid=1, pool="prefork", concurrency=1,
            engine_device="cpu", queues=[], pool_pids=[1, successor],
            started_at=claimed_at, last_heartbeat=utcnow()))
        job = job_rows.create_job(session=session, job_in=job_rows.JobCreate(
            tenant="t", kind=JobKind.generate, priority=5, model="m",
            payload={"model": "m", "prompt": "p", "max_tokens": 1}, queue="q"))
        session.execute(update(Job).where(col(Job.id) == job.id).values(
            status=JobStatus.running, worker=NAME, worker_pid=killed, attempts=1,
            started_at=claimed_at))
        session.commit()
    with session_scope(database) as session:
        assert registry.unheld_running_jobs(session=session) == {NAME: {job.id: 1}}
        [seen] = job_rows.running_jobs_of(session=session, worker=NAME)
        session.expunge(seen)
    with session_scope(database) as session:  # the redelivery, in the new child
        again = job_rows.claim_job(session=session, job_id=job.id, message_id=job.task_id,
                                   worker=NAME, pid=successor, max_attempts=3,
                                   claimant_dead=lambda _: True)
    assert again.outcome == job_rows.ClaimOutcome.claimed
    with session_scope(database) as session:
        assert job_rows.requeue_job(session=session, job=seen) is None
        now = session.get(Job, job.id)
        assert now is not None
        assert (now.status, now.attempts, now.worker_pid, now.task_id) == (
            JobStatus.running, 2, successor, job.task_id)
