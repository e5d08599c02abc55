"""One pass of the deployment controller over jobs left queued for a version that lost
its last replica (its worker died mid-update, or was declared dead while slow to beat):
those submitted as ``NAME`` move to the version the deployment moves to, under a new
message id (sent to that version's queue, or held for the dispatcher when it runs);
those pinned ``NAME@1`` fail with the reason once
the update is over; a running one is left to its worker. Real SQLite, real Redis, the
controller's own pass (no worker process: the test writes the worker's heartbeat)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from broker_config import version_queue
from llmos_jobs import broker, broker_view
from llmos_jobs.broker import create_app
from llmos_jobs.db import dispatch, registry
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.deployment_tables import Deployment, Replica
from llmos_jobs.db.model_tables import RegisteredModel
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.services import rollouts
from llmos_jobs.services.reconcile import reconcile_jobs
from llmos_jobs.services.submission import Submitter
from llmos_jobs.states import DeploymentState, ReplicaState
from schemas.common import JobKind, JobStatus
from tests.support.faults import CuttableProxy, private_stack
from tests.support.stack import Stack
from tests.support.versions import register_fake

MODEL = "orphans"
WORKER = "serves-v2@test"


def _rolling_without_version_1(stack: Stack) -> None:
    """A rolling update from 1 to 2 whose only replica of 1 is gone with its worker; one
    replica of 2 serves, on a worker that beats and consumes it."""
    with session_scope(stack.database) as session:
        for number in (1, 2):
            register_fake(session, MODEL, number, make_current=number == 1)
        session.add(Deployment(model=MODEL, replicas=1, version=2, from_version=1,
                               state=DeploymentState.rolling.value, strategy="rolling"))
        session.add(Replica(model=MODEL, worker=WORKER, version=2,
                            state=ReplicaState.serving.value))
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=WORKER, host="test", pid=1, pool="threads", concurrency=1,
            engine_device="cpu", queues=[version_queue(MODEL, 2)]))


def _create(stack: Stack, model: str) -> Job:
    with session_scope(stack.database) as session:
        return job_rows.create_job(session=session, job_in=job_rows.JobCreate(
            tenant="t", kind=JobKind.generate, priority=5, model=model,
            payload={"model": model, "prompt": "p"}, queue=f"lang.{MODEL}"))


@pytest.mark.parametrize("dispatcher", ["off", "on"])
def test_jobs_of_a_version_that_lost_its_last_replica_follow_the_name_unless_pinned(
        tmp_path: Path, dispatcher: str) -> None:
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        stack.client()  # the database, migrated
        settings = stack.settings().model_copy(update={"dispatch": dispatcher})
        submitter = Submitter(settings, stack.database)
        _rolling_without_version_1(stack)
        create = partial(_create, stack)

        released, held, pinned, running = (create(MODEL), create(MODEL),
                                           create(f"{MODEL}@1"), create(MODEL))
        # All four were resolved to version 1, the name's version when submitted.
        assert {j.queue for j in (released, held, pinned, running)} == {
            version_queue(MODEL, 1)}
        # Their messages wait on version 1's queue (sent as the dispatcher would).
        broker.resend(submitter.app, [released, pinned])
        with session_scope(stack.database) as session:
            assert dispatch.hold(session=session, job_ids=[held.id]) == 1
            session.execute(update(Job).where(col(Job.id) == running.id)
                            .values(status=JobStatus.running, worker="gone@test"))

        assert rollouts.step_one(submitter, MODEL) > 0

        with session_scope(stack.database) as session:
            rows = {j.id: session.get(Job, j.id) for j in (released, held, pinned, running)}
            model = session.get(RegisteredModel, MODEL)
            deployment = session.get(Deployment, MODEL)
            assert model is not None and deployment is not None
            assert (model.current_version, deployment.state) == (2, DeploymentState.ready)
            moved, still_held, failed, kept = (rows[j.id] for j in (released, held, pinned,
                                                                    running))
            assert moved is not None and still_held is not None
            assert failed is not None and kept is not None
            for job in (moved, still_held):
                assert (job.status, job.queue, job.model_version) == (
                    JobStatus.queued, version_queue(MODEL, 2), 2)
            assert moved.task_id != released.task_id
            assert still_held.held_since is not None  # the dispatcher sends it, on 2's queue
            # With the dispatcher, the released one waits for it too, aged from its start.
            assert (moved.held_since is not None) == (dispatcher == "on")
            assert (failed.status, failed.error_type, failed.error_message) == (
                JobStatus.failed, "NoReplica", f"no replica serves {MODEL}@1")
            assert (kept.status, kept.queue, kept.model_version) == (
                JobStatus.running, version_queue(MODEL, 1), 1)

        sent = {moved.task_id} if dispatcher == "off" else set()
        on_broker = broker_view.held_messages(submitter.app, [version_queue(MODEL, 2)])
        assert on_broker is not None and on_broker.waiting == sent
        # Its old message still waits on version 1's queue: stale, as its id says.
        old = broker_view.held_messages(submitter.app, [version_queue(MODEL, 1)])
        assert old is not None and released.task_id in old.waiting

        # A second pass finds nothing left to move or fail.
        rollouts.step_one(submitter, MODEL)
        with session_scope(stack.database) as session:
            again = session.get(Job, released.id)
            assert again is not None and again.task_id == moved.task_id
        on_broker = broker_view.held_messages(submitter.app, [version_queue(MODEL, 2)])
        assert on_broker is not None and on_broker.waiting == sent


def test_a_job_moved_while_the_broker_is_out_of_reach_stays_queued_for_the_reconciler(
        tmp_path: Path) -> None:
    """The move commits whether or not its message can leave: a broker out of reach
    fails nothing (a submission's would), and the reconciler sends it once it is back."""
    with private_stack(tmp_path, f"sqlite:///{tmp_path / 'llmos.db'}") as stack:
        stack.client()  # the database, migrated
        redis_port = int(stack.broker_url.rsplit(":", 1)[1].split("/")[0])
        proxy = CuttableProxy(("127.0.0.1", redis_port))
        try:
            settings = stack.settings().model_copy(update={
                "dispatch": "off", "broker_url": f"redis://127.0.0.1:{proxy.port}/0"})
            submitter = Submitter(settings, stack.database)
            _rolling_without_version_1(stack)
            job = _create(stack, MODEL)
            proxy.cut()
            assert rollouts.step_one(submitter, MODEL) > 0  # and it did not raise
            assert proxy.refused > 0  # it did try to send
            moved = stack.client("t").job(job.id)
            assert (moved.status, moved.queue, moved.model_version, moved.error_type) == (
                JobStatus.queued, version_queue(MODEL, 2), 2, None)
            assert moved.task_id != job.task_id
            app = create_app(stack.broker_url)
            held = broker_view.held_messages(app, [version_queue(MODEL, 2)])
            assert held is not None and held.waiting == set()
            proxy.restore()
            assert reconcile_jobs(app, grace_s=0, database=stack.database) == 1
            sent = stack.client("t").job(job.id)
            held = broker_view.held_messages(app, [version_queue(MODEL, 2)])
            assert held is not None and held.waiting == {sent.task_id}
        finally:
            proxy.close()
