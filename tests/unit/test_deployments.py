"""Deployments on a real SQLite database: the routing of a deployed model's jobs to the
queue of the version they record, the refusal of a version no replica serves, the
state machines, and a registration that does not switch a deployed name."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos_jobs.db import deployments
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.deployment_tables import Replica
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job
from llmos_jobs.errors import IllegalTransition, InvalidRequest
from llmos_jobs.settings import Settings
from llmos_jobs.states import DEPLOYMENTS, REPLICAS, DeploymentState, ReplicaState
from schemas.common import JobKind, JobStatus
from tests.support.versions import register_fake

MODEL = "deployed"


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database.from_settings(Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                         data_dir=tmp_path))
    upgrade(db)
    with db.session() as session:
        for number in (1, 2):
            register_fake(session, MODEL, number)
    return db


def _job(database: Database, model: str) -> str:
    with database.session() as session:
        return job_rows.create_job(session=session, job_in=job_rows.JobCreate(
            tenant="t", kind=JobKind.generate, priority=5, model=model,
            payload={}, queue=f"lang.{MODEL}")).queue


def test_a_deployed_model_s_jobs_go_to_the_queue_of_their_version(database: Database) -> None:
    assert _job(database, MODEL) == f"lang.{MODEL}"  # not deployed: the name's queue
    with database.session() as session:
        deployments.upsert_deployment(session=session, model=MODEL, replicas=1,
                                      gpu_memory_gb=None)
        session.add(Replica(model=MODEL, worker="w1", version=2,
                            state=ReplicaState.serving.value))
    assert _job(database, MODEL) == f"lang.{MODEL}@2"
    assert _job(database, f"{MODEL}@2") == f"lang.{MODEL}@2"
    # Version 1 exists, but no replica serves it and no update moves to or from it.
    with pytest.raises(InvalidRequest, match=f"no replica serves {MODEL}@1"):
        _job(database, f"{MODEL}@1")


def test_registering_new_content_under_a_deployed_name_does_not_switch_it(
        database: Database) -> None:
    with database.session() as session:
        deployments.upsert_deployment(session=session, model=MODEL, replicas=1,
                                      gpu_memory_gb=None)
        done = register_fake(session, MODEL, 3, make_current=False)
        assert (done.version.version, done.model.current_version) == (3, 2)


def test_the_deployment_and_replica_machines_refuse_illegal_moves() -> None:
    DEPLOYMENTS.check(DeploymentState.ready, DeploymentState.rolling)
    DEPLOYMENTS.check(DeploymentState.rolling, DeploymentState.rolling_back)
    with pytest.raises(IllegalTransition):
        DEPLOYMENTS.check(DeploymentState.rolling_back, DeploymentState.rolling)
    REPLICAS.check(ReplicaState.draining, ReplicaState.loading)
    with pytest.raises(IllegalTransition):
        REPLICAS.check(ReplicaState.serving, ReplicaState.loading)  # drains first
    with pytest.raises(IllegalTransition):
        REPLICAS.check(ReplicaState.retiring, ReplicaState.serving)


def test_jobs_queued_for_a_version_no_replica_serves_fail_with_what_follows_an_end(
        database: Database) -> None:
    """The controller fails them; the headers it gets back carry what must follow (the
    webhook, the batch, the graph, the mindspace), and a job already claimed is left."""
    queue = f"lang.{MODEL}@1"
    with database.session() as session:
        ids = {}
        for status in (JobStatus.queued, JobStatus.running):
            job = Job(tenant="t", kind=JobKind.generate, priority=5, model=MODEL,
                      model_version=1, payload={}, queue=queue, status=status,
                      webhook_url="https://hooks.example/end")
            session.add(job)
            session.flush()
            ids[status] = job.id
        session.commit()
    with database.session() as session:
        failed = deployments.fail_unserved(session=session, model=MODEL, version=1)
        session.commit()
        assert [(h.id, h.webhook_url) for h in failed] == [
            (ids[JobStatus.queued], "https://hooks.example/end")]
        assert deployments.fail_unserved(session=session, model=MODEL, version=1) == []
        queued, running = (session.get(Job, ids[s]) for s in (JobStatus.queued,
                                                             JobStatus.running))
        assert queued is not None and running is not None
        assert (queued.status, queued.error_type) == (JobStatus.failed, "NoReplica")
        assert queued.error_message == f"no replica serves {MODEL}@1"
        assert running.status == JobStatus.running
