"""Deployments: the desired placement of a model (how many replicas, how much memory
each needs) and the replicas the controller placed on workers. The controller
(llmos_jobs.services.rollouts) moves both by compare-and-set."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

from llmos_jobs.db.types import UTCDateTime, utcnow
from llmos_jobs.states import DeploymentState, ReplicaState


class DeploymentBase(SQLModel):
    model: str = Field(primary_key=True, foreign_key="registered_model.name",
                       ondelete="CASCADE")
    replicas: int = Field(ge=1)
    gpu_memory_gb: float | None = None


class Deployment(DeploymentBase, table=True):
    """``version`` is the version the replicas are moved to; during an update
    ``from_version`` is the one they leave (and go back to on a rollback)."""

    __tablename__ = "deployment"

    # One of llmos_jobs.states.DeploymentState, stored as its string.
    state: str = Field(default=DeploymentState.ready.value)
    version: int
    from_version: int | None = None
    strategy: str | None = None
    reason: str | None = None  # why the last update rolled back
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    update_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    update_finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Replica(SQLModel, table=True):
    """One replica of a deployed model on one worker, holding ``version``. ``op_job``
    is the model op (load + warm-up) it waits for while loading."""

    __tablename__ = "replica"

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, primary_key=True)
    model: str = Field(foreign_key="deployment.model", ondelete="CASCADE", index=True)
    worker: str
    version: int
    # One of llmos_jobs.states.ReplicaState, stored as its string.
    state: str = Field(default=ReplicaState.loading.value)
    op_job: str | None = None
    # Blue-green: a replica of the new side (retired old ones make room for it).
    green: bool = False
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ReplicaPublic(SQLModel):
    worker: str
    version: int
    state: ReplicaState


class DeploymentPublic(SQLModel):
    model: str
    replicas: int
    gpu_memory_gb: float | None
    state: DeploymentState
    version: int
    from_version: int | None
    current_version: int
    strategy: str | None
    reason: str | None
    update_started_at: datetime | None
    update_finished_at: datetime | None
    placed: list[ReplicaPublic]
    progress: float = Field(description="share of replicas serving the deployment's version")
