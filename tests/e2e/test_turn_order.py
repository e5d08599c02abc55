"""Turns of one mindspace sent at once: each runs once, in the order accepted, and each
ends in a final state, whatever happens to the mindspace meanwhile (destroy, snapshot,
fork, a failing model, a cancelled turn). Real worker processes, real Redis and DB."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
import warnings

import pytest

from broker_config import language_queue
from llmos_jobs.client import LlmosClient
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import mindspaces as mindspace_rows
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job, JobPublic
from llmos_jobs.errors import BrokerUnavailable, NoLiveWorkerWarning
from llmos_jobs.services import turns
from llmos_jobs.services.routing import RoutingPolicy
from schemas.common import JobKind, JobStatus, Usage
from schemas.mindspace import MindspaceTurnRequest
from tests.support.stack import Stack
from tests.support.turns import (
    assert_turns_applied_in_order,
    echo_model,
    in_acceptance_order,
    messages,
    send_at_once,
    seqs_of,
    start_echo_worker,
    wait_for_status,
)
from tests.support.waiting import HANG_GUARD_S, until


@pytest.mark.parametrize("delay_ms", [0, 1100], ids=["fast-model", "slow-model"])
def test_ten_turns_sent_at_once_all_run_once_in_acceptance_order(stack: Stack,
                                                                 delay_ms: int) -> None:
    client, model, env = echo_model(stack, delay_ms=delay_ms)
    worker = start_echo_worker(stack, model, env, "order")
    try:
        space = client.create_mindspace(model=model, max_tokens=16)
        jobs = send_at_once(stack, space.id, messages(10))
        done = client.wait([j.id for j in jobs], timeout_s=HANG_GUARD_S)
        assert_turns_applied_in_order(stack, client, space.id, done)
        assert all(j.attempts == 1 for j in done)
        if delay_ms:  # each turn really took its time, one after the other
            ordered = in_acceptance_order(stack, space.id, done)
            assert ordered[-1].finished_at and ordered[0].started_at
            span = (ordered[-1].finished_at - ordered[0].started_at).total_seconds()
            assert span >= 10 * delay_ms / 1000
    finally:
        stack.stop_worker(worker)


def test_destroy_cancels_pending_turns_and_the_chat_command_says_why(stack: Stack) -> None:
    # Each turn would take far longer than the test: the destroy, not the machine's
    # speed, decides how every turn ends (the running one is stopped as it is cancelled).
    client, model, env = echo_model(stack, delay_ms=int(HANG_GUARD_S * 10_000))
    worker = start_echo_worker(stack, model, env, "destroy")
    try:
        space = client.create_mindspace(model=model, max_tokens=16)
        jobs = send_at_once(stack, space.id, messages(5))
        first = in_acceptance_order(stack, space.id, jobs)[0]
        wait_for_status(client, first.id, JobStatus.running)
        shell = subprocess.Popen(
            [sys.executable, "-m", "llmos_jobs.cli.main", "mindspace", "chat", space.id,
             "sent from a shell"], env=stack.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        def shell_turn_accepted() -> bool:
            assert shell.poll() is None
            return len(seqs_of(stack, space.id)) >= 6

        until(shell_turn_accepted, "the shell's turn was accepted")
        client.destroy_mindspace(space.id)
        output, _ = shell.communicate(timeout=HANG_GUARD_S)
        assert shell.returncode == 1
        assert "turn cancelled" in output and "destroyed" in output, output
        done = client.wait([j.id for j in jobs], timeout_s=HANG_GUARD_S)
        # The first turn was running and is stopped; the others had not started.
        assert {j.status for j in done} == {JobStatus.cancelled}
        for job in done:
            assert job.status == JobStatus.cancelled
            assert job.error_type == "MindspaceDestroyed"
            assert job.error_message and space.id in job.error_message
        assert all(j.payload == {"scrubbed": True} and j.result is None for j in done)
    finally:
        stack.stop_worker(worker)


def test_a_failing_model_fails_every_turn_with_its_reason(stack: Stack) -> None:
    client = stack.client()
    space = client.create_mindspace(model="broken", max_tokens=2)
    jobs = send_at_once(stack, space.id, messages(3))
    done = client.wait([j.id for j in jobs], timeout_s=HANG_GUARD_S)
    assert [j.status for j in done] == [JobStatus.failed] * 3
    assert all(j.error_type and j.error_message for j in done)
    assert client.mindspace(space.id).messages == []


def test_a_cancelled_turn_releases_the_next(stack: Stack) -> None:
    client, model, env = echo_model(stack, delay_ms=3000)
    worker = start_echo_worker(stack, model, env, "cancel")
    try:
        space = client.create_mindspace(model=model, max_tokens=16)
        jobs = send_at_once(stack, space.id, messages(3))
        ordered = in_acceptance_order(stack, space.id, jobs)
        assert client.job(ordered[1].id).status == JobStatus.waiting
        wait_for_status(client, ordered[0].id, JobStatus.running)
        assert client.cancel(ordered[0].id).status == JobStatus.cancelled
        done = client.wait([j.id for j in ordered[1:]], timeout_s=HANG_GUARD_S)
        assert [j.status for j in done] == [JobStatus.succeeded] * 2
        history = client.mindspace(space.id).messages
        assert [m.job_id for m in history] == [ordered[1].id] * 2 + [ordered[2].id] * 2
    finally:
        stack.stop_worker(worker)


def test_snapshots_and_forks_during_turns_hold_whole_turns(stack: Stack) -> None:
    client, model, env = echo_model(stack, delay_ms=600)
    worker = start_echo_worker(stack, model, env, "snap")
    try:
        space = client.create_mindspace(model=model, max_tokens=16)
        jobs = send_at_once(stack, space.id, messages(6))
        taken = []
        deadline = time.monotonic() + HANG_GUARD_S
        while not all(client.job(j.id).status.is_final for j in jobs):
            assert time.monotonic() < deadline
            snap = client.snapshot(space.id)
            restored = client.restore(snap.id)
            fork = client.fork(space.id)
            taken += [[(m.role, m.content) for m in copy.messages]
                      for copy in (restored, fork)]
        done = client.wait([j.id for j in jobs], timeout_s=HANG_GUARD_S)
        assert_turns_applied_in_order(stack, client, space.id, done)
        final = [(m.role, m.content) for m in client.mindspace(space.id).messages]
        assert len({len(c) for c in taken}) > 1  # copies were taken between turns
        for copy in taken:
            assert len(copy) % 2 == 0 and copy == final[:len(copy)]
    finally:
        stack.stop_worker(worker)


def test_who_releases_a_turn_is_decided_under_the_mindspace_lock(stack: Stack) -> None:
    """The race of the issue, played out step by step against the database: a turn
    accepted while the one before it is ending is released once, by one party."""
    client = stack.client()
    model = f"idle-{uuid.uuid4().hex[:6]}"  # no worker serves it: nothing runs by itself
    client.register_model(model, stack.data_dir / model, engine="noop")
    space = client.create_mindspace(model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoLiveWorkerWarning)
        first = client.chat(space.id, "first")
    assert first.status == JobStatus.queued  # an idle mindspace: released at once

    # 1. The producer of turn 2 holds the lock; turn 1 ends meanwhile.
    _run_as_worker(stack, first.id, first.task_id)
    released_by_finisher: list[Job] = []
    with session_scope(stack.database) as producer:
        mindspace = mindspace_rows.get_mindspace(session=producer, tenant="default",
                                          mindspace_id=space.id)
        second, released = turns.accept(
            session=producer, mindspace=mindspace, routing=RoutingPolicy(dead_after_s=4),
            job_in=job_rows.JobCreate(tenant="default", kind=JobKind.mindspace_turn,
                                      priority=1, model=model, mindspace_id=space.id,
                                      payload=MindspaceTurnRequest(
                                          mindspace_id=space.id, message="second",
                                          max_tokens=8).model_dump(mode="json"),
                                      queue=language_queue(model)))
        assert second.status == JobStatus.waiting and released == []  # turn 1 runs
        finisher = _end_in_thread(stack, first.id, first.task_id, released_by_finisher)
        assert not finisher.done.wait(0.5), "ended turn 1 without the mindspace lock"
    finisher.join(HANG_GUARD_S)
    assert [j.id for j in released_by_finisher] == [second.id]
    assert client.job(second.id).status == JobStatus.queued

    # 2. The worker ending turn 2 holds the lock; turn 3 is sent meanwhile.
    _run_as_worker(stack, second.id, client.job(second.id).task_id)
    sent: list[JobPublic] = []

    def send_third() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoLiveWorkerWarning)
            sent.append(client.chat(space.id, "third"))

    producer_thread = threading.Thread(target=send_third)
    ending_second: list[Job] = []
    with session_scope(stack.database) as session:
        job = session.get(Job, second.id)
        assert job is not None
    with turns.ending(job, publish=ending_second.extend,
                      routing=RoutingPolicy(dead_after_s=4),
                      database=stack.database) as session:
        assert job_rows.succeed_job(session=session, job_id=job.id, message_id=job.task_id,
                                    result={}, usage=Usage(prompt_tokens=1,
                                                           completion_tokens=1))
        producer_thread.start()
        producer_thread.join(0.5)
        assert not sent, "accepted turn 3 without the mindspace lock"
    producer_thread.join(HANG_GUARD_S)
    assert ending_second == []  # nothing was waiting when turn 2 ended
    assert [t.status for t in sent] == [JobStatus.queued]  # its producer released it


class _Finisher(threading.Thread):
    done: threading.Event


def _run_as_worker(stack: Stack, job_id: str, task_id: str) -> None:
    with session_scope(stack.database) as session:
        claim = job_rows.claim_job(session=session, job_id=job_id, message_id=task_id,
                                   worker="test", pid=0, max_attempts=3,
                                   claimant_dead=lambda _: False)
        assert claim.outcome == job_rows.ClaimOutcome.claimed


def _end_in_thread(stack: Stack, job_id: str, task_id: str, released: list[Job]
                   ) -> _Finisher:
    """A worker recording the success of a turn, in a thread of its own."""
    def finish() -> None:
        with session_scope(stack.database) as session:
            job = session.get(Job, job_id)
            assert job is not None
        with turns.ending(job, publish=released.extend,
                          routing=RoutingPolicy(dead_after_s=4),
                          database=stack.database) as session:
            job_rows.succeed_job(session=session, job_id=job_id, message_id=task_id,
                                 result={}, usage=Usage(prompt_tokens=1, completion_tokens=1))
        thread.done.set()

    thread = _Finisher(target=finish)
    thread.done = threading.Event()
    thread.start()
    return thread


def test_a_turn_whose_message_never_left_fails_and_the_next_turn_runs(stack: Stack) -> None:
    client = stack.client()
    space = client.create_mindspace(model="echo", max_tokens=2)
    unreachable = LlmosClient(settings=stack.settings().model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0"}))
    with pytest.raises(BrokerUnavailable, match="could not enqueue 1 job"):
        unreachable.chat(space.id, "lost")
    [lost] = [client.job(job_id) for job_id in seqs_of(stack, space.id)]
    assert lost.status == JobStatus.failed and lost.error_type == "BrokerUnavailable"
    [after] = client.wait([client.chat(space.id, "after").id], timeout_s=HANG_GUARD_S)
    assert after.status == JobStatus.succeeded
    assert [m.content for m in client.mindspace(space.id).messages] == ["after", "ok ok"]
