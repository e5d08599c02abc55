"""Compare-and-set state changes, one for every state machine (llmos_jobs.states): an
UPDATE that moves a row to ``target`` only from a state its machine allows, and only
while the extra conditions still hold; whoever's UPDATE matched the row moved it. And
the one compare-and-set that gives a queued job a new message id."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, update
from sqlmodel import Session, SQLModel, col

from llmos_jobs.db.tables import Job, new_id
from llmos_jobs.states import StateMachine
from schemas.common import JobStatus

S = TypeVar("S", bound=StrEnum)


def move(session: Session, table: type[SQLModel], state: str, row: ColumnElement[bool],
         machine: StateMachine[S], target: S, *where: ColumnElement[bool],
         **values: Any) -> bool:
    """Move ``row`` of ``table`` to ``target`` if its ``state`` column holds a state
    that ``machine`` allows to enter it (also setting ``values``); True if it moved. Not
    committed: the caller's transaction decides."""
    column = getattr(table, state)
    statement = (
        update(table)
        .where(row, column.in_(sorted(machine.sources_of(target))), *where)
        .values({state: target, **values})
    )
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def renew_queued(session: Session, job: Job, **values: Any) -> str | None:
    """Give the queued ``job`` a new message id (and ``values``), if it still holds the
    message id ``job`` says: any copy of its old message that turns up is then stale and
    dropped at its claim. The new id; None if the job was claimed, cancelled or renewed
    meanwhile. Not committed."""
    new_task_id = new_id()
    statement = (update(Job)
                 .where(col(Job.id) == job.id, col(Job.task_id) == job.task_id,
                        col(Job.status) == JobStatus.queued)
                 .values(task_id=new_task_id, **values))
    moved = session.execute(statement).rowcount  # type: ignore[attr-defined]
    return new_task_id if moved else None
