"""Tables of OpenAI-style batches: uploaded files and the batches made of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from llmos_jobs.crypto import EncryptedJSON, EncryptedText
from llmos_jobs.db.types import UTCDateTime, utcnow
from llmos_jobs.states import BatchStatus


def file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


class StoredFile(SQLModel, table=True):
    """An uploaded input file, or a batch's output or error file (encrypted at rest)."""

    __tablename__ = "stored_file"

    id: str = Field(default_factory=file_id, primary_key=True)
    tenant: str = Field(index=True)
    filename: str
    purpose: str  # batch | batch_output
    bytes: int
    content: str = Field(sa_type=EncryptedText)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Batch(SQLModel, table=True):
    id: str = Field(default_factory=batch_id, primary_key=True)
    tenant: str = Field(index=True)
    # One of llmos_jobs.states.BatchStatus, stored (and read back) as its string.
    status: str = Field(default=BatchStatus.validating.value, index=True)
    endpoint: str
    input_file_id: str
    completion_window: str
    priority: int
    # Told of the batch's end (batch.completed | batch.failed | batch.cancelled).
    webhook_url: str | None = Field(default=None, max_length=2048)
    output_file_id: str | None = None
    error_file_id: str | None = None
    # Lines that failed validation, kept until the error file is written (encrypted at
    # rest: a line's error quotes the line).
    invalid: list[dict[str, Any]] = Field(default_factory=list,
                                          sa_column=Column(EncryptedJSON, nullable=False))
    total: int = 0
    batch_metadata: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    in_progress_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finalizing_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelling_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
