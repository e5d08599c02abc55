"""The rows the fair-share dispatcher (llmos_jobs.services.dispatcher) reads and moves.

A language job that the dispatcher is to release waits `queued` with ``held_since`` set;
releasing it is a compare-and-set back to None, so of two control processes only one
sends its message. "In flight" on a queue: released and not ended (queued with
``held_since`` None, or running)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col

from broker_config import language_queue
from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.db.types import utcnow
from llmos_jobs.states import WorkerState
from schemas.common import JobKind, JobStatus

LANGUAGE_QUEUE_PREFIX = language_queue("")


def is_dispatched(queue: str) -> bool:
    """Whether jobs of ``queue`` go through the dispatcher: the shared language queues
    (a worker's direct queue carries work aimed at that worker, released as it comes)."""
    return queue.startswith(LANGUAGE_QUEUE_PREFIX)


_HELD = and_(col(Job.status) == JobStatus.queued, col(Job.held_since).is_not(None))
_IN_FLIGHT = or_(col(Job.status) == JobStatus.running,
                 and_(col(Job.status) == JobStatus.queued, col(Job.held_since).is_(None)))


@dataclass(frozen=True)
class QueueLoad:
    held: int
    in_flight: int


def queue_load(*, session: Session, queue: str) -> QueueLoad:
    """How many of the queue's jobs are held, and how many are in flight: one query."""
    held, unfinished = session.execute(
        select(func.coalesce(func.sum(case((col(Job.held_since).is_not(None), 1), else_=0)), 0),
               func.count())
        .where(col(Job.queue) == queue,
               col(Job.status).in_([JobStatus.queued, JobStatus.running]))).one()
    return QueueLoad(held=int(held), in_flight=int(unfinished) - int(held))


def hold(*, session: Session, job_ids: Sequence[str]) -> int:
    """Queued jobs whose message is not sent yet wait for the dispatcher."""
    if not job_ids:
        return 0
    return int(session.execute(
        update(Job).where(col(Job.id).in_(list(job_ids)), col(Job.status) == JobStatus.queued,
                          col(Job.held_since).is_(None))
        .values(held_since=utcnow())).rowcount)  # type: ignore[attr-defined]


def serving_slots(*, session: Session, queue: str, dead_after_s: float) -> int:
    """The slots (concurrency) of the live workers that consume ``queue``."""
    cutoff = utcnow() - timedelta(seconds=dead_after_s)
    rows = session.execute(
        select(col(WorkerRecord.concurrency), col(WorkerRecord.queues), col(WorkerRecord.models))
        .where(col(WorkerRecord.state) == WorkerState.alive.value,
               col(WorkerRecord.last_heartbeat) >= cutoff)).all()
    return sum(int(slots) for slots, queues, models in rows
               if queue in (queues or []) or (models is None and is_dispatched(queue)))


def held_queues(*, session: Session) -> list[str]:
    return sorted(session.execute(select(col(Job.queue)).where(_HELD).distinct()).scalars())


@dataclass(frozen=True)
class HeldGroup:
    """The held jobs of one tenant, one class (batch or not) and one priority on a queue,
    whose deadline (if any) has not passed."""

    tenant: str
    batch: bool
    priority: int
    oldest: datetime  # the earliest held_since: aging counts from it
    deadline: datetime | None  # the nearest deadline among them
    count: int


def held_groups(*, session: Session, queue: str, now: datetime) -> list[HeldGroup]:
    is_batch = col(Job.batch_id).is_not(None)
    rows = session.execute(
        select(col(Job.tenant), is_batch, col(Job.priority), func.min(col(Job.held_since)),
               func.min(col(Job.deadline)), func.count())
        .where(col(Job.queue) == queue, _HELD, _not_past(now))
        .group_by(col(Job.tenant), is_batch, col(Job.priority))).all()
    return [HeldGroup(tenant=t, batch=bool(b), priority=int(p), oldest=_aware(o),
                      deadline=None if d is None else _aware(d), count=int(n))
            for t, b, p, o, d, n in rows]


def _not_past(now: datetime) -> ColumnElement[bool]:
    # A job whose deadline passed is never released: the expiry sweep ends it.
    return or_(col(Job.deadline).is_(None), col(Job.deadline) > now)


def _aware(value: datetime | str) -> datetime:
    """A timestamp read by an aggregate (SQLite gives a naive datetime, or text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def in_flight_by_tenant(*, session: Session, queue: str | None = None) -> dict[str, int]:
    """Jobs in flight per tenant, on ``queue`` or (None) on every queue."""
    query = select(col(Job.tenant), func.count()).where(_IN_FLIGHT)
    if queue is not None:
        query = query.where(col(Job.queue) == queue)
    return {tenant: int(n) for tenant, n in session.execute(query.group_by(col(Job.tenant)))}


def pick(*, session: Session, queue: str, group: HeldGroup, count: int, now: datetime
         ) -> list[str]:
    """The ids of ``count`` held jobs of ``group``: nearest deadline first (none last),
    then longest held."""
    is_batch = col(Job.batch_id).is_not(None)
    return list(session.execute(
        select(col(Job.id))
        .where(col(Job.queue) == queue, _HELD, _not_past(now), col(Job.tenant) == group.tenant,
               is_batch if group.batch else col(Job.batch_id).is_(None),
               col(Job.priority) == group.priority)
        .order_by(col(Job.deadline).is_(None), col(Job.deadline), col(Job.held_since),
                  col(Job.created_at))
        .limit(count)).scalars())


def payloads(*, session: Session, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The payloads of ``job_ids`` (decrypted), by id."""
    if not job_ids:
        return {}
    rows = session.execute(select(col(Job.id), col(Job.payload))
                           .where(col(Job.id).in_(job_ids))).all()
    return {job_id: payload for job_id, payload in rows}


@dataclass(frozen=True)
class Released:
    """What sending a released job's message needs (its payload is not read)."""

    id: str
    kind: JobKind
    task_id: str
    queue: str
    priority: int
    tenant: str
    batch: bool


def release(*, session: Session, job_ids: Sequence[str]) -> list[Released]:
    """Held jobs leave the database's hold (compare-and-set: those another dispatcher,
    a cancellation or the expiry sweep took are left out). The caller commits."""
    if not job_ids:
        return []
    rows = session.execute(
        update(Job).where(col(Job.id).in_(list(job_ids)), _HELD)
        .values(held_since=None, queued_at=utcnow())
        .returning(col(Job.id), col(Job.kind), col(Job.task_id), col(Job.queue),
                   col(Job.priority), col(Job.tenant), col(Job.batch_id))).all()
    return [Released(id=i, kind=JobKind(k), task_id=t, queue=q, priority=int(p), tenant=ten,
                     batch=b is not None) for i, k, t, q, p, ten, b in rows]


def hold_again(*, session: Session, released: Sequence[Released]) -> int:
    """Released jobs whose message could not leave wait again (unless claimed meanwhile)."""
    held = 0
    for job in released:
        held += int(session.execute(
            update(Job).where(col(Job.id) == job.id, col(Job.task_id) == job.task_id,
                              col(Job.status) == JobStatus.queued,
                              col(Job.held_since).is_(None))
            .values(held_since=utcnow())).rowcount)  # type: ignore[attr-defined]
    return held


@dataclass(frozen=True)
class Ended:
    """A language job that ended, and the service it received."""

    id: str
    tenant: str
    queue: str
    batch: bool
    prompt_tokens: int
    completion_tokens: int
    finished_at: datetime


def ended_since(*, session: Session, since: datetime, limit: int = 20_000) -> list[Ended]:
    rows = session.execute(
        select(col(Job.id), col(Job.tenant), col(Job.queue), col(Job.batch_id),
               col(Job.prompt_tokens), col(Job.completion_tokens), col(Job.finished_at))
        .where(col(Job.finished_at) >= since,
               col(Job.queue).startswith(LANGUAGE_QUEUE_PREFIX))
        .order_by(col(Job.finished_at)).limit(limit)).all()
    return [Ended(id=i, tenant=t, queue=q, batch=b is not None, prompt_tokens=p or 0,
                  completion_tokens=c or 0, finished_at=_aware(f))
            for i, t, q, b, p, c, f in rows]


def held_count(*, session: Session) -> int:
    """Jobs held for the dispatcher, on every queue (health reads it)."""
    return int(session.execute(select(func.count()).where(_HELD)).scalar_one())
