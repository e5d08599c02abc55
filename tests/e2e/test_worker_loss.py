"""kill -9 during a job: of the pool process running it, and of the whole worker (on
Redis and on RabbitMQ).

Production settings: the broker's visibility timeout stays far above the job time
limit, so only heartbeats and the reaper can rescue a job from a vanished worker."""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest

from broker_config import Transport
from broker_config.celery_config import VISIBILITY_TIMEOUT_S
from llmos_jobs.broker import create_app, task_for_kind
from llmos_jobs.broker_view import UNACKED_KEY
from llmos_jobs.client import LlmosClient
from schemas.common import JobStatus
from tests.support.stack import Stack
from tests.support.turns import (
    assert_turns_applied_in_order,
    echo_model,
    in_acceptance_order,
    messages,
    send_at_once,
    start_echo_worker,
    wait_for_status,
)
from tests.support.waiting import HANG_GUARD_S, log_count, until, wait_for_log

pytestmark = [pytest.mark.slow, pytest.mark.faults]
SLOW = {"LLMOS_NOOP_DELAY_MS": "3000"}


def _slow_model(stack: Stack) -> tuple[LlmosClient, str]:
    client = stack.client()
    model = f"slow-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    return client, model




@pytest.mark.brokers
def test_whole_worker_killed_job_finishes_on_a_replacement_once(stack: Stack) -> None:
    assert VISIBILITY_TIMEOUT_S > 600  # the broker alone would wait this long
    client, model = _slow_model(stack)
    first = stack.start_worker(f"doomed-{stack.name}@test", "--model", model, env=SLOW)
    job = client.generate(model=model, prompt="survive this", max_tokens=2)
    running = wait_for_status(client, job.id, JobStatus.running)
    assert running.worker_pid == first.pid
    os.killpg(first.pid, signal.SIGKILL)  # the main process and everything under it
    first.wait()
    if stack.transport is Transport.redis:
        # The old delivery is stranded, unacknowledged, in the broker.
        assert stack.redis().hlen("unacked") >= 1
    else:
        # RabbitMQ puts it back in its queue as the connection drops: the replacement
        # is handed the job's current message while its claimant is still `running`.
        until(lambda: stack.waiting(job.queue) == 1,
              "the broker put the killed worker's delivery back in its queue")
    # At info, the rescuer logs each message it drops: the evidence, below, that the late
    # redelivery was handled, not just that nothing happened for a while.
    rescuer = f"rescuer-{stack.name}@test"
    second = stack.start_worker(rescuer, "--model", model, "--loglevel", "info", env=SLOW)
    try:
        # A hang guard far below the broker's visibility timeout: the rescue does not
        # wait for the broker to give the message back.
        [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
        assert HANG_GUARD_S < VISIBILITY_TIMEOUT_S
        assert done.status == JobStatus.succeeded
        assert done.worker == rescuer and done.worker_pid == second.pid
        assert done.attempts == 2
        # A late redelivery of the first message is recognised and dropped.
        app = create_app(stack.broker_url)
        if stack.transport is Transport.redis:  # the reaper's new attempt ran it
            assert done.task_id != job.task_id
        # On RabbitMQ the rescuer may also have taken over the first message itself, once
        # the claimant was declared dead and before the reaper renewed the job.
        rescuer_log = stack.data_dir / f"{rescuer.split('@')[0]}.log"
        dropped = f"job {job.id} message {job.task_id} dropped"
        # On RabbitMQ the first message may have been dropped once already, as a duplicate.
        before = log_count(rescuer_log, dropped)
        app.send_task(task_for_kind(done.kind), args=[job.id], task_id=job.task_id,
                      queue=done.queue)
        wait_for_log(rescuer_log, dropped, more_than=before)
        again = client.job(job.id)
        assert (again.status, again.attempts, again.finished_at, again.result) == (
            done.status, done.attempts, done.finished_at, done.result)
        # The reaper's verdict, which on RabbitMQ the rescue did not need to wait for.
        until(lambda: [w.state for w in client.workers(include_gone=True)
                       if w.name == f"doomed-{stack.name}@test"] == ["dead"],
              "the killed worker was declared dead")
    finally:
        stack.stop_worker(second)


def test_pool_process_killed_job_is_rerun_by_the_same_worker_once(stack: Stack) -> None:
    client, model = _slow_model(stack)
    name = f"prefork-{stack.name}@test"
    worker = stack.start_worker(name, "--model", model, "--pool", "prefork",
                                "--concurrency", "1", env=SLOW)
    try:
        job = client.generate(model=model, prompt="child dies", max_tokens=2)
        running = wait_for_status(client, job.id, JobStatus.running)
        child = running.worker_pid
        assert child is not None and child != worker.pid
        os.kill(child, signal.SIGKILL)
        [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
        assert done.status == JobStatus.succeeded
        assert done.worker == name and done.worker_pid not in (child, worker.pid)
        assert done.attempts == 2
        assert worker.poll() is None  # the worker itself lived on
    finally:
        stack.stop_worker(worker)


def _forget_delivery(stack: Stack, message_id: str) -> None:
    """Remove a delivered message from the broker's unacknowledged set, as when the
    pool never hands it back: nothing in the broker can bring it back any more."""
    broker = stack.redis()
    for tag, raw in broker.hscan_iter(UNACKED_KEY):
        delivered, _exchange, _routing_key = json.loads(raw)
        if delivered["headers"]["id"] == message_id:
            assert broker.hdel(UNACKED_KEY, tag) == 1
            return
    raise AssertionError(f"message {message_id} is not among the unacknowledged")


def test_pool_process_killed_and_its_message_gone_the_reaper_reruns_the_job(
        stack: Stack) -> None:
    client, model = _slow_model(stack)
    name = f"prefork-gone-{stack.name}-{uuid.uuid4().hex[:4]}@test"
    worker = stack.start_worker(name, "--model", model, "--pool", "prefork",
                                "--concurrency", "1", env=SLOW)
    try:
        job = client.generate(model=model, prompt="child and message gone", max_tokens=2)
        running = wait_for_status(client, job.id, JobStatus.running)
        child = running.worker_pid
        assert child is not None and child != worker.pid
        _forget_delivery(stack, running.task_id)
        os.kill(child, signal.SIGKILL)
        [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
        assert done.status == JobStatus.succeeded
        assert done.worker == name and done.worker_pid not in (child, worker.pid)
        assert done.task_id != running.task_id  # a new attempt, sent by the reaper
        assert done.attempts == 2
    finally:
        stack.stop_worker(worker)


def test_worker_killed_during_a_sequence_of_turns_all_finish_in_order_once(
        stack: Stack) -> None:
    client, model, env = echo_model(stack, delay_ms=2500)
    a = start_echo_worker(stack, model, env, "turns-a")
    b = start_echo_worker(stack, model, env, "turns-b")
    try:
        space = client.create_mindspace(model=model, max_tokens=16)
        jobs = in_acceptance_order(stack, space.id, send_at_once(stack, space.id, messages(6)))
        third = wait_for_status(client, jobs[2].id, JobStatus.running)
        doomed = a if third.worker_pid == a.pid else b
        assert third.worker_pid == doomed.pid
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
        done = client.wait([j.id for j in jobs], timeout_s=HANG_GUARD_S)
        assert_turns_applied_in_order(stack, client, space.id, done)
        assert [j.worker == third.worker for j in done] == [True] * 2 + [False] * 4
        assert [j.attempts for j in done] == [1, 1, 2, 1, 1, 1]  # only the killed one twice
    finally:
        stack.stop_worker(a)
        stack.stop_worker(b)
