"""CRUD of deployments and their replicas. State changes are compare-and-set moves
(llmos_jobs.db.moves): of two control processes stepping one deployment, one moves."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from broker_config import version_queue
from llmos_jobs.db.deployment_tables import (
    Deployment,
    DeploymentPublic,
    Replica,
    ReplicaPublic,
)
from llmos_jobs.db.model_tables import RegisteredModel
from llmos_jobs.db.moves import move, renew_queued
from llmos_jobs.db.tables import Job, JobHeader
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import InvalidRequest, NotFound
from llmos_jobs.states import DEPLOYMENTS, REPLICAS, DeploymentState, ReplicaState
from schemas.common import JobStatus
from schemas.model import split_model_ref


def upsert_deployment(*, session: Session, model: str, replicas: int,
                      gpu_memory_gb: float | None) -> Deployment:
    """Deploy ``model`` (its current version) or change its replica count."""
    registered = session.get(RegisteredModel, model)
    if registered is None:
        raise NotFound(f"model {model!r} is not registered")
    row = session.get(Deployment, model)
    if row is None:
        row = Deployment(model=model, replicas=replicas, gpu_memory_gb=gpu_memory_gb,
                         version=registered.current_version)
    else:
        row.replicas, row.gpu_memory_gb, row.updated_at = replicas, gpu_memory_gb, utcnow()
    session.add(row)
    session.flush()
    return row


def get_deployment(*, session: Session, model: str) -> Deployment:
    row = session.get(Deployment, model)
    if row is None:
        raise InvalidRequest(f"model {model!r} is not deployed; deploy it first with "
                             f"`llmos model deploy {model} --replicas N`")
    return row


def find_deployment(*, session: Session, model: str) -> Deployment | None:
    return session.get(Deployment, model)


def lock_deployment(*, session: Session, model: str) -> bool:
    """Take the deployment's row for this transaction (a write); False if it is gone."""
    statement = (update(Deployment).where(col(Deployment.model) == model)
                 .values(updated_at=utcnow()))
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def list_deployments(*, session: Session) -> list[Deployment]:
    return list(session.exec(select(Deployment).order_by(col(Deployment.model))))


def replicas_of(*, session: Session, model: str) -> list[Replica]:
    return list(session.exec(select(Replica).where(Replica.model == model)
                             .order_by(col(Replica.worker), col(Replica.version))))


def replicas_on(*, session: Session, worker: str) -> list[Replica]:
    return list(session.exec(select(Replica).where(Replica.worker == worker)))


def move_deployment(*, session: Session, model: str, target: DeploymentState,
                    **values: Any) -> bool:
    return move(session, Deployment, "state", col(Deployment.model) == model, DEPLOYMENTS,
                target, updated_at=utcnow(), **values)


def move_replica(*, session: Session, replica_id: str, target: ReplicaState,
                 **values: Any) -> bool:
    return move(session, Replica, "state", col(Replica.id) == replica_id, REPLICAS, target,
                updated_at=utcnow(), **values)


def remove_replica(*, session: Session, replica_id: str) -> None:
    session.execute(delete(Replica).where(col(Replica.id) == replica_id))


def queued_for_version(*, session: Session, model: str, version: int) -> int:
    """Jobs queued (or waiting) on the queue of ``model@version``."""
    return int(session.exec(select(func.count()).select_from(Job).where(
        Job.queue == version_queue(model, version),
        col(Job.status).in_([JobStatus.queued, JobStatus.waiting]))).one())


def running_on(*, session: Session, model: str, version: int, worker: str) -> int:
    """Jobs of ``model@version`` running on ``worker``."""
    return int(session.exec(select(func.count()).select_from(Job).where(
        Job.model == model, Job.model_version == version, Job.worker == worker,
        Job.status == JobStatus.running)).one())


def served_versions(deployment: Deployment, replicas: list[Replica]) -> set[int]:
    """The versions of a deployed model a job may still be submitted for."""
    served = {r.version for r in replicas if r.state != ReplicaState.retiring}
    served.add(deployment.version)
    if deployment.from_version is not None:
        served.add(deployment.from_version)
    return served


def deployed_queue(*, session: Session, model: str, version: int) -> str | None:
    """The queue of a job of ``model@version`` when the model is deployed (None when it
    is not); InvalidRequest when no replica serves that version any more."""
    deployment = session.get(Deployment, model)
    if deployment is None:
        return None
    if version not in served_versions(deployment, replicas_of(session=session, model=model)):
        raise InvalidRequest(f"no replica serves {model}@{version} (deployed: "
                             f"{model}@{deployment.version})")
    return version_queue(model, version)


def show(*, session: Session, deployment: Deployment) -> DeploymentPublic:
    registered = session.get(RegisteredModel, deployment.model)
    current = registered.current_version if registered is not None else deployment.version
    replicas = replicas_of(session=session, model=deployment.model)
    ready = sum(1 for r in replicas
                if r.version == deployment.version and r.state == ReplicaState.serving)
    return DeploymentPublic(
        model=deployment.model, replicas=deployment.replicas,
        gpu_memory_gb=deployment.gpu_memory_gb, state=DeploymentState(deployment.state),
        version=deployment.version, from_version=deployment.from_version,
        current_version=current, strategy=deployment.strategy, reason=deployment.reason,
        update_started_at=deployment.update_started_at,
        update_finished_at=deployment.update_finished_at,
        placed=[ReplicaPublic(worker=r.worker, version=r.version,
                              state=ReplicaState(r.state)) for r in replicas],
        progress=min(1.0, ready / deployment.replicas))


def pins_version(payload: dict[str, Any]) -> bool:
    """Whether a job's request named a version (``NAME@N``), not the model's name."""
    model = payload.get("model")
    return isinstance(model, str) and split_model_ref(model)[1] is not None


def follow_name(*, session: Session, model: str, version: int, to_version: int,
                hold: bool) -> list[Job]:
    """Once no replica holds ``model@version``, the jobs queued for it that named the
    model, not the version (``version`` was the name's when they were submitted), move
    to ``to_version``: none of them started, so one version still serves each, the one
    it then records. Each gets a new message id (a copy of its old message that turns
    up is stale and dropped). With ``hold`` (the dispatcher is on) each waits for the
    dispatcher on its new queue, aged from its creation; otherwise the caller sends the
    ones already released. Jobs pinned to ``version`` stay (fail_unserved ends them).
    One compare-and-set per job: a job claimed meanwhile is left to its worker. The jobs
    moved, as they now are; the caller commits."""
    queued = session.exec(select(Job).where(
        Job.queue == version_queue(model, version), Job.status == JobStatus.queued)).all()
    aged = {"held_since": func.coalesce(col(Job.held_since), col(Job.created_at))} if hold else {}
    moved: list[Job] = []
    for job in queued:
        if pins_version(job.payload):
            continue
        if renew_queued(session, job, queue=version_queue(model, to_version),
                        model_version=to_version, **aged) is not None:
            session.refresh(job)
            moved.append(job)
    return moved


def fail_unserved(*, session: Session, model: str, version: int) -> list[JobHeader]:
    """Fail the jobs queued for ``model@version`` once no replica serves it (and no
    update brings one back): they would wait forever (those that named the model's
    name follow it first: follow_name). The jobs it failed (one
    compare-and-set: a job a worker claims meanwhile is left to it); the caller commits."""
    rows = session.execute(
        update(Job)
        .where(col(Job.queue) == version_queue(model, version),
               col(Job.status) == JobStatus.queued)
        .values(status=JobStatus.failed, error_type="NoReplica",
                error_message=f"no replica serves {model}@{version}", finished_at=utcnow())
        .returning(col(Job.id), col(Job.kind), col(Job.mindspace_id), col(Job.batch_id),
                   col(Job.webhook_url), col(Job.parent_id))
    ).all()
    return [JobHeader(*row) for row in rows]


def queued_versions(*, session: Session, model: str) -> set[int]:
    """The versions of ``model`` that have jobs queued on a version queue."""
    rows = session.exec(select(Job.model_version).where(
        Job.model == model, col(Job.queue).startswith(f"lang.{model}@"),
        Job.status == JobStatus.queued).distinct())
    return {v for v in rows if v is not None}
