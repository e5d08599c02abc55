"""API keys (operators' and tenants') and the audit log of what each key did."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field as PField
from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from llmos_jobs.db.types import UTCDateTime, utcnow


def _new_id() -> str:
    return uuid.uuid4().hex


class ApiKeyBase(SQLModel):
    # None: an operator's key (models, workers, every tenant's keys); else the tenant's own.
    tenant: str | None = Field(default=None, index=True, min_length=1)
    name: str | None = Field(default=None, max_length=128)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ApiKeyCreate(ApiKeyBase):
    prefix: str
    key_hash: str


class ApiKey(ApiKeyBase, table=True):
    """Of the secret only its SHA-256 digest is kept; ``prefix`` (its first characters,
    not secret) finds the row and names the key in listings."""

    __tablename__ = "api_key"

    id: str = Field(default_factory=_new_id, primary_key=True)
    prefix: str = Field(index=True)
    key_hash: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class ApiKeyPublic(ApiKeyBase):
    id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyIssued(ApiKeyPublic):
    key: str = PField(description="the secret itself; shown once, never stored")


class AuditEventBase(SQLModel):
    # None when the caller could not be identified (a missing or unknown key).
    tenant: str | None = Field(default=None)
    key_id: str | None = None
    # Who acted without a key: the CLI's or the Python client's user@host.
    actor: str | None = Field(default=None, max_length=255)
    action: str = Field(index=True)
    resource_id: str | None = None
    outcome: str  # ok | denied | error
    status_code: int


class AuditEvent(AuditEventBase, table=True):
    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_tenant_created_at", "tenant", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True
    )


class AuditEventPublic(AuditEventBase):
    id: int
    created_at: datetime
