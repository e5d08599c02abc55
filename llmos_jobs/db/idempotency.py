"""CRUD of remembered idempotency keys (``IdempotencyRecord``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from llmos_jobs.db.retention_tables import IdempotencyRecord


def get_record(*, session: Session, tenant: str, key: str) -> IdempotencyRecord | None:
    return session.exec(select(IdempotencyRecord).where(
        col(IdempotencyRecord.tenant) == tenant, col(IdempotencyRecord.key) == key)).first()


def insert_record(*, session: Session, record: IdempotencyRecord) -> bool:
    """Insert a pending record; False when the key is already taken (the unique
    constraint refused it, so of two concurrent inserts exactly one wins)."""
    session.add(record)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def delete_record(*, session: Session, tenant: str, key: str,
                  created_at: datetime | None = None) -> None:
    """Forget a key (only the version made at ``created_at``, when named: an expired
    record is removed without touching one a concurrent request just made)."""
    statement = delete(IdempotencyRecord).where(col(IdempotencyRecord.tenant) == tenant,
                                                 col(IdempotencyRecord.key) == key)
    if created_at is not None:
        statement = statement.where(col(IdempotencyRecord.created_at) == created_at)
    session.execute(statement)


def complete_record(*, session: Session, tenant: str, key: str, status_code: int,
                    response: str | None, content_type: str | None,
                    resource_id: str | None) -> None:
    record = get_record(session=session, tenant=tenant, key=key)
    if record is None:
        return
    record.status_code = status_code
    record.response = response
    record.content_type = content_type
    record.resource_id = resource_id
    session.add(record)
