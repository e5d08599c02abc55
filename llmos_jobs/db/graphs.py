"""Rows of job graphs: a parent, its children level by level, how far it has come, and
the compare-and-set moves that create each level once and end the parent once
(llmos_jobs.services.graphs holds the logic)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from llmos_jobs.db.jobs import cancel_unfinished
from llmos_jobs.db.moves import move
from llmos_jobs.db.tables import GraphProgress, GraphRole, Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.states import JOBS
from schemas.common import JobStatus, Usage


def start_parent(*, session: Session, job_id: str) -> bool:
    """A parent just created `queued` runs at once (it is never sent: its children are),
    in the transaction that creates it, so no one sees it queued."""
    return move(session, Job, "status", col(Job.id) == job_id, JOBS, JobStatus.running,
                col(Job.status) == JobStatus.queued, started_at=utcnow(), graph_level=0)


def children(*, session: Session, parent_id: str, level: int | None = None) -> list[Job]:
    """The parent's children (of one level), in order."""
    query = select(Job).where(Job.parent_id == parent_id)
    if level is not None:
        query = query.where(Job.graph_level == level)
    return list(session.exec(query.order_by(col(Job.graph_level), col(Job.graph_index))
                             .execution_options(populate_existing=True)))


def next_level(*, session: Session, parent_id: str, level: int) -> bool:
    """The running parent moves from ``level`` to the next; True for the one caller whose
    update did it (two children ending at once, a hook run twice, the reconciler)."""
    moved = session.execute(
        update(Job).where(col(Job.id) == parent_id, col(Job.graph_level) == level,
                          col(Job.status) == JobStatus.running)
        .values(graph_level=level + 1)).rowcount  # type: ignore[attr-defined]
    return bool(moved)


def succeed_parent(*, session: Session, parent_id: str, result: dict[str, Any],
                   usage: Usage) -> bool:
    return move(session, Job, "status", col(Job.id) == parent_id, JOBS, JobStatus.succeeded,
                col(Job.status) == JobStatus.running, result=result, finished_at=utcnow(),
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens)


def fail_parent(*, session: Session, parent_id: str, error_type: str, error_message: str
                ) -> bool:
    return move(session, Job, "status", col(Job.id) == parent_id, JOBS, JobStatus.failed,
                col(Job.status) == JobStatus.running, error_type=error_type,
                error_message=error_message[:4000], finished_at=utcnow())


def cancel_children(*, session: Session, parent_id: str, error_type: str,
                    error_message: str) -> int:
    """Every child of the parent that has not ended ends cancelled with the reason."""
    return cancel_unfinished(session=session, which=col(Job.parent_id) == parent_id,
                             error_type=error_type, error_message=error_message)


def progress_of(*, session: Session, parents: Sequence[Job]) -> dict[str, GraphProgress]:
    """How far each graph parent among ``parents`` has come: one query."""
    levels = {p.id: p.graph_level or 0 for p in parents if p.graph_role == GraphRole.parent}
    if not levels:
        return {}
    rows = session.execute(
        select(Job.parent_id, Job.graph_role, Job.status, func.count())
        .where(col(Job.parent_id).in_(list(levels)))
        .group_by(col(Job.parent_id), col(Job.graph_role), col(Job.status))).all()
    counts: dict[str, Counter[JobStatus]] = {p: Counter() for p in levels}
    reducing: set[str] = set()
    for parent_id, role, status, number in rows:
        counts[parent_id][JobStatus(status)] += number
        if role == GraphRole.reduce:
            reducing.add(parent_id)
    return {parent_id: GraphProgress(
        level=levels[parent_id],
        stage=GraphRole.reduce if parent_id in reducing else GraphRole.part,
        total=sum(tally.values()),
        done=sum(n for status, n in tally.items() if status.is_final),
        succeeded=tally[JobStatus.succeeded],
    ) for parent_id, tally in counts.items()}


def running_parents(*, session: Session, older_than_s: float, limit: int) -> list[str]:
    """Graph parents still running, started over ``older_than_s`` ago."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(session.exec(
        select(Job.id).where(Job.graph_role == GraphRole.parent,
                             Job.status == JobStatus.running, col(Job.started_at) < cutoff)
        .order_by(col(Job.started_at)).limit(limit)))
