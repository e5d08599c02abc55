"""What a worker does with one delivery of a job: claim it, run it, record the outcome.

Plain functions with no Celery in them; the tasks in ``workers.tasks`` call them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from llmos_jobs import turn_order
from llmos_jobs.db.jobs import (
    ClaimOutcome,
    claim_job,
    fail_job,
    record_abandoned_usage,
    still_owned,
    succeed_job,
)
from llmos_jobs.db.models import Job
from llmos_jobs.db.session import session_scope
from llmos_jobs.settings import get_settings
from llmos_jobs.webhooks.events import emit_job_event
from schemas.common import JobKind, Usage
from schemas.language import GenerateRequest, GenerateResult
from schemas.mindspace import MindspaceTurnRequest, MindspaceTurnResult
from schemas.model import ModelOp, ModelOpRequest, ModelOpResult
from workers import turns
from workers.engine import EngineRequest, SamplingParams
from workers.pool import EnginePool

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: dict[str, Any]
    usage: Usage
    # Effects that must land in the same transaction as the job's success.
    persist: Callable[[Session], None] | None = None


@dataclass(frozen=True)
class WorkerContext:
    name: str
    pool: EnginePool
    claimant_dead: Callable[[Job], bool]
    publish: turn_order.Publish  # the turns that ending a turn releases


CANCEL_POLL_S = 0.2


def cancel_watch(job: Job) -> Callable[[], bool]:
    """True once the job no longer belongs to this attempt (cancelled, or reaped and
    given to another); the database is read at most every CANCEL_POLL_S seconds."""
    next_check = time.monotonic() + CANCEL_POLL_S
    stopped = False

    def should_stop() -> bool:
        nonlocal next_check, stopped
        if stopped or time.monotonic() < next_check:
            return stopped
        next_check = time.monotonic() + CANCEL_POLL_S
        with session_scope() as session:
            stopped = not still_owned(session=session, job_id=job.id, message_id=job.task_id)
        return stopped

    return should_stop


def _usage(prompt: int, completion: int, cached: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def run_generate(job: Job, ctx: WorkerContext) -> Outcome:
    request = GenerateRequest.model_validate(job.payload)
    engine = ctx.pool.get(request.model)
    sampling = SamplingParams(request.max_tokens, request.temperature, tuple(request.stop))
    [done] = engine.generate([EngineRequest(
        sampling, prompt=request.prompt, messages=request.messages, priority=job.priority,
        should_stop=cancel_watch(job),
    )])
    usage = _usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
    result = GenerateResult(text=done.text, finish_reason=done.finish_reason, usage=usage)
    return Outcome(result.model_dump(mode="json"), usage)


def run_model_op(job: Job, ctx: WorkerContext) -> Outcome:
    request = ModelOpRequest.model_validate(job.payload)
    started = time.monotonic()
    if request.op == ModelOp.unload:
        ctx.pool.unload(request.model)
    elif request.op == ModelOp.warmup:
        ctx.pool.warmup(request.model)
    else:
        ctx.pool.get(request.model)
    result = ModelOpResult(
        model=request.model, op=request.op, worker=ctx.name,
        loaded=request.model in ctx.pool.loaded(), seconds=time.monotonic() - started,
    )
    return Outcome(result.model_dump(mode="json"), _usage(0, 0, 0))


def run_mindspace_turn(job: Job, ctx: WorkerContext) -> Outcome:
    request = MindspaceTurnRequest.model_validate(job.payload)
    engine = ctx.pool.get(job.model)
    prompt = turns.assemble(job, request.mindspace_id, request.message, engine)
    sampling = SamplingParams(request.max_tokens, request.temperature)
    [done] = engine.generate([EngineRequest(sampling, messages=prompt.messages,
                                            priority=job.priority,
                                            should_stop=cancel_watch(job))])
    usage = _usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
    result = MindspaceTurnResult(mindspace_id=request.mindspace_id, reply=done.text, usage=usage)

    def persist(session: Session) -> None:
        turns.persist_turn(session, job, request.mindspace_id, request.message, done.text,
                           prompt.compaction, ctx.name)

    return Outcome(result.model_dump(mode="json"), usage, persist)


HANDLERS: dict[JobKind, Callable[[Job, WorkerContext], Outcome]] = {
    JobKind.generate: run_generate,
    JobKind.model_op: run_model_op,
    JobKind.mindspace_turn: run_mindspace_turn,
}


def _ending(job: Job, ctx: WorkerContext) -> AbstractContextManager[Session]:
    """The transaction that records how ``job`` ended; the turn after it follows."""
    return turn_order.ending(job, publish=ctx.publish,
                             dead_after_s=get_settings().worker_dead_after_s)


def execute_job(*, job_id: str, message_id: str, ctx: WorkerContext) -> ClaimOutcome:
    """Run one delivery of a job. Never raises for a failure of the job itself: that is
    recorded on the row and the message is acknowledged."""
    with session_scope() as session:
        claim = claim_job(
            session=session, job_id=job_id, message_id=message_id, worker=ctx.name,
            pid=os.getpid(), max_attempts=get_settings().max_attempts,
            claimant_dead=ctx.claimant_dead,
        )
        if claim.outcome == ClaimOutcome.poison and claim.job and claim.job.webhook_url:
            emit_job_event(session=session, job_id=job_id)
    if claim.outcome == ClaimOutcome.poison and claim.job is not None:
        turn_order.release_after(claim.job, publish=ctx.publish,
                                 dead_after_s=get_settings().worker_dead_after_s)
    if claim.outcome != ClaimOutcome.claimed or claim.job is None:
        log.info("job %s message %s dropped: %s", job_id, message_id, claim.outcome.value)
        return claim.outcome
    job = claim.job
    try:
        outcome = HANDLERS[job.kind](job, ctx)
    except Exception as exc:  # the job failed; its row says why
        log.warning("job %s failed: %s: %s", job_id, type(exc).__name__, exc)
        with _ending(job, ctx) as session:
            failed = fail_job(
                session=session, job_id=job_id, message_id=message_id,
                error_type=type(exc).__name__, error_message=str(exc) or repr(exc),
            )
            if failed and job.webhook_url:  # enqueued once this transaction commits
                emit_job_event(session=session, job_id=job_id)
        _after_final(job)
        return ClaimOutcome.claimed
    with _ending(job, ctx) as session:
        recorded = succeed_job(
            session=session, job_id=job_id, message_id=message_id,
            result=outcome.result, usage=outcome.usage,
        )
        if recorded and outcome.persist is not None:
            outcome.persist(session)
        if recorded and job.webhook_url:  # enqueued once this transaction commits
            emit_job_event(session=session, job_id=job_id)
        if not recorded:  # cancelled while it ran: keep what the work cost
            record_abandoned_usage(session=session, job_id=job_id, message_id=message_id,
                                   usage=outcome.usage)
    _after_final(job)
    return ClaimOutcome.claimed


def _after_final(job: Job) -> None:
    """A job of a batch ended: the last one to end writes the batch's files."""
    if job.batch_id is None:
        return
    from llmos_jobs import batches

    with session_scope() as session:
        done = batches.job_finished(session, job.batch_id)
    if done:
        batches.finalize(job.batch_id)
