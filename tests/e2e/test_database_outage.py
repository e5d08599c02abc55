"""PostgreSQL out of reach for 10 s in the middle of a 200-job run: every job still
succeeds, once.

The workers and the control process reach PostgreSQL through a TCP proxy that the test
cuts (every open connection dropped, every new one refused) once a fifth of the jobs
have succeeded, while jobs run, and holds cut for 10 s (and at least until a worker
said that it could not record an outcome); the test reads the database directly.
Counted from outside the database too: the no-op engine logs every request it computes
(LLMOS_NOOP_LOG)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.db.types import utcnow
from schemas.common import JobStatus
from tests.support.faults import CuttableProxy, private_pg_stack, proxied, runs_per_prompt
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S, until, wait_for_log

pytestmark = [pytest.mark.slow, pytest.mark.faults]
JOBS = 200
OUTAGE_S = 10.0
# Longer than the outage, as an operator who wants workers to ride out such an outage
# sets it: a worker silent for less is not declared dead (which would lose nothing, but
# would give its running jobs a second attempt).
DEAD_AFTER_S = "30"


@pytest.fixture
def cut_off_stack(postgres_admin: str, tmp_path: Path) -> Iterator[tuple[Stack, CuttableProxy]]:
    proxy = CuttableProxy(("127.0.0.1", 5432))
    try:
        with private_pg_stack(postgres_admin, tmp_path) as stack:
            yield stack, proxy
    finally:
        proxy.close()


def _count(stack: Stack, model: str, status: JobStatus) -> int:
    with session_scope(stack.database) as session:
        return int(session.exec(select(func.count()).select_from(Job).where(
            Job.model == model, Job.status == status)).one())




def test_postgres_out_of_reach_for_10_s_every_job_succeeds_once(
        cut_off_stack: tuple[Stack, CuttableProxy]) -> None:
    stack, proxy = cut_off_stack
    client = stack.client()
    model = f"outage-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    executions = stack.data_dir / "executions.jsonl"
    through_proxy = {"LLMOS_DATABASE_URL": proxied(stack.database_url, proxy),
                     "LLMOS_WORKER_DEAD_AFTER_S": DEAD_AFTER_S}
    stack.start_worker("recorder@test", "--model", model, "--concurrency", "4", env={
        **through_proxy, "LLMOS_NOOP_DELAY_MS": "400", "LLMOS_NOOP_ECHO": "1",
        "LLMOS_NOOP_LOG": str(executions)})
    stack.start_control(env={**through_proxy, "LLMOS_RECONCILE_GRACE_S": "2"}, wait=True)
    prompts = [f"job {i}" for i in range(JOBS)]
    submitted = client.generate_many(
        [{"model": model, "prompt": p, "max_tokens": 2} for p in prompts])
    assert not submitted.errors
    ids = [job.id for job in submitted.jobs]
    until(lambda: (_count(stack, model, JobStatus.succeeded) >= JOBS // 5
                   and _count(stack, model, JobStatus.running)),
          "the run got going, with jobs running", poll_s=0.02)
    # Cut just as a job enters the engine (the no-op engine logs each request as it
    # starts it): its outcome, 0.4 s away, is the next thing it writes. Cutting on a
    # `running` row alone could land between jobs, when no outcome is left to record.
    computed = len(executions.read_bytes().splitlines())
    until(lambda: len(executions.read_bytes().splitlines()) > computed,
          "a job entered the engine", poll_s=0)
    proxy.cut()
    cut_at = time.monotonic()
    try:
        wait_for_log(stack.data_dir / "recorder.log", "outcome not recorded")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))  # the outage itself
        at_restore = _count(stack, model, JobStatus.succeeded)
    finally:
        proxy.restore()
    cut_s = time.monotonic() - cut_at
    restored, restored_at = time.monotonic(), utcnow()
    done = client.wait(ids, timeout_s=HANG_GUARD_S)
    recovered_s = time.monotonic() - restored
    assert [j.status for j in done] == [JobStatus.succeeded] * JOBS, [
        (j.id, j.status, j.error_message) for j in done if j.status != JobStatus.succeeded]
    # Each answers its own request (the echo), under the one message it was claimed by.
    assert [j.result["text"] if j.result else None for j in done] == prompts
    # Claimed once; or twice under the same message when a claim's commit reached the
    # database but its answer was lost in the cut (the delivery is retried, and its
    # claim takes over the attempt that never ran): computed once all the same.
    assert all(1 <= j.attempts <= 2 for j in done), [j.attempts for j in done]
    claimed_again = sum(j.attempts == 2 for j in done)
    # Outside the database: the engine computed every request exactly once.
    assert runs_per_prompt(executions) == dict.fromkeys(prompts, 1)
    with session_scope(stack.database) as session:
        assert session.exec(select(func.count()).select_from(Job).where(
            col(Job.model) == model)).one() == JOBS
    resumed_s = min((j.finished_at - restored_at).total_seconds() for j in done
                    if j.finished_at is not None and j.finished_at > restored_at)
    print(f"\naccepted {JOBS}, succeeded {len(done)}, computed twice 0, "
          f"claimed again under the same message {claimed_again}, "
          f"{at_restore} succeeded when the database came back after {cut_s:.1f} s out "
          f"of reach, first outcome recorded {resumed_s:.1f} s and all finished "
          f"{recovered_s:.1f} s after it came back; connections refused during the cut: "
          f"{proxy.refused}")
