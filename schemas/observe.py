"""What an operator watches (`llmos top --json`, and the Prometheus collectors): jobs
queued and running, queues, workers, read from the database at one moment."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import Contract


class ActiveJobs(Contract):
    """How many jobs of one kind, model, tenant and priority are in one active status."""

    status: str = Field(description="queued or running")
    kind: str
    model: str
    tenant: str
    priority: int = Field(ge=0, le=9)
    count: int = Field(ge=0)


class QueueDepth(Contract):
    """The jobs waiting for a worker, of one model at one priority."""

    model: str
    priority: int = Field(ge=0, le=9)
    depth: int = Field(ge=0)
    oldest_age_s: float = Field(ge=0, description="since the oldest one's current message")


class WorkerLoad(Contract):
    """A worker as its heartbeat row and the jobs it holds describe it."""

    name: str
    state: str = Field(description="alive, stopped or dead")
    heartbeat_age_s: float = Field(ge=0)
    concurrency: int
    running: int = Field(ge=0, description="jobs it holds running")
    prompt_tokens: int = Field(ge=0, description="of the jobs it finished in the window")
    completion_tokens: int = Field(ge=0, description="of the jobs it finished in the window")
    completion_tokens_per_s: float = Field(ge=0, description="completion_tokens / window_s")
    cpu_pct: float | None = Field(default=None, description="its last heartbeat's")
    rss_mb: float | None = Field(default=None, description="its last heartbeat's")


class SystemSnapshot(Contract):
    """Everything at ``taken_at``; workers' tokens count the jobs they finished in the
    last ``window_s`` seconds. Workers listed: those alive, and those that stopped or
    died within the window."""

    taken_at: datetime
    window_s: float = Field(gt=0)
    active: list[ActiveJobs]
    queues: list[QueueDepth]
    workers: list[WorkerLoad]
