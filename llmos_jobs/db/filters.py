"""CRUD of tenants' content filters."""

from __future__ import annotations

from sqlmodel import Session

from llmos_jobs.db.filter_tables import TenantFilterRow
from llmos_jobs.db.types import utcnow
from schemas.filters import TenantFilters


def get_filters(*, session: Session, tenant: str) -> TenantFilters:
    """The tenant's rules; the defaults when it has none."""
    row = session.get(TenantFilterRow, tenant, populate_existing=True)
    return TenantFilters() if row is None else TenantFilters.model_validate(row.rules)


def put_filters(*, session: Session, tenant: str, filters: TenantFilters) -> TenantFilters:
    """Replace the tenant's rules (the caller commits)."""
    rules = filters.model_dump(mode="json")
    row = session.get(TenantFilterRow, tenant)
    if row is None:
        session.add(TenantFilterRow(tenant=tenant, rules=rules))
    else:
        row.rules, row.updated_at = rules, utcnow()
        session.add(row)
    session.flush()
    return filters
