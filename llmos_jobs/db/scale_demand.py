"""The scaling signal's inputs, read from the job and worker rows at one moment, and the
report built from them (llmos_jobs.scaling has the formula).

Queue depth comes from the database (status ``queued``), never from the broker lists: a
dispatcher keeps the broker queue shallow and holds the waiting jobs in the database.
One reading feeds the gauge ``llmos_model_workers_needed`` and `llmos scale recommend`,
so the two never disagree."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from llmos_jobs.db.tables import Job, RegisteredModel, WorkerRecord
from llmos_jobs.scaling import ModelDemand, ScalePolicy, workers_needed
from llmos_jobs.states import WorkerState
from schemas.common import JobKind, JobStatus
from schemas.scale import ModelScale, ScaleReport

# Model jobs (load, unload) are aimed at one worker's own queue: no added worker serves
# them, so they are no demand for more.
_SERVED = JobKind.model_op


def scale_report(*, session: Session, now: datetime, policy: ScalePolicy,
                 model: str | None = None) -> ScaleReport:
    """Every model's need (registered, or with jobs queued or running), or ``model``'s."""
    found = []
    for demand in scale_demand(session=session, now=now, policy=policy):
        if model is not None and demand.model != model:
            continue
        need = workers_needed(demand, policy)
        found.append(ModelScale(
            model=demand.model, queued=demand.queued, running=demand.running,
            deadlines=len(demand.deadlines_s), live_workers=demand.live_workers,
            concurrency=demand.concurrency, jobs_per_worker_s=need.jobs_per_worker_s,
            measured=need.measured, workers_needed=need.workers,
            dominant=need.dominant.value, running_term=need.running_term,
            backlog_term=need.backlog_term, deadline_term=need.deadline_term,
            why=need.why(demand, policy)))
    return ScaleReport(taken_at=now, target_s=policy.target_s, window_s=policy.window_s,
                       models=found)


def scale_demand(*, session: Session, now: datetime, policy: ScalePolicy
                 ) -> list[ModelDemand]:
    counts: dict[tuple[str, JobStatus], int] = {
        (m, JobStatus(s)): n for m, s, n in session.execute(
            sa_select(col(Job.model), col(Job.status), func.count())
            .where(col(Job.status).in_((JobStatus.queued, JobStatus.running)),
                   col(Job.kind) != _SERVED)
            .group_by(col(Job.model), col(Job.status))).all()}
    deadlines: dict[str, list[float]] = defaultdict(list)
    for m, deadline in session.execute(
            sa_select(col(Job.model), col(Job.deadline))
            .where(col(Job.status) == JobStatus.queued, col(Job.kind) != _SERVED,
                   col(Job.deadline).is_not(None),
                   col(Job.deadline) <= now + timedelta(seconds=policy.target_s))).all():
        deadlines[m].append((deadline - now).total_seconds())
    workers = session.execute(sa_select(WorkerRecord)).scalars().all()
    concurrency = {w.name: max(1, w.concurrency) for w in workers}
    alive = [w for w in workers if w.state == WorkerState.alive.value]
    rates = _throughput(session, now - timedelta(seconds=policy.window_s), concurrency)
    registered = set(session.execute(sa_select(col(RegisteredModel.name))).scalars())
    models = registered | {m for m, _ in counts}
    found = []
    for m in sorted(models):
        serving = [w for w in alive if w.models is None or m in w.models]
        slots = (sum(max(1, w.concurrency) for w in serving) / len(serving)) if serving \
            else 1.0
        found.append(ModelDemand(
            model=m, queued=counts.get((m, JobStatus.queued), 0),
            running=counts.get((m, JobStatus.running), 0),
            deadlines_s=tuple(deadlines.get(m, ())), live_workers=len(serving),
            concurrency=slots, jobs_per_worker_s=rates.get(m)))
    return found


def _throughput(session: Session, since: datetime, concurrency: dict[str, int]
                ) -> dict[str, float]:
    """Per model: jobs finished since ``since`` per busy worker-second. A job of duration
    d on a worker of concurrency c kept 1/c of that worker busy for d seconds."""
    jobs: dict[str, int] = defaultdict(int)
    busy: dict[str, float] = defaultdict(float)
    for m, worker, started, finished in session.execute(
            sa_select(col(Job.model), col(Job.worker), col(Job.started_at),
                      col(Job.finished_at))
            .where(col(Job.finished_at) >= since, col(Job.started_at).is_not(None),
                   col(Job.kind) != _SERVED)).all():
        jobs[m] += 1
        busy[m] += max(0.0, (finished - started).total_seconds()) \
            / concurrency.get(worker or "", 1)
    # A window of jobs that took no measurable time says nothing about the rate.
    return {m: jobs[m] / busy[m] for m in jobs if busy[m] > 0}
