"""One attempt at delivering a webhook event, and what comes after it.

At-least-once: the outcome is recorded after the receiver answers, so a worker lost
in between sends the event again, with the same `webhook-id` for the receiver to drop.
After a failure the next attempt waits for the next delay of LLMOS_WEBHOOK_RETRY_DELAYS,
or for the receiver's own `Retry-After` (seconds) on 429 and 503; 410 Gone stops at once
(status `gone`), and an exhausted schedule stops with status `failed`. The caller (a
Celery task) schedules the retry; nothing here sleeps."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import anyio
import httpx
from sqlalchemy import update
from sqlmodel import Session, col, select

from llmos_jobs import metrics
from llmos_jobs.db.session import Database
from llmos_jobs.db.types import utcnow
from llmos_jobs.db.webhook_tables import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookAttemptPublic,
    WebhookDelivery,
    WebhookDeliveryPublic,
)
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.webhooks.signing import signed_headers, tenant_secret
from llmos_jobs.services.webhooks.ssrf import Destination, resolve
from llmos_jobs.settings import Settings

# A retry is an ETA message held by a worker until due; past the broker's visibility
# timeout (30 min) Redis would hand it out twice, so a receiver's Retry-After is capped.
MAX_RETRY_AFTER_S = 600.0
HONOURS_RETRY_AFTER = (429, 503)
USER_AGENT = "llmos-webhooks/1"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    status_code: int | None  # None: no answer (refused destination, network error)
    error: str | None
    retry_after_s: float | None
    duration_ms: float


@dataclass(frozen=True)
class Step:
    status: DeliveryStatus
    retry_in_s: float | None  # seconds until the next attempt; None once finished


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: the schedule decides
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def post(url: str, body: str, headers: dict[str, str], settings: Settings) -> Answer:
    """One POST. The tenant sees only the status and a fixed reason (``error``): never
    the receiver's body, nor the addresses and errors of the network on the way."""
    started = time.monotonic()

    def answer(code: int | None, error: str | None, retry_after: float | None = None) -> Answer:
        return Answer(code, error, retry_after, (time.monotonic() - started) * 1000)

    try:
        # Checked again now: the name may resolve elsewhere than at submission.
        destination = resolve(url, settings.webhook_allowed())
    except InvalidRequest as exc:
        log.info("webhook to %s refused: %s", url, exc)
        return answer(None, "refused: the destination is not a public host")
    try:
        status, retry_after = anyio.run(_send, destination, body, headers,
                                        settings.webhook_timeout_s)
    except TimeoutError:
        return answer(None, f"timeout: no answer within {settings.webhook_timeout_s:g} s")
    except httpx.HTTPError as exc:
        log.info("webhook to %s failed: %r", url, exc)
        return answer(None, "connection failed")
    if 200 <= status < 300:
        return answer(status, None)
    return answer(status, f"HTTP {status}", retry_after)


async def _send(destination: Destination, body: str, headers: dict[str, str],
                timeout_s: float) -> tuple[int, float | None]:
    """POST to the checked address, the whole attempt within ``timeout_s``; the answer's
    body is never read (a receiver cannot make the worker download anything)."""
    request_headers = {**headers, "host": destination.host_header,
                       "content-type": "application/json", "user-agent": USER_AGENT}
    # The TLS server name (and the certificate check) is the name, not the address.
    extensions = {"sni_hostname": destination.host} if destination.url.startswith(
        "https:") else {}
    with anyio.fail_after(timeout_s):
        # No proxies from the environment (one would connect to the name again), and
        # redirects are not followed (one could point at an internal address).
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False,
                                     trust_env=False) as client:
            request = client.build_request("POST", destination.connect_url,
                                           content=body.encode(), headers=request_headers,
                                           extensions=extensions)
            response = await client.send(request, stream=True)
            await response.aclose()
    return response.status_code, _retry_after(response)


def next_step(answer: Answer, attempt: int, delays: list[float]) -> Step:
    """What follows attempt number ``attempt`` (1-based)."""
    if answer.status_code is not None and 200 <= answer.status_code < 300:
        return Step(DeliveryStatus.delivered, None)
    if answer.status_code == 410:
        return Step(DeliveryStatus.gone, None)
    if attempt > len(delays):
        return Step(DeliveryStatus.failed, None)
    delay = delays[attempt - 1]
    if answer.status_code in HONOURS_RETRY_AFTER and answer.retry_after_s is not None:
        delay = answer.retry_after_s
    return Step(DeliveryStatus.pending, delay)


def _record(session: Session, row: WebhookDelivery, answer: Answer, step: Step) -> bool:
    """Record the attempt; False when another delivery of the same message got there
    first (the row's attempt count moved)."""
    now = utcnow()
    finished = step.retry_in_s is None
    next_at = None if step.retry_in_s is None else now + timedelta(seconds=step.retry_in_s)
    moved = session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == row.id,
               col(WebhookDelivery.status) == DeliveryStatus.pending,
               col(WebhookDelivery.attempts) == row.attempts)
        .values(status=step.status, attempts=row.attempts + 1,
                last_status_code=answer.status_code, last_error=answer.error,
                next_attempt_at=next_at, finished_at=now if finished else None)
    ).rowcount  # type: ignore[attr-defined]
    if moved:
        session.add(WebhookAttempt(delivery_id=row.id, number=row.attempts + 1,
                                   attempted_at=now, status_code=answer.status_code,
                                   error=answer.error, duration_ms=answer.duration_ms))
    return bool(moved)


def attempt_delivery(*, delivery_id: str, settings: Settings, database: Database
                     ) -> float | None:
    """Make one attempt; the seconds until the next one, or None when there is none
    (delivered, gone, failed, or not pending any more)."""
    with database.session() as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None or row.status != DeliveryStatus.pending:
            return None
        secret = tenant_secret(session=session, tenant=row.tenant).secret
    body = json.dumps(row.payload, separators=(",", ":"))
    headers = signed_headers(secret=secret, message_id=row.id, body=body)
    answer = post(row.url, body, headers, settings)
    step = next_step(answer, row.attempts + 1, settings.webhook_delays())
    with database.session() as session:
        if not _record(session, row, answer, step):
            return None
    metrics.WEBHOOK_DELIVERIES.labels(
        "retry" if step.status == DeliveryStatus.pending else step.status.value).inc()
    return step.retry_in_s


def list_deliveries(*, session: Session, tenant: str, job_id: str | None = None,
                    limit: int = 50) -> list[WebhookDeliveryPublic]:
    """The tenant's newest deliveries, each with its attempts in order."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant == tenant)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    rows = list(session.exec(query.order_by(col(WebhookDelivery.created_at).desc())
                             .limit(limit)))
    attempts = session.exec(
        select(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_([r.id for r in rows]))
        .order_by(col(WebhookAttempt.number)))
    log: dict[str, list[WebhookAttemptPublic]] = {}
    for a in attempts:
        log.setdefault(a.delivery_id, []).append(
            WebhookAttemptPublic.model_validate(a, from_attributes=True))
    return [WebhookDeliveryPublic.model_validate(r, from_attributes=True,
                                                 update={"attempt_log": log.get(r.id, [])})
            for r in rows]
