"""Tables of webhook callbacks: each tenant's signing secret, one delivery per event,
one row per attempt. Imported by ``llmos_jobs.db.tables`` so that the metadata (and
the migration check) always holds them."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from llmos_jobs.crypto import EncryptedJSON, EncryptedText
from llmos_jobs.db.types import UTCDateTime, utcnow


def new_delivery_id() -> str:
    # The Standard Webhooks `webhook-id`: stable over every attempt of one event, so
    # that receivers can drop the duplicates that at-least-once delivery brings.
    return f"msg_{uuid.uuid4().hex}"


class DeliveryStatus(StrEnum):
    pending = "pending"  # queued, or waiting for its next attempt
    delivered = "delivered"  # a 2xx answer
    failed = "failed"  # the retry schedule ran out
    gone = "gone"  # the receiver answered 410 Gone: never retried


class WebhookSecret(SQLModel, table=True):
    __tablename__ = "webhook_secret"

    tenant: str = Field(primary_key=True)
    secret: str = Field(sa_type=EncryptedText)  # whsec_<base64>
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class WebhookSecretPublic(SQLModel):
    tenant: str
    secret: str
    created_at: datetime


class WebhookDelivery(SQLModel, table=True):
    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_tenant_created_at", "tenant", "created_at"),)

    id: str = Field(default_factory=new_delivery_id, primary_key=True)
    tenant: str = Field(index=True)
    job_id: str | None = Field(default=None, index=True)
    event_type: str
    url: str
    # Encrypted at rest: a job event carries the job's output.
    payload: dict[str, Any] = Field(sa_column=Column(EncryptedJSON, nullable=False))
    status: DeliveryStatus = Field(default=DeliveryStatus.pending, index=True)
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WebhookAttempt(SQLModel, table=True):
    __tablename__ = "webhook_attempt"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(index=True, foreign_key="webhook_delivery.id", ondelete="CASCADE")
    number: int
    attempted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class WebhookAttemptPublic(SQLModel):
    number: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookDeliveryPublic(SQLModel):
    """A delivery as `llmos webhook deliveries --json` shows it (never the payload)."""

    id: str
    tenant: str
    job_id: str | None
    event_type: str
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[WebhookAttemptPublic] = Field(default_factory=list)
