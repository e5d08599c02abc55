"""CRUD of registered models (shared by all tenants) and worker heartbeat rows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from llmos_jobs.db.moves import move
from llmos_jobs.db.tables import (
    Job,
    RegisteredModel,
    RegisteredModelBase,
    RegisteredModelPublic,
    WorkerPublic,
    WorkerRecord,
)
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import NotFound
from llmos_jobs.states import WORKERS, WorkerState
from schemas.common import JobStatus


def register_model(*, session: Session, model_in: RegisteredModelBase) -> RegisteredModel:
    """Register or re-register (same name: path and engine replaced)."""
    row = session.get(RegisteredModel, model_in.name)
    if row is None:
        row = RegisteredModel.model_validate(model_in)
    else:
        row.sqlmodel_update(model_in.model_dump())
    session.add(row)
    session.flush()
    return row


def get_model(*, session: Session, name: str) -> RegisteredModel:
    row = session.get(RegisteredModel, name)
    if row is None:
        known = ", ".join(list_model_names(session=session)) or "none registered yet"
        raise NotFound(f"model {name!r} is not registered (registered: {known})")
    return row


def list_model_names(*, session: Session) -> list[str]:
    return list(session.exec(select(RegisteredModel.name).order_by(RegisteredModel.name)))


def list_models(*, session: Session, dead_after_s: float) -> list[RegisteredModelPublic]:
    live = live_workers(session=session, dead_after_s=dead_after_s)
    return [
        RegisteredModelPublic(
            **row.model_dump(), loaded_on=[
                w.name for w in live
                if any(entry.partition("@")[0] == row.name for entry in w.loaded)]
        )
        for row in session.exec(select(RegisteredModel).order_by(RegisteredModel.name))
    ]


# -- workers ------------------------------------------------------------------------------


def upsert_worker(*, session: Session, worker: WorkerRecord) -> None:
    existing = session.get(WorkerRecord, worker.name)
    if existing is not None:
        existing.sqlmodel_update(worker.model_dump())
        session.add(existing)
    else:
        session.add(worker)
    session.flush()


def heartbeat(*, session: Session, name: str, queues: list[str],
              engines: dict[str, dict[str, float]], resources: dict[str, float],
              now: datetime | None = None, holding: list[str] | None = None,
              pool_pids: list[int] | None = None, rejoin: bool = False) -> bool:
    """Refresh a worker's heartbeat; False if it was declared dead meanwhile (with
    ``rejoin``, a worker declared dead is made alive again by the same write, so that
    no reaper pass can find it alive with the old heartbeat). ``holding``: the jobs its
    process was running at ``now``; ``pool_pids``: the live processes of a prefork pool
    (see WorkerRecord)."""
    states = [WorkerState.alive, WorkerState.dead] if rejoin else [WorkerState.alive]
    statement = (
        update(WorkerRecord)
        .where(col(WorkerRecord.name) == name, col(WorkerRecord.state).in_(states))
        .values(last_heartbeat=now or utcnow(), queues=queues, engines=engines,
                resources=resources, holding=holding, pool_pids=pool_pids, state=WorkerState.alive)
    )
    moved = bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]
    session.commit()
    return moved


def set_loaded(*, session: Session, name: str, loaded: list[str]) -> None:
    session.execute(
        update(WorkerRecord).where(col(WorkerRecord.name) == name).values(loaded=sorted(loaded))
    )
    session.commit()


def set_worker_state(*, session: Session, name: str, state: WorkerState,
                     expect: WorkerState) -> bool:
    """Move worker ``name`` from ``expect`` to ``state`` (a transition WORKERS allows)."""
    moved = move(session, WorkerRecord, "state", col(WorkerRecord.name) == name, WORKERS, state,
                 col(WorkerRecord.state) == expect)
    session.commit()
    return moved


def stale_workers(*, session: Session, dead_after_s: float) -> list[WorkerRecord]:
    """Workers still marked alive whose heartbeat stopped."""
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    query = select(WorkerRecord).where(
        WorkerRecord.state == WorkerState.alive, col(WorkerRecord.last_heartbeat) < cutoff
    )
    return list(session.exec(query))


def live_workers(*, session: Session, dead_after_s: float) -> list[WorkerRecord]:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    query = select(WorkerRecord).where(
        WorkerRecord.state == WorkerState.alive, col(WorkerRecord.last_heartbeat) >= cutoff
    )
    return list(session.exec(query.order_by(WorkerRecord.name)))


def workers_with_queued_direct_work(*, session: Session) -> list[str]:
    """Workers not alive (stopped, dead, or never recorded) with jobs queued on their
    direct queue."""
    queues = set(session.exec(select(Job.queue).where(
        Job.status == JobStatus.queued, col(Job.queue).startswith("w.")).distinct()))
    names = {q.removeprefix("w.") for q in queues}
    alive = set(session.exec(select(WorkerRecord.name).where(
        col(WorkerRecord.name).in_(names), WorkerRecord.state == WorkerState.alive)))
    return sorted(names - alive)


def stopped_workers_with_running_jobs(*, session: Session, dead_after_s: float) -> list[str]:
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    query = select(WorkerRecord.name).where(
        WorkerRecord.state == WorkerState.stopped, col(WorkerRecord.last_heartbeat) < cutoff,
        col(WorkerRecord.name).in_(select(Job.worker).where(Job.status == JobStatus.running)))
    return list(session.exec(query))


def unheld_running_jobs(*, session: Session) -> dict[str, dict[str, int]]:
    """Per live worker that reports what it holds: its running jobs claimed before its
    last heartbeat that the heartbeat does not name, or (a prefork pool) whose process
    the heartbeat does not name among the pool's live ones; each with the attempt that
    claim made (a later claim of the job is not covered by this verdict)."""
    rows = session.execute(
        sa_select(col(WorkerRecord.name), col(WorkerRecord.holding),
                  col(WorkerRecord.pool_pids), col(WorkerRecord.last_heartbeat),
                  col(Job.id), col(Job.worker_pid), col(Job.started_at), col(Job.attempts))
        .join(Job, col(Job.worker) == col(WorkerRecord.name))
        .where(col(WorkerRecord.state) == WorkerState.alive,
               col(WorkerRecord.holding).is_not(None) | col(WorkerRecord.pool_pids).is_not(None),
               col(Job.status) == JobStatus.running)).all()
    unheld: dict[str, dict[str, int]] = {}
    for name, holding, pool_pids, beat_at, job_id, pid, started_at, attempts in rows:
        if started_at is None or started_at >= beat_at:
            continue
        if (holding is not None and job_id not in holding) \
                or (pool_pids is not None and pid not in pool_pids):
            unheld.setdefault(name, {})[job_id] = attempts
    return unheld


def running_counts(*, session: Session, names: list[str] | None = None) -> dict[str, int]:
    """Running jobs per worker (of ``names``, or of every worker)."""
    query = select(Job.worker, func.count()).where(Job.status == JobStatus.running)
    if names is not None:
        query = query.where(col(Job.worker).in_(names))
    return {w: int(n) for w, n in session.exec(query.group_by(Job.worker)).all() if w}


def list_workers(*, session: Session, include_gone: bool = False) -> list[WorkerPublic]:
    query = select(WorkerRecord).order_by(WorkerRecord.name)
    if not include_gone:
        query = query.where(WorkerRecord.state == WorkerState.alive)
    running = running_counts(session=session)
    now = utcnow()
    return [
        WorkerPublic(
            **row.model_dump(),
            running_jobs=int(running.get(row.name, 0)),
            seconds_since_heartbeat=(now - row.last_heartbeat).total_seconds(),
        )
        for row in session.exec(query)
    ]


def context_length_of(path: str) -> int:
    """The context window a model directory declares (its config.json)."""
    config = json.loads((Path(path) / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if key in config:
            return int(config[key])
    raise ValueError(f"{path}/config.json declares no context length")


def model_type_of(path: str) -> str | None:
    """The family a model directory's config.json declares (``model_type``, e.g.
    ``llama``), or None when it has no such file or key (a remote server's model)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    family = config.get("model_type") if isinstance(config, dict) else None
    return family if isinstance(family, str) else None
