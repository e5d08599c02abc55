"""CRUD of the audit log: rows are appended, never changed."""

from __future__ import annotations

from sqlmodel import Session, col, select

from llmos_jobs.db.tables import AuditEvent, AuditEventBase


def record_event(*, session: Session, event_in: AuditEventBase) -> AuditEvent:
    row = AuditEvent.model_validate(event_in)
    session.add(row)
    session.flush()
    return row


def list_events(*, session: Session, tenant: str | None = None, limit: int = 50
                ) -> list[AuditEvent]:
    """The newest events first; of one tenant, or of all when ``tenant`` is None."""
    query = select(AuditEvent)
    if tenant is not None:
        query = query.where(AuditEvent.tenant == tenant)
    query = query.order_by(col(AuditEvent.created_at).desc(), col(AuditEvent.id).desc())
    return list(session.exec(query.limit(limit)))
