"""A turn in a mindspace: the prompt assembled in a stable order so each turn extends
the previous one and the prefix cache serves it,

    [persona] [marker of compacted history] [history, oldest first]
    [knowledge retrieved for this message] [the new message]

compaction of the oldest history when it outgrows the token budget, and the turn's
effects (history, compaction, placement) written with the job's result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from llmos_jobs.db import mindspaces as ms_crud
from llmos_jobs.db.models import Job, Mindspace, MindspaceMessage, MindspaceSettings
from llmos_jobs.db.session import session_scope
from schemas.common import ChatMessage
from workers.engine import Engine


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
    chunks = ms_crud.chunks_of(session=session, tenant=mindspace.tenant,
                               mindspace_id=mindspace.id)
    if not chunks or k <= 0:
        return None
    from llmos_jobs.knowledge import embedder, top_k

    query = embedder().embed([message])[0]
    best = top_k(query, [c.embedding for c in chunks], k)
    lines = "\n".join(f"- {chunks[i].title}: {chunks[i].text}" for i in best)
    return ChatMessage(role="system", content=f"Relevant knowledge:\n{lines}")


@dataclass
class TurnPrompt:
    messages: list[ChatMessage]
    compaction: Compaction | None


def assemble(job: Job, mindspace_id: str, message: str, engine: Engine) -> TurnPrompt:
    with session_scope() as session:
        mindspace = ms_crud.get_mindspace(session=session, tenant=job.tenant,
                                          mindspace_id=mindspace_id)
        settings = MindspaceSettings(**mindspace.settings)
        history = ms_crud.list_messages(session=session, tenant=job.tenant,
                                        mindspace_id=mindspace_id, include_compacted=False)
        compacted = sum(c.messages for c in ms_crud.compactions(
            session=session, tenant=job.tenant, mindspace_id=mindspace_id))
        plan = plan_compaction(history, settings.context_budget,
                               lambda text: len(engine.tokenize(text)))
        if plan is not None:
            history = history[plan.count:]
            compacted += plan.count
        knowledge = knowledge_message(session, mindspace, message, settings.knowledge_top_k)
    messages = []
    if mindspace.persona:
        messages.append(ChatMessage(role="system", content=mindspace.persona))
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
    """The turn's effects, in the transaction that records the job's success."""
    mindspace = ms_crud.get_mindspace(session=session, tenant=job.tenant,
                                      mindspace_id=mindspace_id)
    if compaction is not None:
        ms_crud.compact(session=session, mindspace=mindspace, through=compaction.through,
                        count=compaction.count)
    ms_crud.append_turn(session=session, mindspace=mindspace, user=message, assistant=reply,
                        job_id=job.id)
    ms_crud.place(session=session, mindspace_id=mindspace_id, worker=worker)
