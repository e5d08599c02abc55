"""The content filters of each tenant. Imported by ``llmos_jobs.db.tables`` so that the
metadata (and the migration check) always holds it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from llmos_jobs.crypto import EncryptedJSON
from llmos_jobs.db.types import UTCDateTime, utcnow


class TenantFilterRow(SQLModel, table=True):
    """One row per tenant that has rules; a tenant without one gets the defaults
    (``schemas.filters.TenantFilters()``)."""

    __tablename__ = "tenant_filters"

    tenant: str = Field(primary_key=True)
    # Encrypted at rest: block lists and patterns say what a tenant fears to see, and
    # may quote it (a customer's name, a project's code word).
    rules: dict[str, Any] = Field(sa_column=Column(EncryptedJSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
