"""The scheduling policy of each tenant, set by operators: its weight in fair share and
its quotas. A tenant without a row has weight 1 and no quota."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from llmos_jobs.db.types import UTCDateTime, utcnow

DEFAULT_WEIGHT = 1.0


class TenantPolicyBase(SQLModel):
    # Its share of a model's workers against the other backlogged tenants at one
    # priority: a tenant of weight 2 receives twice the service of one of weight 1.
    weight: float = Field(default=DEFAULT_WEIGHT, gt=0, le=1000)
    # Quotas; None: no limit.
    max_queued: int | None = Field(default=None, ge=0)
    max_running: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    # The highest priority (the smallest number) the tenant may ask for.
    max_priority: int | None = Field(default=None, ge=0, le=9)


class TenantPolicy(TenantPolicyBase, table=True):
    __tablename__ = "tenant_policy"

    tenant: str = Field(primary_key=True, max_length=128)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class TenantPolicyPublic(TenantPolicyBase):
    tenant: str
    updated_at: datetime | None = None
