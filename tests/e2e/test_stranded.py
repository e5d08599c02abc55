"""Every claimed job reaches a terminal state: faults after the claim, with real worker
processes. A job left `running` or `queued` forever fails these tests by their hang
guards; none of them depends on how fast the machine is."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import update
from sqlmodel import col

from broker_config import language_queue
from llmos_jobs.broker import create_app, task_for_kind
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.db.types import utcnow
from schemas.common import JobKind, JobStatus
from tests.support.faults import CuttableProxy, private_stack, proxied
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.support.stack import Stack
from tests.support.turns import (
    assert_turns_applied_in_order,
    echo_model,
    start_echo_worker,
    wait_for_status,
)
from tests.support.waiting import HANG_GUARD_S, wait_for_log

pytestmark = [pytest.mark.slow, pytest.mark.faults]




@pytest.fixture
def proxied_stack(postgres_admin: str, tmp_path: Path) -> Iterator[tuple[Stack, CuttableProxy]]:
    """A private stack whose workers reach PostgreSQL through a proxy the test can cut;
    the test itself reaches it directly."""
    database_url = fresh_pg_database(postgres_admin)
    proxy = CuttableProxy(("127.0.0.1", 5432))
    try:
        with private_stack(tmp_path, database_url) as stack:
            yield stack, proxy
    finally:
        proxy.close()
        drop_pg_database(postgres_admin, database_url)


def test_a_failed_result_commit_is_retried_and_the_job_succeeds_once(
        proxied_stack: tuple[Stack, CuttableProxy]) -> None:
    stack, proxy = proxied_stack
    client, model, env = echo_model(stack, delay_ms=0)
    name = "blip@test"
    computed, gate = stack.data_dir / "computed.log", stack.data_dir / "gate"
    # Nobody may declare it dead while the database is out of its reach. The engine
    # ends its work only once the gate exists, so the cut lands after the worker's
    # reads and before its outcome, however fast the machine is.
    stack.start_worker(name, "--model", model, env={
        **env, "LLMOS_DATABASE_URL": proxied(stack.database_url, proxy),
        "LLMOS_WORKER_DEAD_AFTER_S": "600", "LLMOS_NOOP_LOG": str(computed),
        "LLMOS_NOOP_GATE": str(gate)})
    job = client.generate(model=model, prompt="record me", max_tokens=2)
    wait_for_log(computed, "record me")
    proxy.cut()
    cut_at = time.monotonic()
    gate.touch()
    try:
        # The engine finishes; recording the outcome fails, and is retried in place.
        wait_for_log(stack.data_dir / "blip.log", "outcome not recorded")
        cut_s = time.monotonic() - cut_at
    finally:
        proxy.restore()
    restored = time.monotonic()
    [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
    assert done.status == JobStatus.succeeded, done.error_message
    assert (done.attempts, done.worker, done.task_id) == (1, name, job.task_id)
    assert done.result is not None and done.result["text"]
    print(f"\ndatabase cut {cut_s:.1f} s; job recorded {time.monotonic() - restored:.1f} s "
          f"after it came back; attempts {done.attempts}")


def test_a_job_the_worker_cannot_decrypt_fails_with_the_reason(stack: Stack) -> None:
    client, model, env = echo_model(stack, delay_ms=0)
    # A worker of another key ring (a misconfigured deployment), serving this model only.
    stack.start_worker(f"wrongkey-{stack.name}@test", "--queues", language_queue(model),
                       env={**env, "LLMOS_ENCRYPTION_KEYS": Fernet.generate_key().decode()})
    job = client.generate(model=model, prompt="secret", max_tokens=2)
    [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
    assert done.status == JobStatus.failed
    # Whatever that worker encrypted, no other process could read: the type says why.
    assert (done.error_type, done.error_message) == ("KeyRingMismatch", None)


def test_a_turn_routed_to_a_worker_as_it_stops_gracefully_runs_on_another(
        stack: Stack) -> None:
    client, model, env = echo_model(stack, delay_ms=2000)
    first = start_echo_worker(stack, model, env, "leaving")
    space = client.create_mindspace(model=model, max_tokens=16)
    one = client.chat(space.id, "first turn")
    two = client.chat(space.id, "second turn")  # waits for the first
    running = wait_for_status(client, one.id, JobStatus.running)
    first.send_signal(signal.SIGTERM)  # warm shutdown: it finishes the first turn ...
    first.wait(timeout=HANG_GUARD_S)
    # ... whose end released the second to the worker that served it, to its direct
    # queue: that worker is `stopped` now, and nothing consumes the queue.
    assert client.job(one.id).status == JobStatus.succeeded
    assert [w.state for w in client.workers(include_gone=True)
            if w.name == running.worker] == ["stopped"]
    second = start_echo_worker(stack, model, env, "staying")
    try:
        done = client.wait([one.id, two.id], timeout_s=HANG_GUARD_S)
        assert_turns_applied_in_order(stack, client, space.id, done)
        # Rerouted (a new message id on the shared queue), not re-run.
        assert (done[1].queue, done[1].attempts) == (language_queue(model), 1)
        assert done[1].task_id != two.task_id and done[1].worker != running.worker
    finally:
        stack.stop_worker(second)


def _running_without_a_holder(stack: Stack, model: str, worker: str, pid: int) -> Job:
    """A job `running` on a live worker whose process does not hold it: its claim
    committed, but no attempt there runs it (and no message of it is left)."""
    client = stack.client()
    with session_scope(stack.database) as session:
        job = job_rows.create_job(session=session, job_in=job_rows.JobCreate(
            tenant=client.tenant, kind=JobKind.generate, priority=5, model=model,
            payload={"model": model, "prompt": "orphan", "max_tokens": 2},
            queue=language_queue(model)))
        session.execute(update(Job).where(col(Job.id) == job.id).values(
            status=JobStatus.running, worker=worker, worker_pid=pid, attempts=1,
            started_at=utcnow()))
    return job


def test_a_running_job_its_live_worker_no_longer_holds_is_requeued(stack: Stack) -> None:
    client, model, env = echo_model(stack, delay_ms=0)
    name = f"holder-{stack.name}-{uuid.uuid4().hex[:4]}@test"
    worker = stack.start_worker(name, "--model", model, env=env)
    try:
        job = _running_without_a_holder(stack, model, name, worker.pid)
        [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
        assert done.status == JobStatus.succeeded
        assert done.attempts == 2 and done.task_id != job.task_id
        assert worker.poll() is None
    finally:
        stack.stop_worker(worker)


def test_a_redelivery_of_an_attempt_its_own_process_let_go_runs_it(tmp_path: Path) -> None:
    """The claim committed but its answer was lost, and the message came back to the
    same process: not a `duplicate` of a live claimant, a takeover."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client, model, env = echo_model(stack, delay_ms=0)
        name = "resume@test"
        # No control process reaps here: the redelivery alone can rescue the job.
        stack.start_worker(name, "--model", model,
                           env={**env, "LLMOS_HEARTBEAT_INTERVAL_S": "3600",
                                "LLMOS_WORKER_DEAD_AFTER_S": "7200"})
        worker = stack.workers[-1]
        job = _running_without_a_holder(stack, model, name, worker.pid)
        create_app(stack.broker_url).send_task(
            task_for_kind(JobKind.generate), args=[job.id], task_id=job.task_id,
            queue=language_queue(model))
        [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
        assert done.status == JobStatus.succeeded
        assert (done.attempts, done.task_id, done.worker) == (2, job.task_id, name)
