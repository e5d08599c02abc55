"""The broker loses everything mid-run: every accepted job still runs, exactly once.

A private redis-server (tests/services.py) is flushed while 200 jobs are under way: the
queued messages and the delivered-but-unacknowledged ones vanish. The reconciler finds
the jobs `queued` in the database with no message in the broker and sends them again
under new message ids. Each job is counted: its status, its result, and how many times
it was claimed (a claim is the only way a job runs)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col, func, select

from broker_config import WEBHOOKS_QUEUE
from llmos_jobs import broker_view
from llmos_jobs.broker import create_app
from llmos_jobs.client import LlmosClient
from llmos_jobs.db import registry
from llmos_jobs.db.batch_tables import Batch
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import WebhookDelivery
from llmos_jobs.errors import NoLiveWorkerWarning
from llmos_jobs.services import batch_files, batches
from llmos_jobs.services.reconcile import reconcile_deliveries, reconcile_jobs, resend_delivered
from llmos_jobs.services.webhooks.events import emit
from llmos_jobs.services.webhooks.signing import tenant_secret
from schemas.common import JobKind, JobStatus
from tests.support.faults import private_stack, strand_in_unacked
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S, until
from tests.support.webhook_receiver import Receiver
from workers.reaper import reap

pytestmark = [pytest.mark.slow, pytest.mark.faults]
JOBS = 200


@pytest.fixture
def lossy_stack(postgres_admin: str, tmp_path: Path) -> Iterator[Stack]:
    database_url = fresh_pg_database(postgres_admin)
    try:
        with private_stack(tmp_path, database_url) as stack:
            yield stack
    finally:
        drop_pg_database(postgres_admin, database_url)


def _succeeded(stack: Stack, model: str) -> int:
    with session_scope(stack.database) as session:
        return int(session.exec(select(func.count()).select_from(Job).where(
            Job.model == model, Job.status == JobStatus.succeeded)).one())


def test_redis_flushed_mid_run_every_job_succeeds_exactly_once(lossy_stack: Stack) -> None:
    stack = lossy_stack
    # Every job is published at submission, so that the flush finds messages to lose
    # (the dispatcher would hold most of them in the database, out of the flush's reach;
    # its released messages lost and sent again: tests/e2e/test_fair_share.py).
    client = LlmosClient(tenant="default",
                         settings=stack.settings().model_copy(update={"dispatch": "off"}))
    model = f"flush-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    stack.start_worker("survivor@test", "--model", model, "--concurrency", "2",
                       env={"LLMOS_NOOP_DELAY_MS": "100"})
    stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "2"})
    submitted = client.generate_many(
        [{"model": model, "prompt": f"job {i}", "max_tokens": 2} for i in range(JOBS)])
    assert not submitted.errors
    first_ids = {job.id: job.task_id for job in submitted.jobs}
    until(lambda: _succeeded(stack, model) >= JOBS // 5, "the run got going")
    stack.redis().flushall()  # the broker forgets every message, delivered or not
    flushed = time.monotonic()
    done = client.wait(list(first_ids), timeout_s=HANG_GUARD_S)
    recovered_s = time.monotonic() - flushed
    assert [j.status for j in done] == [JobStatus.succeeded] * JOBS
    assert all(j.result is not None and j.result["text"] for j in done)
    assert [j.attempts for j in done] == [1] * JOBS  # each claimed, so run, once
    resent = sum(1 for j in done if j.task_id != first_ids[j.id])
    assert resent > 0  # the flush did lose messages, and the reconciler sent them again
    with session_scope(stack.database) as session:
        rows = session.exec(select(func.count()).select_from(Job).where(
            col(Job.model) == model)).one()
    assert rows == JOBS
    print(f"\naccepted {JOBS}, succeeded {len(done)}, run twice 0, sent again {resent}, "
          f"all finished {recovered_s:.1f} s after the flush")


def _wait_until_completed(stack: Stack, tenant: str, batch_id: str) -> Batch:
    def completed() -> Batch | None:
        with session_scope(stack.database) as session:
            row = batches.get_batch(session, tenant, batch_id)
        return row if row.status == "completed" else None

    return until(completed, f"batch {batch_id} completed")


def test_a_batch_left_validating_and_a_delivery_left_pending_are_sent_again(
        tmp_path: Path) -> None:
    """Both messages are lost before any worker runs: the batch would stay `validating`
    and the delivery `pending` forever."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client = stack.client()
        model = "kept"
        client.register_model(model, stack.data_dir / model, engine="noop")
        with session_scope(stack.database) as session:
            secret = tenant_secret(session=session, tenant=client.tenant).secret
        receiver = Receiver(secret=secret).start()
        try:
            with session_scope(stack.database) as session:
                delivery_id = emit(session=session, tenant=client.tenant,
                                   event_type="test.lost", url=receiver.url,
                                   data={"n": 1}, settings=stack.settings())
            lines = [json.dumps({"custom_id": f"c{i}", "method": "POST",
                                 "url": "/v1/chat/completions",
                                 "body": {"model": model, "max_tokens": 2, "messages": [
                                     {"role": "user", "content": f"line {i}"}]}})
                     for i in range(3)]
            uploaded = client.upload_file(filename="in.jsonl",
                                      content="\n".join(lines).encode(), purpose="batch")
            batch = client.create_batch(input_file_id=uploaded.id)
            assert stack.redis().dbsize() > 0
            stack.redis().flushall()
            stack.start_worker("late@test", "--model", model)
            stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "1"})
            [received] = receiver.wait_for(1, timeout_s=HANG_GUARD_S)
            assert received.verified and received.headers["webhook-id"] == delivery_id
            _wait_until_completed(stack, client.tenant, batch.id)
            with session_scope(stack.database) as session:
                jobs = list(session.exec(select(Job).where(Job.batch_id == batch.id)))
            assert sorted(j.custom_id or "" for j in jobs) == ["c0", "c1", "c2"]
            assert [j.attempts for j in jobs] == [1, 1, 1]
            # Delivered at least once, as one event: a copy the reconciler sent while the
            # first was between the queue and the unacknowledged set may POST it again,
            # under the same webhook-id (docs/reliability.md).
            assert {r.headers["webhook-id"] for r in receiver.received} == {delivery_id}
            assert all(r.verified for r in receiver.received)
        finally:
            receiver.stop()


def test_a_batch_whose_last_job_ended_unannounced_is_finalised(tmp_path: Path) -> None:
    """The process that ended the batch's last job died before it told anyone: the
    batch would stay `in_progress` forever."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client = stack.client()
        client.register_model("kept", stack.data_dir / "kept", engine="noop")
        with session_scope(stack.database) as session:
            batch = Batch(tenant=client.tenant, endpoint=batch_files.ENDPOINT,
                          input_file_id="none", completion_window="24h", priority=8,
                          total=1, status="in_progress")
            session.add(batch)
            session.flush()
            session.add(Job(tenant=client.tenant, kind=JobKind.generate, priority=8,
                            model="kept", batch_id=batch.id, custom_id="only", payload={},
                            queue="lang.kept", status=JobStatus.failed,
                            error_type="E", error_message="it failed"))
            batch_id = batch.id
        stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "1"})
        row = _wait_until_completed(stack, client.tenant, batch_id)
        assert row.error_file_id is not None and row.output_file_id is None


def test_a_job_handed_to_a_worker_that_died_before_claiming_it_is_sent_again(
        tmp_path: Path) -> None:
    """The broker handed the message to a worker that was killed before it claimed the
    job: the message sits in Redis's `unacked` hash (kombu gives it back only after the
    visibility timeout) and the job stays `queued`. The reconciler leaves a recently
    delivered message to the worker that has it, and sends one delivered longer ago
    than any live worker would hold it unclaimed again."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client = stack.client()
        client.register_model("unserved", stack.data_dir / "unserved", engine="noop")
        with pytest.warns(NoLiveWorkerWarning):  # nobody serves it: the test takes it
            job = client.generate(model="unserved", prompt="taken and lost", max_tokens=2)
        assert strand_in_unacked(stack, job.queue, delivered_ago_s=100) == job.task_id
        app = create_app(stack.broker_url)
        for patience in (None, 1000.0):  # always in a worker's hands; or not yet overdue
            assert reconcile_jobs(app, grace_s=0, unclaimed_after_s=patience,
                                  database=stack.database) == 0
        assert reconcile_jobs(app, grace_s=0, unclaimed_after_s=50,
                              database=stack.database) == 1
        renewed = client.job(job.id)
        assert renewed.status == JobStatus.queued and renewed.task_id != job.task_id
        held = broker_view.held_messages(app, [job.queue])
        assert held is not None and renewed.task_id in held.waiting
        # The new message is not sent twice: the next pass finds it waiting.
        assert reconcile_jobs(app, grace_s=0, unclaimed_after_s=50,
                              database=stack.database) == 0


def _worker_row(stack: Stack, name: str, queues: list[str], *, silent_s: float) -> None:
    beat = utcnow() - timedelta(seconds=silent_s)
    with session_scope(stack.database) as session:
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=name, host="elsewhere", pid=1, pool="threads", concurrency=1,
            engine_device="cpu", queues=queues, started_at=beat, last_heartbeat=beat))


def test_what_a_worker_declared_dead_took_and_never_claimed_is_sent_again_at_once(
        tmp_path: Path) -> None:
    """A worker killed between taking a message and claiming its job: the reconciler
    would wait out a job's whole time limit for it (a live worker could still hold it).
    Once the reaper declares that worker dead, the jobs of its queues delivered and
    unclaimed are sent again in the same pass; a live worker's silence is not death."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client = stack.client()
        client.register_model("orphaned", stack.data_dir / "orphaned", engine="noop")
        with pytest.warns(NoLiveWorkerWarning):  # nobody serves it: the test takes it
            job = client.generate(model="orphaned", prompt="taken and lost", max_tokens=2)
        assert strand_in_unacked(stack, job.queue, delivered_ago_s=1) == job.task_id
        app = create_app(stack.broker_url)
        # Delivered a second ago: to the reconciler, still in a live worker's hands.
        assert reconcile_jobs(app, grace_s=0, unclaimed_after_s=50,
                              database=stack.database) == 0

        def reap_now() -> int:
            return reap(database=stack.database, dead_after_s=30,
                        enqueue=lambda j, task_id: None,
                        resend_delivered=lambda queues: resend_delivered(
                            app, queues=queues, database=stack.database))

        _worker_row(stack, "quiet@elsewhere", [job.queue], silent_s=5)  # beat recently
        _worker_row(stack, "other@elsewhere", ["lang.other"], silent_s=600)
        assert reap_now() == 0  # the dead one consumed another queue
        assert client.job(job.id).task_id == job.task_id
        _worker_row(stack, "killed@elsewhere", [job.queue], silent_s=600)
        assert reap_now() == 1
        renewed = client.job(job.id)
        assert renewed.status == JobStatus.queued and renewed.task_id != job.task_id
        held = broker_view.held_messages(app, [job.queue])
        assert held is not None and renewed.task_id in held.waiting
        assert reap_now() == 0  # declared dead once; the new message waits


def test_a_webhook_retry_held_by_a_control_process_that_died_is_sent_again(
        tmp_path: Path) -> None:
    """A control process killed while a delivery's retry waited in it for its time: the
    message sits in `unacked`, the delivery stays `pending` past its due time. Left
    alone while a live process could still be about to run it; sent again (under its
    own id) once it is overdue by more than that."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        client = stack.client()
        with session_scope(stack.database) as session:
            delivery_id = emit(session=session, tenant=client.tenant, event_type="test.held",
                               url="http://127.0.0.1:9/hooks", data={"n": 1},
                               settings=stack.settings())
        assert strand_in_unacked(stack, WEBHOOKS_QUEUE, delivered_ago_s=100) == delivery_id
        with session_scope(stack.database) as session:
            session.execute(update(WebhookDelivery).where(
                col(WebhookDelivery.id) == delivery_id).values(
                attempts=1, next_attempt_at=utcnow() - timedelta(seconds=100)))
        app = create_app(stack.broker_url)
        for patience in (None, 1000.0):  # always in a live process's hands; not overdue
            assert reconcile_deliveries(app, grace_s=0, unclaimed_after_s=patience,
                                        database=stack.database) == 0
        assert reconcile_deliveries(app, grace_s=0, unclaimed_after_s=50,
                                    database=stack.database) == 1
        held = broker_view.held_messages(app, [WEBHOOKS_QUEUE])
        assert held is not None and delivery_id in held.waiting
        assert reconcile_deliveries(app, grace_s=0, unclaimed_after_s=50,
                                    database=stack.database) == 0
