"""CRUD of jobs. Every status change is a compare-and-set guarded by the state machine,
so two processes racing on one job cannot both win."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from broker_config import language_queue
from llmos_jobs.db import deployments, versions
from llmos_jobs.db.expiry import EXPIRED_ERROR, expiry_reason
from llmos_jobs.db.moves import move, renew_queued
from llmos_jobs.db.tables import Job, JobBase, JobHeader, new_id
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import InvalidRequest, NotFound
from llmos_jobs.states import INITIAL, JOBS
from schemas.common import JobStatus, Usage


class JobCreate(JobBase):
    payload: dict[str, Any]
    queue: str
    mindspace_seq: int | None = None
    deadline: datetime | None = None


def _with_version(session: Session, job_in: JobCreate) -> JobCreate:
    """The row names its model by name and records the version that serves it: the
    current one, read (and held: see versions.resolve) in the transaction that commits
    the job, or the one ``NAME@N`` pins. A row that already records its version (a
    graph's child: its parent's) keeps it. A name not registered keeps no version
    (submission refused it already; only rows made directly get here)."""
    if job_in.model_version is not None and "@" not in job_in.model:
        return job_in
    try:
        served = versions.resolve(session=session, model=job_in.model, hold=True)
    except InvalidRequest:
        if "@" in job_in.model:
            raise
        return job_in
    return job_in.model_copy(update={"model": served.name, "model_version": served.version})


def _deployed(session: Session, job_in: JobCreate) -> JobCreate:
    """A job of a deployed model goes to its version's queue, which only replicas
    holding that version consume (resolved in the transaction that resolved the
    version): a job is served by one version, structurally. A job aimed at one
    worker's queue stays there."""
    if job_in.model_version is None or job_in.queue != language_queue(job_in.model):
        return job_in
    queue = deployments.deployed_queue(session=session, model=job_in.model,
                                       version=job_in.model_version)
    return job_in if queue is None else job_in.model_copy(update={"queue": queue})


def create_job(*, session: Session, job_in: JobCreate, status: JobStatus = JobStatus.queued
               ) -> Job:
    if status not in INITIAL:
        raise ValueError(f"a job cannot be created {status.value}")
    job_in = _deployed(session, _with_version(session, job_in))
    job = Job.model_validate(job_in, update={
        "status": status, "queued_at": utcnow() if status == JobStatus.queued else None})
    session.connection().execute(insert(Job.__table__), job.model_dump())  # type: ignore[attr-defined]
    return job


def get_job(*, session: Session, tenant: str, job_id: str) -> Job:
    job = session.exec(select(Job).where(Job.id == job_id, Job.tenant == tenant)).first()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def get_jobs(*, session: Session, tenant: str, job_ids: Sequence[str]) -> dict[str, Job]:
    """The tenant's jobs among ``job_ids``, by id (one query)."""
    query = select(Job).where(col(Job.id).in_(list(job_ids)), Job.tenant == tenant)
    return {job.id: job for job in session.exec(query)}


def list_jobs(
    *, session: Session, tenant: str, status: JobStatus | None = None, limit: int = 50
) -> list[Job]:
    query = select(Job).where(Job.tenant == tenant)
    if status is not None:
        query = query.where(Job.status == status)
    query = query.order_by(col(Job.created_at).desc()).limit(limit)
    return list(session.exec(query))


class _HotStatements:
    """The statements run once per job, built once per process: constructing a
    statement costs more than running it on a warm connection."""

    @cache  # noqa: B019  (one instance per process, never collected)
    def claim(self) -> Any:
        table = Job.__table__  # type: ignore[attr-defined]
        # A job past its deadline is not claimed: the slow path expires it instead.
        return (
            update(table)
            .where(table.c.id == bindparam("job_id"), table.c.task_id == bindparam("message_id"),
                   table.c.status == JobStatus.queued,
                   or_(table.c.deadline.is_(None), table.c.deadline >= bindparam("cutoff")))
            .values(status=JobStatus.running, worker=bindparam("worker"),
                    worker_pid=bindparam("pid"), started_at=bindparam("now"),
                    attempts=table.c.attempts + 1)
            .returning(*table.c)
        )

    @cache  # noqa: B019
    def succeed(self) -> Any:
        table = Job.__table__  # type: ignore[attr-defined]
        return (
            update(table)
            .where(table.c.id == bindparam("job_id"), table.c.task_id == bindparam("message_id"),
                   table.c.status == JobStatus.running)
            .values(status=JobStatus.succeeded, result=bindparam("result"),
                    finished_at=bindparam("now"), prompt_tokens=bindparam("prompt_tokens"),
                    completion_tokens=bindparam("completion_tokens"),
                    cached_tokens=bindparam("cached_tokens"))
        )


_hot = _HotStatements()


def _set_status(
    session: Session,
    job_id: str,
    target: JobStatus,
    *,
    extra_where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """Move the job to ``target`` if its current status allows it; True if it moved."""
    return move(session, Job, "status", col(Job.id) == job_id, JOBS, target, *extra_where,
                **values)


def cancel_job(*, session: Session, tenant: str, job_id: str) -> Job:
    job = get_job(session=session, tenant=tenant, job_id=job_id)
    JOBS.check(job.status, JobStatus.cancelled)
    if not _set_status(session, job_id, JobStatus.cancelled, finished_at=utcnow()):
        session.refresh(job)
        JOBS.check(job.status, JobStatus.cancelled)
    session.refresh(job)
    return job


class ClaimOutcome(StrEnum):
    claimed = "claimed"
    stale_message = "stale_message"  # a newer attempt owns the job
    finished = "finished"  # already final (cancelled, or done)
    duplicate = "duplicate"  # its live claimant still runs it
    poison = "poison"  # delivered too often; failed
    expired = "expired"  # its deadline passed before this delivery; expired, never run
    missing = "missing"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None


def claim_job(
    *,
    session: Session,
    job_id: str,
    message_id: str,
    worker: str,
    pid: int,
    max_attempts: int,
    claimant_dead: Callable[[Job], bool],
) -> Claim:
    """Take a job for one delivery of its message, or say why not.

    A delivery may run the job when it carries the current ``task_id`` and the job is
    queued before its deadline, or is running under a claimant that is known dead (a
    redelivery after the process running it was killed). A queued job whose deadline
    has passed is expired by the delivery that finds it so, in the same compare-and-set
    a claim would be.
    """
    now = utcnow()
    row = session.connection().execute(
        _hot.claim(), {"job_id": job_id, "message_id": message_id, "worker": worker, "pid": pid,
                       "now": now, "cutoff": now},
    ).first()
    claimed = Job.model_validate(row._mapping) if row is not None else None
    session.commit()
    if claimed is not None:  # the common case: one statement
        job = claimed
    else:
        slow = _claim_slow(session, job_id, message_id, worker, pid, claimant_dead)
        if slow.outcome != ClaimOutcome.claimed or slow.job is None:
            return slow
        job = slow.job
    if job.attempts > max_attempts:
        fail_job(
            session=session, job_id=job_id, message_id=message_id, error_type="RedeliveryLimit",
            error_message=f"delivered {job.attempts} times (limit {max_attempts}); not run again",
        )
        return Claim(ClaimOutcome.poison, job)
    return Claim(ClaimOutcome.claimed, job)


def _claim_slow(
    session: Session,
    job_id: str,
    message_id: str,
    worker: str,
    pid: int,
    claimant_dead: Callable[[Job], bool],
) -> Claim:
    """Why a delivery could not take a queued job, or a takeover from a dead claimant."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return Claim(ClaimOutcome.missing, None)
    if job.task_id != message_id:
        return Claim(ClaimOutcome.stale_message, job)
    if job.status.is_final:
        return Claim(ClaimOutcome.finished, job)
    if job.status == JobStatus.queued and job.deadline is not None and job.deadline < utcnow():
        moved = _set_status(session, job_id, JobStatus.expired,
                            extra_where=(col(Job.task_id) == message_id,
                                         col(Job.status) == JobStatus.queued),
                            error_type=EXPIRED_ERROR, error_message=expiry_reason(job.deadline),
                            finished_at=utcnow())
        session.commit()
        if moved:
            return Claim(ClaimOutcome.expired, job)
        return _claim_slow(session, job_id, message_id, worker, pid, claimant_dead)
    if job.status != JobStatus.running or not claimant_dead(job):
        return Claim(ClaimOutcome.duplicate, job)
    taken = session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.task_id) == message_id,
               col(Job.status) == JobStatus.running, col(Job.worker) == job.worker,
               col(Job.worker_pid) == job.worker_pid)
        .values(worker=worker, worker_pid=pid, started_at=utcnow(), attempts=Job.attempts + 1)
        .returning(Job)
    ).scalars().first()
    session.commit()
    return Claim(ClaimOutcome.claimed, taken) if taken else Claim(ClaimOutcome.duplicate, job)


def succeed_job(
    *, session: Session, job_id: str, message_id: str, result: dict[str, Any], usage: Usage
) -> bool:
    """Record the result of the attempt that owns the job; False if it no longer does.
    The caller commits, so that effects of the job (a mindspace turn) land with it."""
    result_row = session.connection().execute(_hot.succeed(), {
        "job_id": job_id, "message_id": message_id, "result": result, "now": utcnow(),
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
    })
    return bool(result_row.rowcount)


def owned_of(*, session: Session, attempts: Sequence[tuple[str, str]]
             ) -> set[tuple[str, str]]:
    """Which (job id, message id) attempts still own their running job: one query."""
    if not attempts:
        return set()
    rows = session.execute(
        select(Job.id, Job.task_id).where(col(Job.id).in_([job for job, _ in attempts]),
                                          col(Job.status) == JobStatus.running)
    ).all()
    running = {(job_id, task_id) for job_id, task_id in rows}
    return {attempt for attempt in attempts if attempt in running}


def record_abandoned_usage(*, session: Session, job_id: str, message_id: str, usage: Usage
                           ) -> None:
    """The usage of an attempt whose job was cancelled while it ran."""
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.task_id) == message_id,
               col(Job.status) == JobStatus.cancelled, col(Job.prompt_tokens).is_(None))
        .values(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens)
    )


def fail_job(
    *, session: Session, job_id: str, message_id: str, error_type: str,
    error_message: str | None
) -> bool:
    moved = _set_status(
        session, job_id, JobStatus.failed,
        extra_where=(col(Job.task_id) == message_id, col(Job.status) == JobStatus.running),
        error_type=error_type, finished_at=utcnow(),
        error_message=None if error_message is None else error_message[:4000],
    )
    return moved


def fail_unsent(*, session: Session, job_id: str, message_id: str, error_message: str
                ) -> bool:
    """A queued job whose message never reached the broker ends failed, so no one waits
    for it forever. False if it is no longer queued under that message (a worker took
    it after all)."""
    return _set_status(
        session, job_id, JobStatus.failed,
        extra_where=(col(Job.task_id) == message_id, col(Job.status) == JobStatus.queued),
        error_type="BrokerUnavailable", error_message=error_message[:4000],
        finished_at=utcnow(),
    )


def fail_attempt(*, session: Session, job_id: str, message_id: str, worker: str,
                 error_type: str, error_message: str | None) -> bool:
    """The attempt ``message_id`` ends failed whether its claim committed or not (a
    queued job goes through `running`, as the state machine requires). False if that
    attempt no longer owns the job."""
    _set_status(session, job_id, JobStatus.running,
                extra_where=(col(Job.task_id) == message_id, col(Job.status) == JobStatus.queued),
                worker=worker, started_at=utcnow())
    return fail_job(session=session, job_id=job_id, message_id=message_id,
                    error_type=error_type, error_message=error_message)


def job_header(*, session: Session, job_id: str) -> JobHeader | None:
    row = session.execute(
        sa_select(col(Job.kind), col(Job.mindspace_id), col(Job.batch_id),
                  col(Job.webhook_url), col(Job.parent_id))
        .where(col(Job.id) == job_id)).first()
    return None if row is None else JobHeader(job_id, *row)


def job_status(*, session: Session, job_id: str) -> JobStatus | None:
    """The job's status alone (its payload is not read), or None for no such job."""
    return session.execute(select(Job.status).where(col(Job.id) == job_id)).scalar_one_or_none()


def requeue_job(*, session: Session, job: Job) -> str | None:
    """Give a running job whose worker died a new attempt; the new message id, or None
    when another reaper, a new claim of the same message (a redelivery after its pool
    process was killed) or the job's end got there first."""
    new_task_id = new_id()
    moved = _set_status(
        session, job.id, JobStatus.queued,
        extra_where=(col(Job.task_id) == job.task_id, col(Job.status) == JobStatus.running,
                     col(Job.attempts) == job.attempts),
        task_id=new_task_id, worker=None, worker_pid=None, started_at=None, queued_at=utcnow(),
    )
    session.commit()
    return new_task_id if moved else None


def queued_longer_than(*, session: Session, grace_s: float, limit: int) -> list[Job]:
    """Queued jobs whose current message was made over ``grace_s`` ago, oldest first.
    A job held for the dispatcher has no message yet: it is the dispatcher's to send."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    since = func.coalesce(col(Job.queued_at), col(Job.created_at))
    return list(session.exec(select(Job).where(Job.status == JobStatus.queued, since < cutoff,
                                               col(Job.held_since).is_(None))
                             .order_by(since).limit(limit)))


def queued_in(*, session: Session, queues: list[str], limit: int) -> list[Job]:
    """Queued jobs of ``queues`` that have a message (a job held for the dispatcher has
    none yet), oldest first."""
    since = func.coalesce(col(Job.queued_at), col(Job.created_at))
    return list(session.exec(select(Job).where(
        Job.status == JobStatus.queued, col(Job.queue).in_(queues),
        col(Job.held_since).is_(None)).order_by(since).limit(limit)))


def renew_message(*, session: Session, job: Job) -> str | None:
    """A queued job whose message the broker lost gets a new message id (any copy of
    the old one that turns up is stale); None if it was claimed or changed meanwhile."""
    new_task_id = renew_queued(session, job, queued_at=utcnow())
    session.commit()
    return new_task_id


def queued_on(*, session: Session, queue: str) -> list[Job]:
    query = select(Job).where(Job.queue == queue, Job.status == JobStatus.queued)
    return list(session.exec(query))


def reroute_job(*, session: Session, job: Job, queue: str) -> str | None:
    """Send a queued job to another queue under a new message id (the old message, if
    it is ever delivered, is stale); None if it was taken or cancelled meanwhile."""
    new_task_id = renew_queued(session, job, queue=queue, queued_at=utcnow())
    session.commit()
    return new_task_id


# -- the turns of a mindspace (their order: llmos_jobs.services.turns) ---------------------------


def turn_in_progress(*, session: Session, mindspace_id: str) -> bool:
    """Whether a turn of the mindspace is queued or running."""
    return session.exec(select(Job.id).where(
        Job.mindspace_id == mindspace_id,
        col(Job.status).in_([JobStatus.queued, JobStatus.running])).limit(1)).first() is not None


def first_waiting_turn(*, session: Session, mindspace_id: str) -> Job | None:
    return session.exec(
        select(Job).where(Job.mindspace_id == mindspace_id, Job.status == JobStatus.waiting)
        .order_by(col(Job.mindspace_seq)).limit(1)
        .execution_options(populate_existing=True)).first()


def release_turn(*, session: Session, job: Job, queue: str) -> bool:
    """A waiting turn becomes queued on ``queue``; False if it is no longer waiting."""
    moved = _set_status(session, job.id, JobStatus.queued,
                        extra_where=(col(Job.status) == JobStatus.waiting,), queue=queue,
                        queued_at=utcnow())
    if moved:
        job.status, job.queue = JobStatus.queued, queue
    return moved


def cancel_unfinished(*, session: Session, which: ColumnElement[bool], error_type: str,
                      error_message: str) -> int:
    """Every job ``which`` selects that is waiting, queued or running ends cancelled with
    the reason (a running one stops at its next cancellation check). How many."""
    return int(session.execute(
        update(Job)
        .where(which, col(Job.status).in_(JOBS.sources_of(JobStatus.cancelled)))
        .values(status=JobStatus.cancelled, error_type=error_type,
                error_message=error_message, finished_at=utcnow())
    ).rowcount)  # type: ignore[attr-defined]


def cancel_unfinished_turns(*, session: Session, mindspace_id: str, error_type: str,
                            error_message: str) -> int:
    """Every unfinished turn of the mindspace ends cancelled with the reason."""
    return cancel_unfinished(session=session, which=col(Job.mindspace_id) == mindspace_id,
                             error_type=error_type, error_message=error_message)


def running_jobs_of(*, session: Session, worker: str) -> list[Job]:
    query = select(Job).where(Job.worker == worker, Job.status == JobStatus.running)
    return list(session.exec(query))


def note_redactions(*, session: Session, job_id: str, message_id: str, rules: Sequence[str]
                    ) -> None:
    """Name on the job the redaction rules that changed its text (with its success)."""
    session.execute(update(Job).where(col(Job.id) == job_id, col(Job.task_id) == message_id)
                    .values(redacted_by=list(rules)))


def filter_job(*, session: Session, job_id: str, message_id: str, rule: str,
               error_message: str) -> bool:
    """The attempt that owns the running job ends it `filtered` by ``rule``; False if
    it no longer owns the job (cancelled meanwhile, or taken over)."""
    return _set_status(
        session, job_id, JobStatus.filtered,
        extra_where=(col(Job.task_id) == message_id, col(Job.status) == JobStatus.running),
        error_type="ContentFiltered", error_message=error_message, filter_rule=rule,
        finished_at=utcnow(),
    )
