"""Reads and writes of tenants' scheduling policies (llmos_jobs.db.tenant_tables)."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlmodel import Session, col

from llmos_jobs.db.tables import Job
from llmos_jobs.db.tenant_tables import TenantPolicy
from llmos_jobs.db.types import utcnow
from schemas.common import JobKind, JobStatus


def get_policy(*, session: Session, tenant: str) -> TenantPolicy | None:
    return session.get(TenantPolicy, tenant)


def policy_or_default(*, session: Session, tenant: str) -> TenantPolicy:
    """The tenant's policy, or the default one (weight 1, no quota) when it has none."""
    return get_policy(session=session, tenant=tenant) or TenantPolicy(tenant=tenant)


def list_policies(*, session: Session) -> list[TenantPolicy]:
    return list(session.exec(select(TenantPolicy).order_by(  # type: ignore[call-overload]
        col(TenantPolicy.tenant))).scalars())


def weights(*, session: Session) -> dict[str, float]:
    """The weight of every tenant that has a policy; any other tenant weighs
    DEFAULT_WEIGHT."""
    rows = session.exec(select(col(TenantPolicy.tenant), col(TenantPolicy.weight))  # type: ignore[call-overload]
                        ).all()
    return {tenant: float(weight) for tenant, weight in rows}


def put_policy(*, session: Session, policy: TenantPolicy) -> TenantPolicy:
    policy.updated_at = utcnow()
    merged = session.merge(policy)
    session.flush()
    return merged


def delete_policy(*, session: Session, tenant: str) -> bool:
    result = session.execute(delete(TenantPolicy).where(col(TenantPolicy.tenant) == tenant))
    return bool(result.rowcount)  # type: ignore[attr-defined]



def unstarted_jobs(*, session: Session, tenant: str) -> int:
    """The tenant's jobs that count against ``max_queued``: queued or waiting (a turn
    behind an earlier one), outside batches (a batch's jobs are paced, not refused),
    and not model operations (no tenant's work, and never refused by a quota: the
    prefill a mindspace's creation queues under its tenant, say)."""
    query = select(func.count()).select_from(Job).where(
        col(Job.tenant) == tenant,
        col(Job.status).in_([JobStatus.queued, JobStatus.waiting]),
        col(Job.batch_id).is_(None), col(Job.kind) != JobKind.model_op)
    return int(session.execute(query).scalar_one())


def unstarted_jobs_held(*, session: Session, tenant: str) -> int:
    """``unstarted_jobs``, counted under a lock that ``session``'s transaction holds
    until it ends: a tenant's submissions then count and insert one at a time. Without
    it, submissions arriving together each counted before any of the others committed,
    and each saw room for itself (sixteen at once all passed a max_queued of three).

    PostgreSQL: the tenant's policy row, locked FOR UPDATE (a tenant with a max_queued
    has one). SQLite: the database's write lock, which its driver takes at the first
    write of a transaction, not at a read; a write that changes nothing takes it."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(col(TenantPolicy.tenant))
                        .where(col(TenantPolicy.tenant) == tenant).with_for_update())
    else:
        session.execute(update(TenantPolicy).where(col(TenantPolicy.tenant) == tenant)
                        .values(tenant=col(TenantPolicy.tenant)))
    return unstarted_jobs(session=session, tenant=tenant)
