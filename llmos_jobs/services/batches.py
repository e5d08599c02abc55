"""OpenAI-style batches: a JSONL file of chat-completion requests becomes one job per
valid line (at batch priority, so interactive work still goes first); invalid lines
become error-file entries naming their line; when every job is final the output and
error files are written.

    validating → in_progress → finalizing → completed
              ↘ failed (no valid line)      cancelling → cancelled
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import Counter
from datetime import datetime
from typing import Any

from kombu.exceptions import OperationalError
from sqlalchemy import update
from sqlmodel import Session, col, select

from llmos_jobs import broker
from llmos_jobs import sla as sla_rules
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.batch_tables import Batch, StoredFile
from llmos_jobs.db.jobs import JobCreate
from llmos_jobs.db.moves import move
from llmos_jobs.db.tables import Job, JobPublic
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import InvalidRequest, NotFound
from llmos_jobs.services import batch_files, language
from llmos_jobs.services.batch_files import ENDPOINT
from llmos_jobs.services.batch_objects import (
    BatchError,
    BatchErrors,
    BatchObject,
    BatchRequestCounts,
    unix_seconds,
)
from llmos_jobs.services.submission import Submitter, priority_of
from llmos_jobs.services.webhooks.events import emit
from llmos_jobs.states import BATCH_OPEN, BATCHES, BatchStatus
from schemas.common import JobStatus

log = logging.getLogger(__name__)

MAX_WINDOW_S = 24 * 3600  # as OpenAI
FINAL = [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.filtered,
         JobStatus.expired]
# A line's own deadline, this server's extension (docs/deadlines.md): the batch's
# completion window still bounds the whole batch.
_EXTENSIONS = ("deadline", "sla")
_SAMPLING = ("max_tokens", "max_completion_tokens", "temperature", "stop", "model", "messages",
             "response_format")


def get_batch(session: Session, tenant: str, batch_id: str) -> Batch:
    row = session.exec(select(Batch).where(Batch.id == batch_id, Batch.tenant == tenant)).first()
    if row is None:
        raise NotFound(f"batch {batch_id} not found")
    return row


def create(submitter: Submitter, tenant: str, *, input_file_id: str,
           endpoint: str = ENDPOINT, completion_window: str = "24h",
           metadata: dict[str, str] | None = None, priority: int | str = "batch",
           webhook: str | None = None) -> Batch:
    """Accept a batch (validating) and hand its expansion to a control worker."""
    if endpoint != ENDPOINT:
        raise InvalidRequest(f"endpoint {endpoint!r} is not supported: use {ENDPOINT!r}")
    check_window(completion_window)
    submitter.check_webhook(webhook)
    settings = submitter.settings
    with submitter.database.session() as session:
        source = batch_files.get_file(session, tenant, input_file_id)
        lines = sum(1 for line in batch_files.lines_of(source.content) if line.strip())
        if lines > settings.batch_max_lines:
            raise InvalidRequest(f"file {input_file_id} has {lines} lines; the limit is "
                                 f"{settings.batch_max_lines} (LLMOS_BATCH_MAX_LINES)")
        if lines == 0:
            raise InvalidRequest(f"file {input_file_id} holds no request")
        batch = Batch(tenant=tenant, endpoint=endpoint, input_file_id=input_file_id,
                      completion_window=completion_window, priority=priority_of(priority),
                      batch_metadata=metadata, total=lines, webhook_url=webhook)
        session.add(batch)
    # Lost on the way (broker down, restarted), it is sent again by the reconciler.
    with contextlib.suppress(OperationalError, OSError):
        broker.send_batch_expansion(submitter.app, batch.id, priority=batch.priority)
    return batch


def check_window(window: str) -> None:
    """A completion window a batch may ask for: a duration of at most 24 hours."""
    if window_s(window) > MAX_WINDOW_S:
        raise InvalidRequest(f"completion_window {window!r} is longer than 24h")


def window_s(window: str) -> int:
    """Seconds of a completion window such as "24h" (also "30m", "90s")."""
    match = re.fullmatch(r"(\d+)([hms])", window)
    if match is None or int(match.group(1)) == 0:
        raise InvalidRequest(f"completion_window {window!r} is not a duration such as '24h'")
    return int(match.group(1)) * {"h": 3600, "m": 60, "s": 1}[match.group(2)]


def _cancel_queued(session: Session, batch_id: str) -> None:
    """The batch's requests that have not started never will."""
    session.execute(update(Job).where(col(Job.batch_id) == batch_id,
                                      col(Job.status) == JobStatus.queued)
                    .values(status=JobStatus.cancelled, finished_at=utcnow()))


def expire_overdue(session: Session) -> list[str]:
    """Batches past their completion window: queued requests are cancelled, running ones
    finish, and the batch ends `expired` with the results it has (its status changes only
    once its files are written). Their ids."""
    now = utcnow()
    overdue = [b for b in session.exec(select(Batch).where(
        col(Batch.status).in_(sorted(BATCH_OPEN)), col(Batch.expired_at).is_(None)))
        if (now - b.created_at).total_seconds() > window_s(b.completion_window)]
    expired = []
    for batch in overdue:
        moved = session.execute(update(Batch).where(
            col(Batch.id) == batch.id, col(Batch.status).in_(sorted(BATCH_OPEN)),
            col(Batch.expired_at).is_(None))
            .values(expired_at=now)).rowcount  # type: ignore[attr-defined]
        if moved:
            _cancel_queued(session, batch.id)
            expired.append(batch.id)
    session.commit()
    return expired


def _request(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(_SAMPLING) - set(_EXTENSIONS) - {"n", "user"})
    if unknown:
        raise InvalidRequest(f"unsupported parameter(s): {', '.join(unknown)}")
    stop = body.get("stop")
    request = {"model": body.get("model"), "messages": body.get("messages"),
               "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or 64,
               "temperature": body.get("temperature") or 0.0,
               "stop": [stop] if isinstance(stop, str) else stop or []}
    response_format = body.get("response_format")
    # {"type": "text"} is OpenAI's default; anything else is checked as a json_schema.
    if response_format is not None and response_format != {"type": "text"}:
        request["response_format"] = response_format
    return request


def _line_deadline(submitter: Submitter, body: dict[str, Any], submitted: datetime
                   ) -> datetime | None:
    """A line's deadline, measured from the batch's submission (not its expansion)."""
    deadline, sla = body.get("deadline"), body.get("sla")
    if not isinstance(deadline, str | None) or not isinstance(sla, str | None):
        raise InvalidRequest("deadline and sla must be strings (ISO 8601 with a zone; a class)")
    return sla_rules.resolve(submitter.settings, deadline=deadline, sla=sla, now=submitted)


def expand(submitter: Submitter, batch_id: str) -> None:
    """Validate every line; one job per valid line, all committed, then published."""
    with submitter.database.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise NotFound(f"batch {batch_id} not found")
        tenant, submitted = batch.tenant, batch.created_at
        if batch.status != BatchStatus.validating or batch.expired_at is not None:
            return  # a redelivered expansion (done already), or it expired while waiting
        content = batch_files.get_file(session, tenant, batch.input_file_id).content
    valid, invalid = batch_files.parse(content)
    jobs: list[JobCreate] = []
    for number, custom_id, body in valid:
        try:
            request = language.checked_request(submitter, _request(body))
            deadline = _line_deadline(submitter, body, submitted)
        except InvalidRequest as exc:
            invalid.append(batch_files.line_error(number, custom_id, "invalid_body", str(exc)))
            continue
        jobs.append(language.job_of(tenant, request, priority=batch.priority,
                                    batch_id=batch_id, custom_id=custom_id, deadline=deadline))
    # The batch's jobs and its new status commit together, once: a second expansion
    # (a redelivery, the reconciler) finds the batch no longer validating.
    with submitter.database.session() as session:
        status = BatchStatus.in_progress if jobs else BatchStatus.failed
        moved = move(
            session, Batch, "status", col(Batch.id) == batch_id, BATCHES, status,
            col(Batch.expired_at).is_(None),
            invalid=sorted(invalid, key=lambda e: e["line"]),
            in_progress_at=utcnow() if jobs else None, failed_at=None if jobs else utcnow(),
            errors=None if jobs else [{"code": "no_valid_lines",
                                       "message": "no line of the file is a valid request"}])
        if not moved:
            return
        created = [job_rows.create_job(session=session, job_in=j) for j in jobs]
    if created:
        submitter.publish(created)
    else:
        finalize(submitter, batch_id)


def finalize(submitter: Submitter, batch_id: str) -> None:
    """Write the output and error files of a `finalizing` (or `failed`) batch; it ends
    completed, cancelled, expired or failed. The end is a compare-and-set that also
    requires no file written yet: however often this runs, and by however many
    processes, the batch gets one output, one error file and one event."""
    with submitter.database.session() as session:
        batch = session.get(Batch, batch_id, populate_existing=True)
        if batch is None or batch.status not in (BatchStatus.finalizing, BatchStatus.failed) or (
                batch.output_file_id or batch.error_file_id):
            return
        jobs = list(session.exec(select(Job).where(Job.batch_id == batch_id)
                                 .order_by(col(Job.created_at))))
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = [{"id": f"batch_req_{batch_id}_{e['line']}",
                                "custom_id": e["custom_id"], "response": None,
                                "error": {"code": e["code"], "message": e["message"],
                                          "line": e["line"]}} for e in batch.invalid]
        for job in jobs:
            entry = output_line(JobPublic.from_row(job))
            (outputs if job.status == JobStatus.succeeded else errors).append(entry)
        ending: dict[str, Any] = {}
        for purpose, lines, field in (("batch_output", outputs, "output_file_id"),
                                      ("batch_output", errors, "error_file_id")):
            if not lines:
                continue
            text = "".join(json.dumps(line) + "\n" for line in lines)
            stored = StoredFile(tenant=batch.tenant, filename=f"{batch_id}_{field}.jsonl",
                                purpose=purpose, bytes=len(text.encode()), content=text)
            session.add(stored)
            ending[field] = stored.id
        now = utcnow()
        if batch.cancelling_at is not None:
            ending.update(status=BatchStatus.cancelled, cancelled_at=now)
        elif batch.expired_at is not None:
            ending.update(status=BatchStatus.expired)
        elif batch.status != BatchStatus.failed:
            ending.update(status=BatchStatus.completed, completed_at=now)
        session.flush()
        won = session.execute(update(Batch).where(
            col(Batch.id) == batch_id, col(Batch.status) == batch.status,
            col(Batch.output_file_id).is_(None), col(Batch.error_file_id).is_(None))
            .values(**ending)).rowcount  # type: ignore[attr-defined]
        if not won:  # another finalizer wrote the files first
            session.rollback()
            return
        session.refresh(batch)
        if batch.webhook_url:  # sent once this transaction commits
            emit(session=session, tenant=batch.tenant, event_type=f"batch.{batch.status}",
                 url=batch.webhook_url, data=public(session, batch).model_dump(mode="json"),
                 settings=submitter.settings)


def output_line(job: JobPublic) -> dict[str, Any]:
    """One line of an output or error file, in OpenAI's batch shape."""
    line: dict[str, Any] = {"id": f"batch_req_{job.id}", "custom_id": job.custom_id,
                            "response": None, "error": None}
    if job.status == JobStatus.succeeded and job.result is not None and job.usage is not None:
        result, usage = job.generate_result(), job.usage
        line["response"] = {"status_code": 200, "request_id": job.id, "body": {
            "id": f"chatcmpl-{job.id}", "object": "chat.completion",
            "created": int(job.created_at.timestamp()), "model": job.model,
            "choices": [{"index": 0, "finish_reason": result.finish_reason,
                         "message": {"role": "assistant", "content": result.text}}],
            "usage": {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}}}
    else:
        line["error"] = {"code": f"job_{job.status.value}",
                         "message": job.error_message or f"the request was {job.status.value}"}
    return line


def cancel(submitter: Submitter, tenant: str, batch_id: str) -> Batch:
    """Queued requests never run; running ones finish; then the batch is cancelled.

    The caller (the API, the CLI) only marks the batch `cancelling` and tells the
    control process, which finalises it there once no request of it is left running (or,
    while some still run, the job that ends the last one does): a large batch's files are
    never written inside an API request. If that message is lost, the reconciler
    finalises a `cancelling` batch whose requests have all ended."""
    with submitter.database.session() as session:
        batch = get_batch(session, tenant, batch_id)
        moved = move(session, Batch, "status", col(Batch.id) == batch_id, BATCHES,
                     BatchStatus.cancelling, cancelling_at=utcnow())
        if not moved:
            raise InvalidRequest(f"a {batch.status} batch cannot be cancelled")
        _cancel_queued(session, batch_id)
    try:
        broker.send_batch_finalization(submitter.app, batch_id)
    except (OperationalError, OSError) as exc:
        # The cancellation is committed: once its last request has ended, the reconciler
        # finalises a `cancelling` batch that nobody did.
        log.warning("batch %s cancelled; its finalisation could not be sent yet: %s",
                    batch_id, exc)
    with submitter.database.session() as session:
        return get_batch(session, tenant, batch_id)


def public(session: Session, batch: Batch) -> BatchObject:
    """The batch as OpenAI's Batch object."""
    counts = Counter(s for (s,) in session.execute(
        select(Job.status).where(Job.batch_id == batch.id)).all())
    failed = (counts[JobStatus.failed] + counts[JobStatus.cancelled]
              + counts[JobStatus.filtered] + counts[JobStatus.expired] + len(batch.invalid))
    errors = BatchErrors(data=[BatchError.model_validate(e) for e in batch.errors]
                         ) if batch.errors else None
    return BatchObject(
        id=batch.id, endpoint=batch.endpoint, errors=errors,
        input_file_id=batch.input_file_id, completion_window=batch.completion_window,
        status=batch.status, output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id, created_at=int(batch.created_at.timestamp()),
        in_progress_at=unix_seconds(batch.in_progress_at),
        expires_at=int(batch.created_at.timestamp()) + window_s(batch.completion_window),
        finalizing_at=unix_seconds(batch.finalizing_at),
        completed_at=unix_seconds(batch.completed_at), failed_at=unix_seconds(batch.failed_at),
        expired_at=unix_seconds(batch.expired_at),
        cancelling_at=unix_seconds(batch.cancelling_at),
        cancelled_at=unix_seconds(batch.cancelled_at),
        request_counts=BatchRequestCounts(total=batch.total,
                                          completed=counts[JobStatus.succeeded], failed=failed),
        metadata=batch.batch_metadata,
    )
