"""CRUD of mindspaces. The tenant is a required argument of every function: another
tenant's mindspace answers "not found"."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import Session, col, select

from llmos_jobs.db.models import (
    MessagePublic,
    Mindspace,
    MindspaceBase,
    MindspaceMessage,
    MindspacePublic,
)
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import NotFound


def create_mindspace(*, session: Session, mindspace_in: MindspaceBase) -> Mindspace:
    row = Mindspace.model_validate(mindspace_in)
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


def list_messages(*, session: Session, tenant: str, mindspace_id: str) -> list[MindspaceMessage]:
    query = (
        select(MindspaceMessage)
        .where(MindspaceMessage.mindspace_id == mindspace_id, MindspaceMessage.tenant == tenant)
        .order_by(col(MindspaceMessage.id))
    )
    return list(session.exec(query))


def append_turn(
    *, session: Session, mindspace: Mindspace, user: str, assistant: str, job_id: str
) -> None:
    """Both halves of a turn land in one transaction, or neither does."""
    for role, content in (("user", user), ("assistant", assistant)):
        session.add(
            MindspaceMessage(
                mindspace_id=mindspace.id, tenant=mindspace.tenant, role=role,
                content=content, job_id=job_id,
            )
        )
    mindspace.updated_at = utcnow()
    session.add(mindspace)
    session.flush()


def show_mindspace(*, session: Session, tenant: str, mindspace_id: str) -> MindspacePublic:
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    messages = list_messages(session=session, tenant=tenant, mindspace_id=mindspace_id)
    return MindspacePublic(
        **row.model_dump(),
        messages=[MessagePublic.model_validate(m, from_attributes=True) for m in messages],
    )


def destroy_mindspace(*, session: Session, tenant: str, mindspace_id: str) -> None:
    row = get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    session.execute(
        delete(MindspaceMessage).where(col(MindspaceMessage.mindspace_id) == mindspace_id)
    )
    session.delete(row)
    session.flush()
