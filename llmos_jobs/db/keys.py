"""CRUD of API keys. Rows hold a key's digest, never the key itself (see
llmos_jobs/services/api_keys.py)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from llmos_jobs.db.tables import ApiKey, ApiKeyCreate
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import NotFound


def create_api_key(*, session: Session, key_in: ApiKeyCreate) -> ApiKey:
    row = ApiKey.model_validate(key_in)
    session.add(row)
    session.flush()
    return row


def keys_with_prefix(*, session: Session, prefix: str) -> list[ApiKey]:
    """Every key, revoked ones too, whose public prefix is ``prefix``: the caller
    compares digests itself, so that a revoked key takes the same path as a live one."""
    return list(session.exec(select(ApiKey).where(ApiKey.prefix == prefix)))


def list_api_keys(*, session: Session, tenant: str | None = None) -> list[ApiKey]:
    """The keys of ``tenant``, or of every tenant when None (an operator's view)."""
    query = select(ApiKey)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.exec(query.order_by(col(ApiKey.created_at).desc())))


def get_api_key(*, session: Session, key_id: str, tenant: str | None = None) -> ApiKey:
    query = select(ApiKey).where(ApiKey.id == key_id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    row = session.exec(query).first()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return row


def revoke_api_key(*, session: Session, key_id: str, tenant: str | None = None) -> ApiKey:
    """Revoke a key; revoking it again keeps the first revocation time."""
    row = get_api_key(session=session, key_id=key_id, tenant=tenant)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
    return row
