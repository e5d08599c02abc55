"""What an operator watches, read from the database at the moment it is asked: jobs
queued and running, each queue's depth and oldest job, and each worker's load.

One reading serves both the Prometheus collectors (llmos_jobs.metrics) and `llmos
top`, so the two never disagree. Counts are read, never kept: a gauge kept by
incrementing drifts as soon as one process misses an event (a worker killed mid-job,
a job cancelled by the API), whereas the rows are the truth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, type_coerce
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.db.types import UTCDateTime
from llmos_jobs.states import WorkerState
from schemas.common import JobStatus
from schemas.observe import ActiveJobs, QueueDepth, SystemSnapshot, WorkerLoad

ACTIVE = (JobStatus.queued, JobStatus.running)


def snapshot(*, session: Session, now: datetime, window_s: float = 60.0) -> SystemSnapshot:
    """Read everything at ``now``; worker tokens count jobs finished in the last
    ``window_s`` seconds."""
    return SystemSnapshot(taken_at=now, window_s=window_s, active=_active(session),
                    queues=_queues(session, now),
                          workers=_workers(session, now, window_s))


def _active(session: Session) -> list[ActiveJobs]:
    rows = session.execute(
        sa_select(col(Job.status), col(Job.kind), col(Job.model), col(Job.tenant),
                  col(Job.priority), func.count())
        .where(col(Job.status).in_(ACTIVE))
        .group_by(col(Job.status), col(Job.kind), col(Job.model), col(Job.tenant),
                  col(Job.priority))
    ).all()
    found = [ActiveJobs(status=JobStatus(s).value, kind=str(k.value), model=m, tenant=t,
                        priority=p, count=n) for s, k, m, t, p, n in rows]
    return sorted(found, key=lambda a: (a.status, a.kind, a.model, a.tenant, a.priority))


def _queues(session: Session, now: datetime) -> list[QueueDepth]:
    # A job's current message was made at queued_at (created_at before migration 0009).
    since = type_coerce(func.min(func.coalesce(col(Job.queued_at), col(Job.created_at))),
                        UTCDateTime)
    rows = session.execute(
        sa_select(col(Job.model), col(Job.priority), func.count(), since)
        .where(col(Job.status) == JobStatus.queued)
        .group_by(col(Job.model), col(Job.priority))
    ).all()
    found = [QueueDepth(model=m, priority=p, depth=n,
                        oldest_age_s=max(0.0, (now - oldest).total_seconds()))
             for m, p, n, oldest in rows]
    return sorted(found, key=lambda q: (q.model, q.priority))


def _workers(session: Session, now: datetime, window_s: float) -> list[WorkerLoad]:
    since = now - timedelta(seconds=window_s)
    running = {name: count for name, count in session.execute(
        sa_select(col(Job.worker), func.count())
        .where(col(Job.status) == JobStatus.running, col(Job.worker).is_not(None))
        .group_by(col(Job.worker))
    ).all()}
    tokens = {name: (int(p or 0), int(c or 0)) for name, p, c in session.execute(
        sa_select(col(Job.worker), func.sum(col(Job.prompt_tokens)),
                  func.sum(col(Job.completion_tokens)))
        .where(col(Job.worker).is_not(None), col(Job.finished_at) >= since)
        .group_by(col(Job.worker))
    ).all()}
    loads = []
    # Workers alive, and those that stopped or died within the window: a worker gone
    # long ago is history, not load.
    rows = session.execute(sa_select(WorkerRecord).where(
        (col(WorkerRecord.state) == WorkerState.alive.value)
        | (col(WorkerRecord.last_heartbeat) >= since))).scalars()
    for row in rows:
        prompt, completion = tokens.get(row.name, (0, 0))
        loads.append(WorkerLoad(
            name=row.name, state=WorkerState(row.state).value,
            heartbeat_age_s=max(0.0, (now - row.last_heartbeat).total_seconds()),
            concurrency=row.concurrency, running=running.get(row.name, 0),
            prompt_tokens=prompt, completion_tokens=completion,
            completion_tokens_per_s=completion / window_s,
            cpu_pct=row.resources.get("cpu_pct"), rss_mb=row.resources.get("rss_mb")))
    return sorted(loads, key=lambda w: w.name)


@dataclass(frozen=True)
class EndedJob:
    """What the metrics of a job that ended count (no payload: nothing to decrypt)."""

    status: str
    kind: str
    model: str
    tenant: str
    priority: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


def ended_job(*, session: Session, job_id: str) -> EndedJob | None:
    """The job as it ended; None while it is not final (or does not exist)."""
    row = session.execute(
        sa_select(col(Job.status), col(Job.kind), col(Job.model), col(Job.tenant),
                  col(Job.priority), col(Job.prompt_tokens), col(Job.completion_tokens),
                  col(Job.cached_tokens), col(Job.created_at), col(Job.queued_at),
                  col(Job.started_at), col(Job.finished_at))
        .where(col(Job.id) == job_id)
    ).one_or_none()
    if row is None or not JobStatus(row[0]).is_final:
        return None
    status, kind, model, tenant, priority, prompt, completion, cached, *times = row
    return EndedJob(status=JobStatus(status).value, kind=str(kind.value), model=model,
                    tenant=tenant, priority=priority, prompt_tokens=prompt or 0,
                    completion_tokens=completion or 0, cached_tokens=cached or 0,
                    created_at=times[0], queued_at=times[1], started_at=times[2],
                    finished_at=times[3])
