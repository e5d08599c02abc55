"""Turns of one mindspace run one at a time, in the order they were accepted, each once.

A turn is accepted `waiting`: its job row holds its place in line and no message exists
for it, so nothing circulates through the broker while it waits. It is *released*
(routed, made `queued`, its message published once the transaction commits) only when
no turn of its mindspace is queued or running.

Who releases is decided under the mindspace's row lock (``db.mindspaces.lock_turns``),
taken first by every transaction that accepts or ends a turn: the producer whose turn
arrives at an idle mindspace, or whoever ends the turn before it (the worker that
finishes or fails it, a cancel, a producer whose message never left). Whoever holds the
lock sees every turn committed before it, and whoever comes after sees what it
released: each turn is released exactly once, and none is left behind a finished one.
Whoever finds the mindspace idle releases its earliest waiting turn, not necessarily
its own, so a turn left behind anyway (its predecessor ended in a transaction that
released nothing) goes with the next turn accepted or ended.

A turn is routed when released, not when accepted: it goes to the worker that served
the turn before it, whose prefix cache holds the prompt, and that is known only then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from sqlmodel import Session

from llmos_jobs.db import jobs as job_crud
from llmos_jobs.db import mindspaces as ms_crud
from llmos_jobs.db.models import Job, Mindspace
from llmos_jobs.db.session import DatabaseRef, session_scope
from llmos_jobs.routing import route_turn
from schemas.common import JobKind, JobStatus

# Sends the messages of jobs whose transaction has committed (llmos_jobs.dispatch).
Publish = Callable[[Sequence[Job]], None]


class TurnRef(Protocol):
    """What ending a job needs to know of it: whether it is a turn, and of which
    mindspace (a Job, or a header read without its payload)."""

    @property
    def kind(self) -> JobKind: ...

    @property
    def mindspace_id(self) -> str | None: ...


def accept(*, session: Session, mindspace: Mindspace, job_in: job_crud.JobCreate,
           dead_after_s: float) -> tuple[Job, list[Job]]:
    """Put a turn in its mindspace's line, in the caller's transaction. The turn as it
    now stands, and the jobs to publish once the transaction commits (the turn itself
    when its mindspace was idle)."""
    seq = ms_crud.next_turn(session=session, mindspace=mindspace)  # takes the lock
    job = job_crud.create_job(
        session=session, job_in=job_in.model_copy(update={"mindspace_seq": seq}),
        status=JobStatus.waiting)
    released = release_next(session=session, mindspace_id=mindspace.id,
                            dead_after_s=dead_after_s)
    return next((j for j in released if j.id == job.id), job), released


def release_next(*, session: Session, mindspace_id: str, dead_after_s: float) -> list[Job]:
    """With the mindspace's lock held: when none of its turns is queued or running, the
    earliest waiting one is released. The jobs to publish once the transaction commits."""
    if job_crud.turn_in_progress(session=session, mindspace_id=mindspace_id):
        return []
    job = job_crud.first_waiting_turn(session=session, mindspace_id=mindspace_id)
    mindspace = session.get(Mindspace, mindspace_id, populate_existing=True)
    if job is None or job.mindspace_seq is None or mindspace is None:
        return []
    route = route_turn(session=session, mindspace=mindspace, seq=job.mindspace_seq,
                       dead_after_s=dead_after_s)
    if not job_crud.release_turn(session=session, job=job, queue=route.queue):
        return []
    if route.worker is not None:
        ms_crud.place(session=session, mindspace_id=mindspace_id, worker=route.worker)
    return [job]


@contextmanager
def ending(job: TurnRef, *, publish: Publish, dead_after_s: float,
           database_url: DatabaseRef = None) -> Iterator[Session]:
    """A transaction that may end ``job``. For a turn, the mindspace's lock is taken
    before anything else is written, and the next turn is released at the end; what
    was released is published once the transaction commits."""
    released: list[Job] = []
    turn = job.kind == JobKind.mindspace_turn and job.mindspace_id is not None
    with session_scope(database_url) as session:
        locked = turn and ms_crud.lock_turns(session=session, mindspace_id=str(job.mindspace_id))
        yield session
        if locked:
            released = release_next(session=session, mindspace_id=str(job.mindspace_id),
                                    dead_after_s=dead_after_s)
    if released:
        publish(released)


def release_after(job: Job, *, publish: Publish, dead_after_s: float,
                  database_url: DatabaseRef = None) -> None:
    """``job`` ended in a transaction that took no turn lock (a claim that found it
    poison): the next turn of its mindspace, if it was a turn, is released now."""
    with ending(job, publish=publish, dead_after_s=dead_after_s, database_url=database_url):
        pass
