"""Tables of idempotency keys and of per-tenant retention policies."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from llmos_jobs.crypto import EncryptedText
from llmos_jobs.db.types import UTCDateTime, utcnow


class IdempotencyRecord(SQLModel, table=True):
    """One ``Idempotency-Key`` of a tenant. The unique constraint on (tenant, key) is
    what makes two concurrent requests with one key create one object: the second
    insert fails, whatever the two read before. ``status_code`` None: the first request
    is still running. (A one-column primary key of its own: the key ring's rotation
    pages through encrypted tables by it.)"""

    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("tenant", "key", name="uq_idempotency_key_tenant_key"),)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, primary_key=True)
    tenant: str = Field(max_length=128)
    key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    # What the request was, for the message that refuses a different one.
    request: str = Field(max_length=300)
    status_code: int | None = None
    # Encrypted at rest: an answer can quote the prompt.
    response: str | None = Field(default=None, sa_type=EncryptedText)
    content_type: str | None = Field(default=None, max_length=128)
    resource_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class RetentionPolicyBase(SQLModel):
    """Days each kind of content is kept; None: the deployment's default
    (LLMOS_RETENTION_*)."""

    jobs_days: float | None = Field(default=None, gt=0)
    files_days: float | None = Field(default=None, gt=0)
    audit_days: float | None = Field(default=None, gt=0)
    webhooks_days: float | None = Field(default=None, gt=0)


class RetentionPolicy(RetentionPolicyBase, table=True):
    __tablename__ = "retention_policy"

    tenant: str = Field(primary_key=True, max_length=128)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class RetentionPolicyPublic(SQLModel):
    """A tenant's retention as it applies: its own days where it set them, else the
    deployment's defaults; ``overridden`` names the kinds the tenant set."""

    tenant: str
    jobs_days: float
    files_days: float
    audit_days: float
    webhooks_days: float
    overridden: list[str]
