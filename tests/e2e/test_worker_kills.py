"""20 whole-worker SIGKILLs during a 500-job run on two workers: nothing lost, no job
with two results.

What "run twice" means here. Execution is at least once: a job whose worker is killed
while it computes is computed again by another attempt, and that is what recovers it.
What must never happen is a second *result*: a job with two recorded outcomes, or a job
computed again after its outcome was recorded. So the test asserts, for every accepted
job, from three sources:

- the database: the job `succeeded`, once, with the reply to its own request (the echo
  engine answers with the prompt);
- the webhook receiver: exactly one event (one `webhook-id`, `job.succeeded`, signature
  valid) per job, the outcome being what raises the event in the same transaction;
- the engine's own log of what it computed (LLMOS_NOOP_LOG), which no database write or
  lost acknowledgement can change: every job was computed at least once; never more
  often than it was claimed; never after its outcome was recorded; and only work in
  flight at a kill was computed again (at most the worker's concurrency per kill).

Each kill is aimed at a worker while it runs a job (read from the database: a job
`running` under that process's pid), and the killed worker is started again at once
under the same name, as an operator's supervisor would. The jobs come in waves of 25,
one before each kill, so that every kill lands in the middle of the run however fast
the machine is; a wave that ends before a worker is seen running one of its jobs is
followed by another (500 jobs at least)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import col, select

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.services.webhooks.signing import tenant_secret
from schemas.common import JobStatus
from tests.support.faults import executions, private_pg_stack
from tests.support.stack import WEBHOOK_ALLOWED_HOSTS, Stack
from tests.support.waiting import until
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.faults]
KILLS = 20
WAVE = 25  # jobs submitted before each kill: 500 at least
CONCURRENCY = 2
NAMES = ("left@test", "right@test")
# Only a guard against a hang: 500 jobs on two shared cores, with 20 restarts.
RUN_GUARD_S = 900.0


def _busy_victim(stack: Stack, model: str, workers: dict[str, subprocess.Popen[bytes]],
                 more: Callable[[], None]) -> str:
    """A worker whose current process runs a job of ``model`` now (waits for one).
    When every job of the model has ended before one was seen running (a wave takes a
    second or two; the look at the database can take longer on a loaded machine), calls
    ``more`` to submit another wave."""
    def busy() -> str | None:
        with session_scope(stack.database) as session:
            unfinished = session.exec(select(Job.status, Job.worker, Job.worker_pid).where(
                Job.model == model, col(Job.status).in_(
                    [JobStatus.queued, JobStatus.waiting, JobStatus.running]))).all()
        if not unfinished:
            more()
            return None
        running = {(worker, pid) for status, worker, pid in unfinished
                   if status == JobStatus.running}
        return next((name for name, process in workers.items()
                     if process.poll() is None and (name, process.pid) in running), None)

    return until(busy, "a live worker ran a job", poll_s=0.02)


# Workers are killed on purpose: a job submitted while every worker of the model is
# down draws the client's NoLiveWorkerWarning, which this test expects and does not test.
@pytest.mark.filterwarnings("ignore::llmos_jobs.errors.NoLiveWorkerWarning")
def test_20_whole_worker_kills_in_a_500_job_run_lose_nothing_and_record_each_once(
        postgres_admin: str, tmp_path: Path) -> None:
    with private_pg_stack(postgres_admin, tmp_path) as stack:
        client = LlmosClient(settings=stack.settings().model_copy(
            update={"webhook_allowed_hosts": WEBHOOK_ALLOWED_HOSTS}))
        model = f"kills-{uuid.uuid4().hex[:6]}"
        client.register_model(model, stack.data_dir / model, engine="noop")
        log = stack.data_dir / "executions.jsonl"
        # A job may run 10 s here (these take 0.2 s): a message that a killed worker was
        # handed and never claimed is sent again once it is older than that allows.
        # The kills aim at busy workers, and the dispatcher keeps the queue shallow, so
        # a job taken back after a kill runs again soon and may be hit again: the cap on
        # deliveries (poison jobs, tested on its own) is lifted above the kills here.
        env = {"LLMOS_NOOP_DELAY_MS": "200", "LLMOS_NOOP_ECHO": "1",
               "LLMOS_NOOP_LOG": str(log), "LLMOS_JOB_TIME_LIMIT_S": "10",
               "LLMOS_MAX_ATTEMPTS": str(KILLS + 1)}
        with session_scope(stack.database) as session:
            secret = tenant_secret(session=session, tenant=client.tenant).secret
        receiver = Receiver(secret=secret).start()
        try:
            stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "2",
                                     "LLMOS_JOB_TIME_LIMIT_S": "10"}, wait=True)

            def start(name: str, wait: bool) -> subprocess.Popen[bytes]:
                return stack.start_worker(name, "--model", model, "--concurrency",
                                          str(CONCURRENCY), env=env, wait=wait)

            workers = {name: start(name, wait=True) for name in NAMES}
            prompts: list[str] = []
            ids: list[str] = []

            def wave() -> None:
                batch = [f"job {len(prompts) + i}" for i in range(WAVE)]
                submitted = client.generate_many(
                    [{"model": model, "prompt": p, "max_tokens": 2} for p in batch],
                    webhook=receiver.url)
                assert not submitted.errors
                prompts.extend(batch)
                ids.extend(job.id for job in submitted.jobs)

            started = time.monotonic()
            for _ in range(KILLS):
                wave()
                victim = _busy_victim(stack, model, workers, more=wave)
                os.killpg(workers[victim].pid, signal.SIGKILL)  # the whole worker
                workers[victim].wait()
                workers[victim] = start(victim, wait=False)  # the supervisor restarts it
            last_kill = time.monotonic()
            done = client.wait(ids, timeout_s=RUN_GUARD_S)
            finished = time.monotonic()
            events = receiver.wait_for_events(len(ids))
        finally:
            receiver.stop()

        # The database: every job succeeded, with the reply to its own request.
        assert len(ids) == len(prompts) >= KILLS * WAVE
        assert [j.status for j in done] == [JobStatus.succeeded] * len(ids), Counter(
            (j.status, j.error_type, j.error_message) for j in done
            if j.status != JobStatus.succeeded)
        assert [j.result["text"] if j.result else None for j in done] == prompts
        with session_scope(stack.database) as session:
            assert len(session.exec(select(Job.id).where(col(Job.model) == model)).all()) \
                == len(ids)

        # The receiver: one event per job, signed, each the job's success.
        assert all(e.verified for e in events)
        bodies = {e.headers["webhook-id"]: e.body for e in events}
        decoded = [json.loads(body) for body in bodies.values()]
        assert {event["type"] for event in decoded} == {"job.succeeded"}
        assert Counter(event["data"]["id"] for event in decoded) == dict.fromkeys(ids, 1)

        # The engine's log: computed at least once, never more often than claimed, never
        # after the outcome was recorded, and again only what a kill interrupted.
        runs = executions(log)
        per_prompt = Counter(r.prompt for r in runs)
        assert set(per_prompt) == set(prompts)
        by_prompt = dict(zip(prompts, done, strict=True))
        for prompt, count in per_prompt.items():
            assert count <= by_prompt[prompt].attempts, prompt
        for run in runs:
            finished_at = by_prompt[run.prompt].finished_at
            assert finished_at is not None and run.at <= finished_at.timestamp(), run
        again = sum(per_prompt.values()) - len(prompts)
        assert again <= KILLS * CONCURRENCY
        print(f"\naccepted {len(ids)}, succeeded {len(done)}, results recorded twice 0, "
              f"computed again after a kill {again}, claimed more than once "
              f"{sum(1 for j in done if j.attempts > 1)}, redelivered events "
              f"{len(events) - len(bodies)}; {KILLS} kills in {last_kill - started:.1f} s, "
              f"all finished {finished - last_kill:.1f} s after the last")


def test_a_job_whose_workers_keep_dying_fails_at_the_delivery_cap(
        postgres_admin: str, tmp_path: Path) -> None:
    """A job that kills every worker it runs on (an out-of-memory prompt, say) must not
    take the fleet down one worker at a time: past LLMOS_MAX_ATTEMPTS deliveries it
    fails with the reason instead of running again."""
    cap = 2
    with private_pg_stack(postgres_admin, tmp_path) as stack:
        client = LlmosClient(settings=stack.settings())
        model = f"poison-{uuid.uuid4().hex[:6]}"
        client.register_model(model, stack.data_dir / model, engine="noop")
        log = stack.data_dir / "executions.jsonl"
        # Slower than the test: the job is still computing whenever its worker is killed.
        env = {"LLMOS_NOOP_DELAY_MS": "600000", "LLMOS_NOOP_LOG": str(log),
               "LLMOS_MAX_ATTEMPTS": str(cap)}
        stack.start_control(wait=True)
        name = f"poisoned-{model}@test"
        worker = stack.start_worker(name, "--model", model, env=env)
        job = client.generate(model=model, prompt="the killer prompt", max_tokens=2)
        for attempt in range(1, cap + 1):
            # Killed while it computes this attempt; a supervisor starts it again.
            until(functools.partial(_computed, log, attempt),
                  f"attempt {attempt} reached the engine", 120)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            worker = stack.start_worker(name, "--model", model, env=env, wait=False)
        # Without the cap the third delivery would compute for ten minutes.
        [done] = client.wait([job.id], timeout_s=300)
        stack.stop_worker(worker)
    assert done.status == JobStatus.failed and done.error_type == "RedeliveryLimit"
    assert done.error_message == (f"delivered {cap + 1} times (limit {cap}); "
                                  "not run again")
    # Computed once per delivery up to the cap, never after.
    assert len(executions(log)) == cap


def _computed(log: Path, times: int) -> bool:
    return len(executions(log)) == times
