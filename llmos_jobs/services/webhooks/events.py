"""Raising webhook events: a delivery row in the caller's transaction, a message on the
`webhooks` queue once that transaction commits (never before, so a receiver is never
told about an outcome that was rolled back; a rolled-back event is never sent).

See the package docstring for `emit`'s contract."""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import OperationalError
from sqlalchemy import event
from sqlmodel import Session

from llmos_jobs import broker
from llmos_jobs.db.tables import Job, JobPublic
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import WebhookDelivery
from llmos_jobs.errors import BrokerUnavailable
from llmos_jobs.settings import Settings
from schemas.common import JobStatus

log = logging.getLogger(__name__)

JOB_EVENTS: dict[JobStatus, str] = {
    JobStatus.succeeded: "job.succeeded",
    JobStatus.failed: "job.failed",
    JobStatus.cancelled: "job.cancelled",
    JobStatus.filtered: "job.filtered",
    JobStatus.expired: "job.expired",
}
# What a job event tells the tenant's endpoint: the outcome and the output, not the
# prompt (the tenant sent it, and it would double the size of every request).
JOB_EVENT_FIELDS = {
    "id", "status", "kind", "model", "priority", "result", "usage", "error_type",
    "error_message", "filter_rule", "redacted_by", "deadline", "attempts", "created_at",
    "started_at", "finished_at", "latency_s",
}


def emit(*, session: Session, tenant: str, event_type: str, url: str, data: dict[str, Any],
         settings: Settings, job_id: str | None = None) -> str:
    """Record one event for ``url`` in ``session``; it is sent once the session commits.
    Returns the delivery id (the `webhook-id` header)."""
    row = WebhookDelivery(
        tenant=tenant, job_id=job_id, event_type=event_type, url=url,
        payload={"type": event_type, "timestamp": utcnow().isoformat(), "data": data},
    )
    session.add(row)
    session.flush()
    delivery_id = row.id

    def publish(_: Session) -> None:
        enqueue_delivery(delivery_id, settings=settings)

    event.listen(session, "after_commit", publish, once=True)
    return delivery_id


def enqueue_delivery(delivery_id: str, *, settings: Settings) -> None:
    """Send the delivery's message; the message carries its id only."""
    try:
        broker.send_delivery(broker.app_for(settings), delivery_id)
    except (OperationalError, OSError, BrokerUnavailable) as exc:
        # The outcome it reports is committed already and must stand; the row stays
        # `pending`, and the reconciler sends it once the broker is back.
        log.error("webhook delivery %s not enqueued, broker unreachable: %s", delivery_id, exc)


def emit_job_event(*, session: Session, job_id: str, settings: Settings) -> str | None:
    """The event of a job that just reached a final status, if it has a webhook URL.
    Call it in the transaction that made the status final."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.webhook_url is None or job.status not in JOB_EVENTS:
        return None
    data = JobPublic.from_row(job).model_dump(mode="json", include=JOB_EVENT_FIELDS)
    return emit(session=session, tenant=job.tenant, event_type=JOB_EVENTS[job.status],
                url=job.webhook_url, data=data, job_id=job.id, settings=settings)
