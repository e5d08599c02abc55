"""CRUD of mindspaces. The tenant is a required argument of every function: another
tenant's mindspace answers "not found"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, delete, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from llmos_jobs.db.jobs import cancel_unfinished_turns
from llmos_jobs.db.tables import (
    Job,
    KnowledgeChunk,
    MessagePublic,
    Mindspace,
    MindspaceBase,
    MindspaceCompaction,
    MindspaceMessage,
    MindspacePublic,
    MindspaceSettings,
    MindspaceSnapshot,
    SnapshotPublic,
)
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import NotFound
from schemas.common import JobKind, JobStatus

SCRUBBED: dict[str, Any] = {"scrubbed": True}


def create_mindspace(*, session: Session, mindspace_in: MindspaceBase,
                     worker: str | None = None) -> Mindspace:
    """``worker``: where it is placed from the start (whose prefix cache is given its
    persona), or None until its first turn."""
    row = Mindspace.model_validate(mindspace_in, update={"worker": worker})
    session.add(row)
    session.flush()
    return row


def get_mindspace(*, session: Session, tenant: str, mindspace_id: str) -> Mindspace:
    row = session.exec(
        select(Mindspace).where(Mindspace.id == mindspace_id, Mindspace.tenant == tenant)
    ).first()
    if row is None:
        raise NotFound(f"mindspace {mindspace_id} not found")
    return row


def list_mindspaces(*, session: Session, tenant: str) -> list[Mindspace]:
    query = select(Mindspace).where(Mindspace.tenant == tenant)
    return list(session.exec(query.order_by(col(Mindspace.created_at))))


def configure(*, session: Session, tenant: str, mindspace_id: str, persona: str | None,
              settings: dict[str, Any]) -> Mindspace:
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    if persona is not None:
        row.persona = persona or None
    row.settings = MindspaceSettings.model_validate({**row.settings, **settings}).model_dump()
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def lock_turns(*, session: Session, mindspace_id: str) -> bool:
    """Hold the mindspace's row lock until the transaction ends; False if it is gone.

    Every decision about which turn of a mindspace runs next is taken under this lock,
    and every transaction that accepts or ends a turn takes it before it writes any job
    row, so two of them never wait on each other. It is a write, not SELECT ... FOR
    UPDATE, because on SQLite only a write takes the database's write lock; on
    PostgreSQL each statement after it sees every transaction that held it before."""
    statement = (update(Mindspace).where(col(Mindspace.id) == mindspace_id)
                 .values(next_seq=Mindspace.next_seq))
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def next_turn(*, session: Session, mindspace: Mindspace) -> int:
    """The sequence number of a new turn (turns run in this order). Takes the lock of
    ``lock_turns`` too, and refreshes ``mindspace.worker`` as it stands under the lock
    (where its previous turn ran), so that the turn is routed without another read."""
    statement = (update(Mindspace).where(col(Mindspace.id) == mindspace.id)
                 .values(next_seq=Mindspace.next_seq + 1)
                 .returning(col(Mindspace.next_seq), col(Mindspace.worker)))
    row = session.execute(statement).first()
    if row is None:  # destroyed since it was read
        raise NotFound(f"mindspace {mindspace.id} not found")
    seq, worker = row
    set_committed_value(mindspace, "worker", worker)
    return int(seq) - 1


def list_messages(*, session: Session, tenant: str, mindspace_id: str,
                  include_compacted: bool = True) -> list[MindspaceMessage]:
    query = select(MindspaceMessage).where(MindspaceMessage.mindspace_id == mindspace_id,
                                           MindspaceMessage.tenant == tenant)
    if not include_compacted:
        query = query.where(col(MindspaceMessage.compacted).is_(False))
    return list(session.exec(query.order_by(col(MindspaceMessage.id))))


def append_turn(*, session: Session, mindspace_id: str, tenant: str, user: str,
                assistant: str, job_id: str, worker: str,
                model_version: int | None = None) -> None:
    """Both halves of a turn land in one transaction, or neither does; the mindspace is
    placed on ``worker``, whose prefix cache now holds its prompt (the next turn is
    routed there), and records the model version that served the turn. NotFound if the
    mindspace was destroyed meanwhile."""
    placed = session.execute(
        update(Mindspace).where(col(Mindspace.id) == mindspace_id, col(Mindspace.tenant) == tenant)
        .values(updated_at=utcnow(), worker=worker, model_version=model_version)).rowcount  # type: ignore[attr-defined]
    if not placed:
        raise NotFound(f"mindspace {mindspace_id} not found")
    for role, content in (("user", user), ("assistant", assistant)):
        session.add(MindspaceMessage(mindspace_id=mindspace_id, tenant=tenant, role=role,
                                     content=content, job_id=job_id))
    session.flush()


def compact(*, session: Session, mindspace_id: str, tenant: str, through: MindspaceMessage,
            count: int) -> None:
    """Take every message up to ``through`` out of prompts, behind one marker."""
    session.execute(
        update(MindspaceMessage)
        .where(col(MindspaceMessage.mindspace_id) == mindspace_id,
               col(MindspaceMessage.id) <= (through.id or 0),
               col(MindspaceMessage.compacted).is_(False))
        .values(compacted=True))
    session.add(MindspaceCompaction(mindspace_id=mindspace_id, tenant=tenant,
                                    messages=count, through_message=through.id or 0,
                                    method="truncate"))
    session.flush()


def compactions(*, session: Session, tenant: str, mindspace_id: str) -> list[MindspaceCompaction]:
    query = select(MindspaceCompaction).where(
        MindspaceCompaction.mindspace_id == mindspace_id, MindspaceCompaction.tenant == tenant)
    return list(session.exec(query.order_by(col(MindspaceCompaction.id))))


def show_mindspace(*, session: Session, tenant: str, mindspace_id: str) -> MindspacePublic:
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    messages = list_messages(session=session, tenant=tenant, mindspace_id=mindspace_id)
    documents = session.exec(
        select(KnowledgeChunk.document).where(KnowledgeChunk.mindspace_id == mindspace_id)
        .distinct()).all()
    return MindspacePublic(
        **row.model_dump(exclude={"settings"}), settings=MindspaceSettings(**row.settings),
        messages=[MessagePublic.model_validate(m, from_attributes=True) for m in messages],
        documents=sorted(documents),
    )


# -- knowledge ----------------------------------------------------------------------------


def add_chunks(*, session: Session, chunks: list[KnowledgeChunk]) -> None:
    session.add_all(chunks)
    session.flush()


def chunks_of(*, session: Session, tenant: str, mindspace_id: str) -> list[KnowledgeChunk]:
    query = select(KnowledgeChunk).where(KnowledgeChunk.mindspace_id == mindspace_id,
                                         KnowledgeChunk.tenant == tenant)
    return list(session.exec(query.order_by(col(KnowledgeChunk.id))))


def remove_document(*, session: Session, tenant: str, mindspace_id: str, document: str) -> int:
    get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    result = session.execute(delete(KnowledgeChunk).where(
        col(KnowledgeChunk.mindspace_id) == mindspace_id, col(KnowledgeChunk.document) == document))
    count = int(result.rowcount)  # type: ignore[attr-defined]
    if not count:
        raise NotFound(f"document {document!r} not found in mindspace {mindspace_id}")
    return count


# -- snapshots, restore, fork ------------------------------------------------------------------


def _state(session: Session, row: Mindspace) -> dict[str, Any]:
    """Everything a mindspace holds, as one JSON document."""
    return {
        "model": row.model, "name": row.name, "persona": row.persona, "settings": row.settings,
        "messages": [{"role": m.role, "content": m.content, "job_id": m.job_id,
                      "compacted": m.compacted}
                     for m in list_messages(session=session, tenant=row.tenant,
                                            mindspace_id=row.id)],
        "chunks": [{"document": c.document, "title": c.title, "position": c.position,
                    "text": c.text, "embedding": c.embedding.hex(),
                    "document_bytes": c.document_bytes}
                   for c in chunks_of(session=session, tenant=row.tenant, mindspace_id=row.id)],
    }


def snapshot(*, session: Session, tenant: str, mindspace_id: str, name: str | None
             ) -> MindspaceSnapshot:
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    snap = MindspaceSnapshot(mindspace_id=row.id, tenant=tenant, name=name,
                             data=_state(session, row), model_version=row.model_version)
    session.add(snap)
    session.flush()
    return snap


def snapshots(*, session: Session, tenant: str, mindspace_id: str) -> list[SnapshotPublic]:
    get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    query = select(MindspaceSnapshot).where(MindspaceSnapshot.mindspace_id == mindspace_id,
                                            MindspaceSnapshot.tenant == tenant)
    return [SnapshotPublic(id=s.id, mindspace_id=s.mindspace_id, name=s.name,
                           messages=len(s.data["messages"]), created_at=s.created_at,
                           model_version=s.model_version)
            for s in session.exec(query.order_by(col(MindspaceSnapshot.created_at)))]


def _materialise(session: Session, tenant: str, state: dict[str, Any], source: str
                 ) -> Mindspace:
    row = Mindspace(tenant=tenant, name=state["name"], model=state["model"],
                    persona=state["persona"], settings=state["settings"], forked_from=source)
    session.add(row)
    session.flush()
    session.add_all(MindspaceMessage(mindspace_id=row.id, tenant=tenant, role=m["role"],
                                     content=m["content"], job_id=m["job_id"],
                                     compacted=m["compacted"]) for m in state["messages"])
    session.add_all(KnowledgeChunk(mindspace_id=row.id, tenant=tenant, document=c["document"],
                                   title=c["title"], position=c["position"], text=c["text"],
                                   embedding=bytes.fromhex(c["embedding"]),
                                   document_bytes=c.get("document_bytes"))
                    for c in state["chunks"])
    session.flush()
    return row


def restore(*, session: Session, tenant: str, snapshot_id: str) -> Mindspace:
    """A new mindspace holding the snapshot's state; the original is untouched."""
    snap = session.exec(select(MindspaceSnapshot).where(
        MindspaceSnapshot.id == snapshot_id, MindspaceSnapshot.tenant == tenant)).first()
    if snap is None:
        raise NotFound(f"snapshot {snapshot_id} not found")
    return _materialise(session, tenant, snap.data, snap.mindspace_id)


def fork(*, session: Session, tenant: str, mindspace_id: str) -> Mindspace:
    """A new mindspace sharing the history up to now; each goes its own way after."""
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    return _materialise(session, tenant, _state(session, row), row.id)


def destroy_mindspace(*, session: Session, tenant: str, mindspace_id: str) -> None:
    """Remove the mindspace and every text of it: history, knowledge, snapshots, and the
    prompts and replies of its turn jobs (the job rows stay, scrubbed, for accounting).
    Its unfinished turns end cancelled, saying why; none is accepted after."""
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    if not lock_turns(session=session, mindspace_id=mindspace_id):
        raise NotFound(f"mindspace {mindspace_id} not found")  # destroyed meanwhile
    cancel_unfinished_turns(
        session=session, mindspace_id=mindspace_id, error_type="MindspaceDestroyed",
        error_message=f"mindspace {mindspace_id} was destroyed before this turn finished")
    for table in (MindspaceMessage, KnowledgeChunk, MindspaceSnapshot, MindspaceCompaction):
        session.execute(delete(table).where(col(table.mindspace_id) == mindspace_id))
    session.execute(update(Job).where(col(Job.mindspace_id) == mindspace_id)
                    .values(payload=SCRUBBED, result=None))
    session.delete(row)
    session.flush()



def turn_totals(*, session: Session, tenant: str, mindspace_id: str) -> tuple[int, int, int]:
    """The mindspace's turns that succeeded, and the prompt and completion tokens of all
    its turns so far."""
    succeeded = func.coalesce(func.sum(case((col(Job.status) == JobStatus.succeeded, 1),
                                            else_=0)), 0)
    row = session.execute(
        sa_select(succeeded, func.coalesce(func.sum(col(Job.prompt_tokens)), 0),
                  func.coalesce(func.sum(col(Job.completion_tokens)), 0))
        .where(col(Job.tenant) == tenant, col(Job.mindspace_id) == mindspace_id,
               col(Job.kind) == JobKind.mindspace_turn)).one()
    return int(row[0]), int(row[1]), int(row[2])
