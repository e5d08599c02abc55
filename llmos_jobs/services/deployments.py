"""Deploying a model, updating a deployed one (rolling or blue-green), rolling it back
by hand, and its status. The controller (llmos_jobs.services.rollouts) does the moves;
these only state what is desired, then nudge it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from llmos_jobs import broker
from llmos_jobs.db import deployments
from llmos_jobs.db.deployment_tables import DeploymentPublic
from llmos_jobs.db.model_tables import RegisteredModel
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import InvalidRequest, NotFound
from llmos_jobs.services import models
from llmos_jobs.services.submission import Submitter
from llmos_jobs.states import DeploymentState


class Strategy(StrEnum):
    rolling = "rolling"
    blue_green = "blue-green"


def deploy(submitter: Submitter, *, model: str, replicas: int,
           gpu_memory_gb: float | None = None) -> DeploymentPublic:
    """State the desired placement of ``model``'s current version."""
    if replicas < 1:
        raise InvalidRequest(f"--replicas must be 1 or more, not {replicas}")
    if gpu_memory_gb is not None and gpu_memory_gb <= 0:
        raise InvalidRequest(f"--gpu-memory-gb must be positive, not {gpu_memory_gb}")
    if "@" in model:
        raise InvalidRequest(f"deploy a model by its name, not a version ({model})")
    with submitter.database.session() as session:
        row = deployments.upsert_deployment(session=session, model=model, replicas=replicas,
                                            gpu_memory_gb=gpu_memory_gb)
        shown = deployments.show(session=session, deployment=row)
    broker.send_rollout_nudge(submitter.app)
    return shown


def update(submitter: Submitter, *, model: str, path: str | Path, strategy: Strategy,
           engine: str | None = None) -> DeploymentPublic:
    """Register ``path`` as the next version of a deployed ``model`` (not yet served)
    and start moving its replicas to it."""
    with submitter.database.session() as session:
        deployment = deployments.get_deployment(session=session, model=model)
        registered = session.get(RegisteredModel, model)
        if registered is None:
            raise NotFound(f"model {model!r} is not registered")
        if deployment.state != DeploymentState.ready:
            raise InvalidRequest(f"{model} is already {deployment.state} to version "
                                 f"{deployment.version}; wait for it (`llmos model status "
                                 f"{model} --wait`) or roll it back")
        engine = engine or registered.engine
    registered_now = models.register(submitter, name=model, path=path, engine=engine,
                                     make_current=False)
    target = _versions(submitter, model)[-1]
    with submitter.database.session() as session:
        if registered_now.registered == "unchanged" or target == deployment.version:
            raise InvalidRequest(f"{path} is the content {model} already serves "
                                 f"(version {deployment.version}); nothing to update")
        state = (DeploymentState.rolling if strategy == Strategy.rolling
                 else DeploymentState.blue_green)
        if not deployments.move_deployment(
                session=session, model=model, target=state, version=target,
                from_version=deployment.version, strategy=strategy.value, reason=None,
                update_started_at=utcnow(), update_finished_at=None):
            raise InvalidRequest(f"{model} started another update meanwhile")
        row = deployments.get_deployment(session=session, model=model)
        session.refresh(row)
        shown = deployments.show(session=session, deployment=row)
    broker.send_rollout_nudge(submitter.app)
    return shown


def rollback(submitter: Submitter, *, model: str, reason: str = "rolled back by hand"
             ) -> DeploymentPublic:
    """Move the deployment back to the version its last update left."""
    with submitter.database.session() as session:
        deployment = deployments.get_deployment(session=session, model=model)
        if deployment.state == DeploymentState.rolling_back:
            raise InvalidRequest(f"{model} is already rolling back")
        if deployment.state == DeploymentState.ready:
            older = [v for v in _versions(submitter, model) if v < deployment.version]
            if not older:
                raise InvalidRequest(f"{model} has no version before "
                                     f"{deployment.version} to roll back to")
            back_to, leaving = older[-1], deployment.version
        else:
            assert deployment.from_version is not None
            back_to, leaving = deployment.from_version, deployment.version
        if not deployments.move_deployment(
                session=session, model=model, target=DeploymentState.rolling_back,
                version=back_to, from_version=leaving, reason=reason,
                update_started_at=utcnow(), update_finished_at=None):
            raise InvalidRequest(f"{model}'s deployment moved meanwhile; try again")
        row = deployments.get_deployment(session=session, model=model)
        session.refresh(row)
        shown = deployments.show(session=session, deployment=row)
    broker.send_rollout_nudge(submitter.app)
    return shown


def status(submitter: Submitter, model: str) -> DeploymentPublic:
    with submitter.database.session() as session:
        row = deployments.get_deployment(session=session, model=model)
        return deployments.show(session=session, deployment=row)


def list_all(submitter: Submitter) -> list[DeploymentPublic]:
    with submitter.database.session() as session:
        return [deployments.show(session=session, deployment=d)
                for d in deployments.list_deployments(session=session)]


def _versions(submitter: Submitter, model: str) -> list[int]:
    return sorted(v.version for v in models.list_versions(submitter, model))
