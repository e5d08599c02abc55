"""Tenants' content filters: reading and replacing a tenant's rules, trying them on a
text, and ending a job that a rule blocked.

Where the filters run: in the worker, on both sides. The input side runs there, and
not at submission, because the moderation step is a model that only a worker holds,
because a mindspace turn's prompt is only assembled there, and because one place for
every job kind (generate, chat, batch lines, turns) leaves none unfiltered. A blocked
input never reaches the engine; it costs a queue slot, not a generation. The output
side runs before the result is stored, so an unredacted output is never written.

A blocked job ends `filtered` (``ContentFiltered``, the rule's name on the job), with
an audit row and its webhook event in the same transaction. Logs name the rule and the
job, never the text."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from llmos_jobs.db import audit as audit_rows
from llmos_jobs.db import filters as filter_rows
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import AuditEventBase
from llmos_jobs.filtering import pii
from llmos_jobs.filtering.rules import CompiledFilters
from llmos_jobs.services.submission import validate
from llmos_jobs.services.webhooks.events import emit_job_event
from llmos_jobs.settings import Settings
from schemas.filters import Direction, FilterVerdict, TenantFilters

log = logging.getLogger(__name__)

# The audit action of a job ended by a filter; the row's status is 451 (Unavailable
# For Legal Reasons): refused for its content, not for its form.
FILTERED_ACTION = "jobs.filtered"
FILTERED_STATUS = 451


class ContentFiltered(Exception):
    """A rule blocked one side of a job. The message names the rule, never the text."""

    def __init__(self, rule: str, side: Direction, how: str = "rule") -> None:
        self.rule = rule
        self.side = side
        where = "input" if side == Direction.input else "output"
        super().__init__(f"{where} blocked by the content filter {how} {rule!r}")


def get(database: Database, tenant: str) -> TenantFilters:
    with database.session() as session:
        return filter_rows.get_filters(session=session, tenant=tenant)


def put(database: Database, tenant: str, data: dict[str, Any]) -> TenantFilters:
    """Replace the tenant's rules with ``data``, or InvalidRequest naming what is wrong
    (nothing is changed then)."""
    filters = validate(TenantFilters, data)
    with database.session() as session:
        filter_rows.put_filters(session=session, tenant=tenant, filters=filters)
        session.commit()
    return filters


def with_pii(filters: TenantFilters, names: list[str], direction: Direction) -> dict[str, Any]:
    """``filters`` (as data) with the built-in PII rules ``names`` added (replacing
    rules of the same name); ValueError for an unknown name."""
    added = [pii.builtin(name, direction) for name in names]
    kept = [r for r in filters.redact if r.name not in {a.name for a in added}]
    data = filters.model_dump(mode="json")
    data["redact"] = [r.model_dump(mode="json") for r in (*kept, *added)]
    return data


def try_text(filters: TenantFilters, text: str, side: Direction) -> FilterVerdict:
    """What the rules (all but the moderation step, which needs a worker) make of
    ``text`` on ``side``."""
    return CompiledFilters(filters).screen(text, side)


def record_filtered(session: Session, *, job_id: str, message_id: str, tenant: str,
                    blocked: ContentFiltered, worker: str, settings: Settings) -> bool:
    """End the attempt's job `filtered`, with its audit row and webhook event, in the
    caller's transaction; False if the attempt no longer owns the job."""
    moved = job_rows.filter_job(session=session, job_id=job_id, message_id=message_id,
                                rule=blocked.rule, error_message=str(blocked))
    if not moved:
        return False
    log.info("job %s filtered: %s side, rule %s", job_id, blocked.side.value, blocked.rule)
    audit_rows.record_event(session=session, event_in=AuditEventBase(
        tenant=tenant, actor=f"worker:{worker}", action=FILTERED_ACTION,
        resource_id=job_id, outcome="denied", status_code=FILTERED_STATUS))
    emit_job_event(session=session, job_id=job_id, settings=settings)
    return True
