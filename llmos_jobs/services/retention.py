"""Retention: how long each kind of tenant content is kept, and pruning what is older.

    jobs      a finished job's prompt (payload), result and error text; the row stays
              with its id, status, timestamps, model and usage, and
              ``content_expired_at`` says when its content went
    files     uploaded files and batch output and error files
    audit     audit rows
    webhooks  finished webhook deliveries and their attempts

Defaults come from LLMOS_RETENTION_*_DAYS; an operator sets a tenant's own days (`llmos
retention set`, ``PUT /v1/retention/{tenant}``). The control process prunes every
LLMOS_RETENTION_CHECK_S (``llmos.control.prune``); `llmos prune --dry-run` counts what
a prune would remove now. Expired idempotency keys go in the same run."""

from __future__ import annotations

from datetime import datetime

from llmos_jobs.db import retention as rows
from llmos_jobs.db.retention_tables import RetentionPolicy, RetentionPolicyPublic
from llmos_jobs.db.session import Database
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.settings import Settings
from schemas.retention import PruneCounts, PruneReport

KINDS = ("jobs", "files", "audit", "webhooks")


def _defaults(settings: Settings) -> dict[str, float]:
    return {"jobs": settings.retention_jobs_days, "files": settings.retention_files_days,
            "audit": settings.retention_audit_days,
            "webhooks": settings.retention_webhooks_days}


def _days(policy: RetentionPolicy, kind: str) -> float | None:
    value: float | None = getattr(policy, f"{kind}_days")
    return value


def prune(database: Database, settings: Settings, *, dry_run: bool = False,
          tenant: str | None = None, now: datetime | None = None) -> PruneReport:
    """Remove (or with ``dry_run`` only count) what is past its retention, of every
    tenant or of ``tenant`` alone. One transaction: a prune that fails removes nothing."""
    at = now or utcnow()
    defaults = _defaults(settings)
    with database.session() as session:
        policies = rows.list_policies(session=session)
        ages = {kind: rows.Ages(default_days=defaults[kind],
                                overrides={p.tenant: d for p in policies
                                           if (d := _days(p, kind)) is not None})
                for kind in KINDS}
        selection = rows.select_expired(jobs=ages["jobs"], files=ages["files"],
                                        audit=ages["audit"], webhooks=ages["webhooks"],
                                        now=at, tenant=tenant)
        counts = (rows.count(session, selection) if dry_run
                  else rows.prune(session, selection, at))
    return PruneReport(dry_run=dry_run, tenant=tenant, at=at, counts=PruneCounts(**counts))


def policy_of(database: Database, settings: Settings, tenant: str) -> RetentionPolicyPublic:
    with database.session() as session:
        policy = rows.get_policy(session=session, tenant=tenant)
    return _public(settings, tenant, policy)


def set_policy(database: Database, settings: Settings, tenant: str,
               days: dict[str, float | None]) -> RetentionPolicyPublic:
    """Set a tenant's days per kind (None: back to the default); kinds not named keep
    what they had."""
    unknown = sorted(set(days) - set(KINDS))
    if unknown:
        raise InvalidRequest(f"unknown retention kind(s) {', '.join(unknown)}; the kinds "
                             f"are {', '.join(KINDS)}")
    for kind, value in days.items():
        if value is not None and value <= 0:
            raise InvalidRequest(f"{kind}: days must be greater than 0 (got {value})")
    if not 0 < len(tenant) <= 128:
        raise InvalidRequest("a tenant name has 1 to 128 characters")
    with database.session() as session:
        policy = rows.get_policy(session=session, tenant=tenant) or RetentionPolicy(
            tenant=tenant)
        for kind, value in days.items():
            setattr(policy, f"{kind}_days", value)
        if all(_days(policy, kind) is None for kind in KINDS):
            rows.delete_policy(session=session, tenant=tenant)
            stored = None
        else:
            stored = rows.put_policy(session=session, policy=policy)
    return _public(settings, tenant, stored)


def _public(settings: Settings, tenant: str, policy: RetentionPolicy | None
            ) -> RetentionPolicyPublic:
    defaults = _defaults(settings)
    own = {kind: _days(policy, kind) for kind in KINDS} if policy else {}
    return RetentionPolicyPublic(
        tenant=tenant,
        **{f"{kind}_days": own.get(kind) or defaults[kind] for kind in KINDS},
        overridden=[kind for kind in KINDS if own.get(kind) is not None])
