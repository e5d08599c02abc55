"""Retention in SQL: per-tenant policies, and, per kind of content, the rows past
their age. Counting and pruning use one condition, built once per run, so a dry run
counts exactly what a prune at the same moment removes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, delete, false, func, or_, select, true, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.sql import Executable
from sqlmodel import Session, col

from llmos_jobs.db.batch_tables import Batch, StoredFile
from llmos_jobs.db.retention_tables import IdempotencyRecord, RetentionPolicy
from llmos_jobs.db.tables import AuditEvent, Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookAttempt, WebhookDelivery
from llmos_jobs.states import BatchStatus
from schemas.common import JobStatus

FINAL_JOBS = [s for s in JobStatus if s.is_final]
FINAL_BATCHES = [BatchStatus.failed.value, BatchStatus.completed.value,
                 BatchStatus.expired.value, BatchStatus.cancelled.value]


# -- policies -------------------------------------------------------------------------


def get_policy(*, session: Session, tenant: str) -> RetentionPolicy | None:
    return session.get(RetentionPolicy, tenant)


def list_policies(*, session: Session) -> list[RetentionPolicy]:
    return list(session.exec(select(RetentionPolicy).order_by(  # type: ignore[call-overload]
        col(RetentionPolicy.tenant))).scalars())


def put_policy(*, session: Session, policy: RetentionPolicy) -> RetentionPolicy:
    policy.updated_at = utcnow()
    merged = session.merge(policy)
    session.flush()
    return merged


def delete_policy(*, session: Session, tenant: str) -> bool:
    return _removed(session, delete(RetentionPolicy).where(
        col(RetentionPolicy.tenant) == tenant)) > 0


# -- what is past its age -------------------------------------------------------------


@dataclass(frozen=True)
class Ages:
    """Per kind of content: the default days, and the tenants that chose otherwise."""

    default_days: float
    overrides: dict[str, float]


def _older(tenant: Any, moment: Any, ages: Ages, now: datetime, only: str | None
           ) -> ColumnElement[bool]:
    # ``tenant`` and ``moment``: a table's columns (SQLModel types them as their values).
    def before(days: float) -> ColumnElement[bool]:
        return col(moment) < now - timedelta(days=days)

    chosen = [and_(col(tenant) == name, before(days))
              for name, days in ages.overrides.items() if only in (None, name)]
    if only is None:
        others = or_(col(tenant).is_(None), col(tenant).not_in(list(ages.overrides)))
        chosen.append(and_(others, before(ages.default_days)))
    elif only not in ages.overrides:
        chosen.append(and_(col(tenant) == only, before(ages.default_days)))
    return or_(false(), *chosen)


@dataclass(frozen=True)
class Selection:
    """The conditions of one retention run, at one moment."""

    jobs: ColumnElement[bool]
    files: ColumnElement[bool]
    audit: ColumnElement[bool]
    webhooks: ColumnElement[bool]
    idempotency_keys: ColumnElement[bool]


def select_expired(*, jobs: Ages, files: Ages, audit: Ages, webhooks: Ages, now: datetime,
                   tenant: str | None = None) -> Selection:
    open_inputs = select(col(Batch.input_file_id)).where(
        col(Batch.status).not_in(FINAL_BATCHES))
    return Selection(
        jobs=and_(col(Job.status).in_(FINAL_JOBS), col(Job.content_expired_at).is_(None),
                  _older(Job.tenant, Job.finished_at, jobs, now, tenant)),
        # An input file of a batch still running stays, whatever its age.
        files=and_(col(StoredFile.id).not_in(open_inputs),
                   _older(StoredFile.tenant, StoredFile.created_at, files, now, tenant)),
        audit=_older(AuditEvent.tenant, AuditEvent.created_at, audit, now, tenant),
        webhooks=and_(col(WebhookDelivery.status) != DeliveryStatus.pending,
                      _older(WebhookDelivery.tenant, WebhookDelivery.created_at, webhooks,
                             now, tenant)),
        idempotency_keys=and_(col(IdempotencyRecord.expires_at) <= now,
                              true() if tenant is None
                              else col(IdempotencyRecord.tenant) == tenant),
    )


def _count(session: Session, table: type[object], where: ColumnElement[bool]) -> int:
    return int(session.execute(select(func.count()).select_from(table).where(where))
               .scalar_one())


def count(session: Session, selection: Selection) -> dict[str, int]:
    return {
        "jobs": _count(session, Job, selection.jobs),
        "files": _count(session, StoredFile, selection.files),
        "audit": _count(session, AuditEvent, selection.audit),
        "webhooks": _count(session, WebhookDelivery, selection.webhooks),
        "idempotency_keys": _count(session, IdempotencyRecord, selection.idempotency_keys),
    }


def _removed(session: Session, statement: Executable) -> int:
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount)


def prune(session: Session, selection: Selection, now: datetime) -> dict[str, int]:
    """Remove what ``selection`` names; a job keeps its row and metadata, its prompt,
    result and error text go, and ``content_expired_at`` says when."""
    jobs = _removed(session, update(Job).where(selection.jobs).values(
        payload={}, result=None, error_message=None, content_expired_at=now)
        .execution_options(synchronize_session=False))
    files = _removed(session, delete(StoredFile).where(selection.files)
                     .execution_options(synchronize_session=False))
    audit = _removed(session, delete(AuditEvent).where(selection.audit)
                     .execution_options(synchronize_session=False))
    deliveries = select(col(WebhookDelivery.id)).where(selection.webhooks)
    # Attempts first: SQLite does not enforce the cascade of their foreign key.
    session.execute(delete(WebhookAttempt).where(col(WebhookAttempt.delivery_id)
                                                 .in_(deliveries))
                    .execution_options(synchronize_session=False))
    webhooks = _removed(session, delete(WebhookDelivery).where(selection.webhooks)
                        .execution_options(synchronize_session=False))
    keys = _removed(session, delete(IdempotencyRecord).where(selection.idempotency_keys)
                    .execution_options(synchronize_session=False))
    return {"jobs": jobs, "files": files, "audit": audit, "webhooks": webhooks,
            "idempotency_keys": keys}
