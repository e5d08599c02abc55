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
the turn before it, whose prefix cache holds the prompt, and that is known only then
(llmos_jobs.services.routing).

The worker that runs a turn assembles its prompt in a stable order, so that each turn
extends the previous one and the prefix cache serves it,

    [persona] [marker of compacted history] [history, oldest first]
    [knowledge retrieved for this message] [the new message]

compacts the oldest history when it outgrows the token budget, and writes the turn's
effects (history, compaction, placement) with the job's result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session

from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import mindspaces as mindspace_rows
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import Job, Mindspace, MindspaceMessage, MindspaceSettings
from llmos_jobs.services.knowledge import embedder, top_k
from llmos_jobs.services.routing import RoutingPolicy, route_turn
from schemas.common import ChatMessage, JobKind, JobStatus

# Sends the messages of jobs whose transaction has committed (llmos_jobs.broker).
Publish = Callable[[Sequence[Job]], None]


class TurnRef(Protocol):
    """What ending a job needs to know of it: whether it is a turn, and of which
    mindspace (a Job, or a header read without its payload)."""

    @property
    def kind(self) -> JobKind: ...

    @property
    def mindspace_id(self) -> str | None: ...


def accept(*, session: Session, mindspace: Mindspace, job_in: job_rows.JobCreate,
           routing: RoutingPolicy) -> tuple[Job, list[Job]]:
    """Put a turn in its mindspace's line, in the caller's transaction. The turn as it
    now stands, and the jobs to publish once the transaction commits (the turn itself
    when its mindspace was idle)."""
    seq = mindspace_rows.next_turn(session=session, mindspace=mindspace)  # takes the lock
    job = job_rows.create_job(
        session=session, job_in=job_in.model_copy(update={"mindspace_seq": seq}),
        status=JobStatus.waiting)
    released = release_next(session=session, mindspace_id=mindspace.id, routing=routing,
                            mindspace=mindspace)
    return next((j for j in released if j.id == job.id), job), released


def release_next(*, session: Session, mindspace_id: str, routing: RoutingPolicy,
                 mindspace: Mindspace | None = None) -> list[Job]:
    """With the mindspace's lock held: when none of its turns is queued or running, the
    earliest waiting one is released (routed to where the previous turn ran). The jobs
    to publish once the transaction commits. ``mindspace``: the row as read under the
    lock already, if it was."""
    if job_rows.turn_in_progress(session=session, mindspace_id=mindspace_id):
        return []
    job = job_rows.first_waiting_turn(session=session, mindspace_id=mindspace_id)
    if job is None or job.mindspace_seq is None:
        return []
    if mindspace is None:
        mindspace = session.get(Mindspace, mindspace_id, populate_existing=True)
    if mindspace is None:
        return []
    route = route_turn(session=session, mindspace=mindspace, seq=job.mindspace_seq,
                       policy=routing)
    if not job_rows.release_turn(session=session, job=job, queue=route.queue):
        return []
    return [job]


@contextmanager
def ending(job: TurnRef, *, publish: Publish, routing: RoutingPolicy,
           database: Database) -> Iterator[Session]:
    """A transaction that may end ``job``. For a turn, the mindspace's lock is taken
    before anything else is written, and the next turn is released at the end; what
    was released is published once the transaction commits."""
    released: list[Job] = []
    turn = job.kind == JobKind.mindspace_turn and job.mindspace_id is not None
    with session_scope(database) as session:
        locked = turn and mindspace_rows.lock_turns(session=session,
                                                    mindspace_id=str(job.mindspace_id))
        yield session
        if locked:
            released = release_next(session=session, mindspace_id=str(job.mindspace_id),
                                    routing=routing)
    if released:
        publish(released)


def release_after(job: TurnRef, *, publish: Publish, routing: RoutingPolicy,
                  database: Database) -> None:
    """``job`` ended in a transaction that took no turn lock (a claim that found it
    poison, a bulk expiry): the next turn of its mindspace, if it was a turn, is
    released now."""
    with ending(job, publish=publish, routing=routing, database=database):
        pass

@dataclass(frozen=True)
class Compaction:
    through: MindspaceMessage
    count: int


def plan_compaction(history: list[MindspaceMessage], budget: int,
                    count_tokens: Callable[[str], int]) -> Compaction | None:
    """Over budget: the oldest whole turns go until half the budget is left, so that
    compaction (which changes the prompt's prefix) happens rarely. Deterministic."""
    sizes = [count_tokens(m.content) + 4 for m in history]
    total = sum(sizes)
    if total <= budget:
        return None
    dropped = 0
    while dropped < len(history) - 2 and total > budget // 2:
        total -= sizes[dropped] + sizes[dropped + 1]
        dropped += 2
    return Compaction(history[dropped - 1], dropped) if dropped else None


def knowledge_message(session: Session, mindspace: Mindspace, message: str, k: int
                      ) -> ChatMessage | None:
    chunks = mindspace_rows.chunks_of(session=session, tenant=mindspace.tenant,
                               mindspace_id=mindspace.id)
    if not chunks or k <= 0:
        return None
    query = embedder().embed([message])[0]
    best = top_k(query, [c.embedding for c in chunks], k)
    lines = "\n".join(f"- {chunks[i].title}: {chunks[i].text}" for i in best)
    return ChatMessage(role="system", content=f"Relevant knowledge:\n{lines}")


def persona_prefix(persona: str | None) -> list[ChatMessage]:
    """The messages every prompt of a mindspace begins with: its persona, as the system
    message (none without one)."""
    return [ChatMessage(role="system", content=persona)] if persona else []


def read_persona_prefix(*, database: Database, tenant: str, mindspace_id: str
                        ) -> list[ChatMessage]:
    """``persona_prefix`` of the mindspace as it stands now (NotFound: gone, or another
    tenant's)."""
    with session_scope(database) as session:
        mindspace = mindspace_rows.get_mindspace(session=session, tenant=tenant,
                                                 mindspace_id=mindspace_id)
        return persona_prefix(mindspace.persona)


@dataclass
class TurnPrompt:
    messages: list[ChatMessage]
    compaction: Compaction | None


def assemble(job: Job, mindspace_id: str, message: str, count_tokens: Callable[[str], int],
             *, database: Database) -> TurnPrompt:
    """The prompt of turn ``job``; ``count_tokens``: the serving engine's token count."""
    with session_scope(database) as session:
        mindspace = mindspace_rows.get_mindspace(session=session, tenant=job.tenant,
                                          mindspace_id=mindspace_id)
        settings = MindspaceSettings(**mindspace.settings)
        history = mindspace_rows.list_messages(session=session, tenant=job.tenant,
                                        mindspace_id=mindspace_id, include_compacted=False)
        compacted = sum(c.messages for c in mindspace_rows.compactions(
            session=session, tenant=job.tenant, mindspace_id=mindspace_id))
        plan = plan_compaction(history, settings.context_budget, count_tokens)
        if plan is not None:
            history = history[plan.count:]
            compacted += plan.count
        knowledge = knowledge_message(session, mindspace, message, settings.knowledge_top_k)
    messages = persona_prefix(mindspace.persona)
    if compacted:
        messages.append(ChatMessage(
            role="system", content=f"[{compacted} earlier messages were compacted]"))
    # Built without validation: a stored reply may legitimately be empty.
    messages += [ChatMessage.model_construct(role=m.role,  # type: ignore[arg-type]
                                             content=m.content) for m in history]
    if knowledge is not None:
        messages.append(knowledge)
    messages.append(ChatMessage(role="user", content=message))
    return TurnPrompt(messages, plan)


def persist_turn(session: Session, job: Job, mindspace_id: str, message: str, reply: str,
                 compaction: Compaction | None, worker: str) -> None:
    """The turn's effects, in the transaction that records the job's success: the
    compaction its prompt planned, both messages, and the mindspace placed on the
    worker that ran it (the one place placement is written)."""
    if compaction is not None:
        mindspace_rows.compact(session=session, mindspace_id=mindspace_id, tenant=job.tenant,
                        through=compaction.through, count=compaction.count)
    mindspace_rows.append_turn(session=session, mindspace_id=mindspace_id, tenant=job.tenant,
                        user=message, assistant=reply, job_id=job.id, worker=worker,
                        model_version=job.model_version)
