"""Compare-and-set state changes, one for every state machine (llmos_jobs.states): an
UPDATE that moves a row to ``target`` only from a state its machine allows, and only
while the extra conditions still hold; whoever's UPDATE matched the row moved it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, update
from sqlmodel import Session, SQLModel

from llmos_jobs.states import StateMachine

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
