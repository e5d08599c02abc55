"""What a worker does with one delivery of a job: claim it, run it, record the outcome.

Plain functions with no Celery in them; the tasks in ``workers.tasks`` call them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session

from llmos_jobs import metrics
from llmos_jobs.crypto import KeyRingMismatch
from llmos_jobs.db import batch_progress, observe
from llmos_jobs.db.jobs import (
    ClaimOutcome,
    claim_job,
    fail_attempt,
    fail_job,
    job_header,
    note_redactions,
    record_abandoned_usage,
    succeed_job,
)
from llmos_jobs.db.tables import Job
from llmos_jobs.prompt_templates import DEFAULT_FAMILY, render_retry
from llmos_jobs.services import batches, graphs, turns
from llmos_jobs.services import presets as services_presets
from llmos_jobs.services.filters import ContentFiltered, record_filtered
from llmos_jobs.services.routing import RoutingPolicy
from llmos_jobs.services.turns import TurnRef
from llmos_jobs.services.webhooks.events import emit_job_event
from schemas.common import ChatMessage, JobKind, JobStatus
from schemas.filters import Direction, ModerationRule
from schemas.language import GenerateRequest, GenerateResult
from schemas.mindspace import MindspaceTurnRequest, MindspaceTurnResult
from schemas.tasks import PRESET_KINDS
from workers import presets
from workers.context import JobTimeout, Outcome, WorkerContext, usage_of
from workers.engines.base import Completion, Engine, EngineRequest, EngineSampling
from workers.filtering import JobFilters
from workers.model_ops import run_model_op, served_by
from workers.streaming import TextSink

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# How long a finished job's outcome waits for the database before the delivery is
# retried (and the job run again): longer than a database failover.
RECORD_PATIENCE_S = 120.0


def run_on_engine(job: Job, ctx: WorkerContext, engine: Engine, sampling: EngineSampling,
                  timeout_s: float | None, *, prompt: str | None = None,
                  messages: Sequence[ChatMessage] | None = None,
                  on_text: Callable[[str], None] | None = None) -> Completion:
    """One generation for ``job`` under its deadline, stopped early if the job is
    cancelled or taken from this attempt; raises JobTimeout when the deadline ended it.
    ``on_text``: the text as it is decoded (only a generation whose text is the job's
    own, unscreened output passes one: never a moderation step's, nor a retried try's)."""
    limit = min(timeout_s or ctx.time_limit_s, ctx.time_limit_s)
    deadline = time.monotonic() + limit
    assert job.task_id is not None
    should_stop = ctx.watcher.watch(job.id, job.task_id)
    handed_at = time.monotonic()
    try:
        [done] = engine.generate([EngineRequest(
            sampling, priority=job.priority, should_stop=should_stop,
            cache_namespace=job.tenant, deadline=deadline, prompt=prompt, messages=messages,
            on_text=on_text,
        )])
    finally:
        ctx.watcher.forget(job.id, job.task_id)
    if done.first_token_at is not None:
        metrics.TIME_TO_FIRST_TOKEN.labels(job.model).observe(
            max(0.0, done.first_token_at - handed_at))
    if done.finish_reason == "abort" and not should_stop() and time.monotonic() >= deadline:
        raise JobTimeout(f"the job ran past its time limit of {limit:g} s")
    return done


def filters_of(job: Job, ctx: WorkerContext) -> JobFilters:
    """The content filters of the job's tenant; the moderation step runs on this
    worker's engines, under the job's deadline and cancellation."""
    def classify(rule: ModerationRule, text: str) -> str:
        with ctx.pool.in_use(rule.model) as ref:
            engine = ctx.pool.get(ref.name, ref.version)
            return run_on_engine(job, ctx, engine, EngineSampling(rule.max_tokens), None,
                                 prompt=text).text

    return JobFilters.of(job, ctx.database, classify)


def _text_sink(job: Job, ctx: WorkerContext, filters: JobFilters
               ) -> tuple[TextSink | None, TextSink | None]:
    """Where the job's text goes as live events: (the sink, and the sink again when the
    engine may feed it as it decodes). A tenant whose rules screen the output gets its
    text in one piece once screened: text the rules would redact or block never leaves."""
    sink = ctx.events.text_sink(job.id) if ctx.events is not None else None
    return sink, (None if filters.screens_output else sink)


def run_generate(job: Job, ctx: WorkerContext) -> Outcome:
    request = GenerateRequest.model_validate(job.payload)
    filters = filters_of(job, ctx)
    prompt = None if request.prompt is None else filters.text(request.prompt, Direction.input)
    messages = None if request.messages is None else filters.messages(request.messages)
    engine = ctx.pool.get(job.model, job.model_version)
    if request.response_format is not None:
        screened = request.model_copy(update={"prompt": prompt, "messages": messages})
        return _structured_generate(job, ctx, engine, screened, filters)
    sampling = EngineSampling(request.max_tokens, request.temperature, tuple(request.stop))
    sink, live = _text_sink(job, ctx, filters)
    done = run_on_engine(job, ctx, engine, sampling, request.timeout_s,
                         prompt=prompt, messages=messages, on_text=live)
    usage = usage_of(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
    text = filters.text(done.text, Direction.output)
    if sink is not None:
        sink.complete(text)
    result = GenerateResult(text=text, finish_reason=done.finish_reason, usage=usage)
    return Outcome(result.model_dump(mode="json"), usage, redacted_by=filters.redacted)


def _screened(filters: JobFilters, done: Completion) -> Completion:
    """``done`` with its text through the output filters (raises ContentFiltered)."""
    return replace(done, text=filters.text(done.text, Direction.output))


def _structured_generate(job: Job, ctx: WorkerContext, engine: Engine,
                         request: GenerateRequest, filters: JobFilters) -> Outcome:
    """A generation whose output must match ``response_format``'s schema: tried once
    more, with the error shown to the model, then failed (workers.presets). ``request``
    is already screened on input; each output is screened before it is validated, so
    what is validated and stored is what the tenant's rules let out."""
    assert request.response_format is not None
    schema = request.response_format.json_schema.schema_
    sampling = EngineSampling(request.max_tokens, request.temperature, tuple(request.stop),
                              json_schema=presets.schema_text(schema))
    left = _time_left(ctx, request.timeout_s)
    first = _screened(filters, run_on_engine(job, ctx, engine, sampling, left(),
                                             prompt=request.prompt,
                                             messages=request.messages))

    def again(output: str, error: str) -> Completion:
        if request.prompt is not None:
            family = services_presets.model_family(ctx.database, served_by(job))
            return _screened(filters, run_on_engine(
                job, ctx, engine, sampling, left(),
                prompt=render_retry(request.prompt, output, error, family)))
        # Chat messages get the model's own chat template: the correction is plain text.
        assert request.messages is not None
        correction = render_retry("", "", error, DEFAULT_FAMILY).strip()
        return _screened(filters, run_on_engine(job, ctx, engine, sampling, left(), messages=[
            *request.messages, ChatMessage(role="assistant", content=output or "(nothing)"),
            ChatMessage(role="user", content=correction)]))

    outcome = presets.validated(schema, first, again)
    if ctx.events is not None:  # in one piece: a first try may be retried
        ctx.events.text_sink(job.id).complete(outcome.done.text)
    result = GenerateResult(
        text=outcome.done.text, finish_reason=outcome.done.finish_reason, usage=outcome.usage,
        parsed=outcome.value, retried=outcome.first_error is not None,
        first_error=outcome.first_error)
    return Outcome(result.model_dump(mode="json"), outcome.usage, redacted_by=filters.redacted)


def _time_left(ctx: WorkerContext, timeout_s: float | None) -> Callable[[], float]:
    """What is left, at each call, of the job's time limit from now on: the tries of a
    structured output share one limit, they do not get one each."""
    deadline = time.monotonic() + min(timeout_s or ctx.time_limit_s, ctx.time_limit_s)
    return lambda: max(deadline - time.monotonic(), 1e-3)


def run_task_preset(job: Job, ctx: WorkerContext) -> Outcome:
    """summarise, translate, answer, classify, extract (workers.presets)."""
    engine = ctx.pool.get(job.model, job.model_version)
    family = services_presets.model_family(ctx.database, served_by(job))
    filters = filters_of(job, ctx)
    left: Callable[[], float] | None = None

    def generate(prompt: str, sampling: EngineSampling, timeout_s: float | None
                 ) -> Completion:
        nonlocal left
        left = left or _time_left(ctx, timeout_s)
        return _screened(filters, run_on_engine(job, ctx, engine, sampling, left(),
                                                prompt=prompt))

    payload = presets.screened_request(
        job.payload, lambda texts: filters.texts(texts, Direction.input))
    result, usage = presets.run_preset(job.kind, payload, family, generate)
    return Outcome(result.model_dump(mode="json"), usage, redacted_by=filters.redacted)


def run_mindspace_turn(job: Job, ctx: WorkerContext) -> Outcome:
    request = MindspaceTurnRequest.model_validate(job.payload)
    filters = filters_of(job, ctx)
    # The screened message is what the history keeps: no redacted text is stored.
    message = filters.text(request.message, Direction.input)
    engine = ctx.pool.get(job.model, job.model_version)
    prompt = turns.assemble(job, request.mindspace_id, message,
                            lambda text: len(engine.tokenize(text)), database=ctx.database)
    sampling = EngineSampling(request.max_tokens, request.temperature)
    sink, live = _text_sink(job, ctx, filters)
    done = run_on_engine(job, ctx, engine, sampling, request.timeout_s,
                         messages=prompt.messages, on_text=live)
    usage = usage_of(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
    reply = filters.text(done.text, Direction.output)
    if sink is not None:
        sink.complete(reply)
    result = MindspaceTurnResult(mindspace_id=request.mindspace_id, reply=reply, usage=usage)

    def persist(session: Session) -> None:
        turns.persist_turn(session, job, request.mindspace_id, message, reply,
                           prompt.compaction, ctx.name)

    return Outcome(result.model_dump(mode="json"), usage, persist, filters.redacted)


HANDLERS: dict[JobKind, Callable[[Job, WorkerContext], Outcome]] = {
    JobKind.generate: run_generate,
    JobKind.model_op: run_model_op,
    JobKind.mindspace_turn: run_mindspace_turn,
    **{kind: run_task_preset for kind in PRESET_KINDS},
}


def _ending(job: TurnRef, ctx: WorkerContext) -> AbstractContextManager[Session]:
    """The transaction that records how ``job`` ended; the turn after it follows."""
    return turns.ending(job, publish=ctx.publish,
                        routing=RoutingPolicy.of(ctx.settings), database=ctx.database)


def _record(job: Job, ctx: WorkerContext, write: Callable[[Session], None]) -> None:
    """Commit the outcome of a finished attempt. A database blip is waited out here, not
    by a redelivery: the work is done and this attempt still holds the job. Past
    RECORD_PATIENCE_S the error goes up, the delivery is retried, and the claim (seeing
    that no attempt of this process holds the job any more) runs the job again."""
    def commit() -> None:
        with _ending(job, ctx) as session:
            write(session)  # compare-and-set writes: a second commit changes nothing

    _waiting_out_the_database(job.id, "outcome not recorded", commit)


def _waiting_out_the_database(job_id: str, failed_to: str, step: Callable[[], _T]) -> _T:
    """``step()``, tried again in place, with backoff, while the database is out of
    reach, for up to RECORD_PATIENCE_S; then the error goes up."""
    deadline = time.monotonic() + RECORD_PATIENCE_S
    delay = 0.5
    while True:
        try:
            return step()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: %s, retrying in %.1f s: %s", job_id, failed_to, delay,
                        type(exc).__name__)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


def execute_job(*, job_id: str, message_id: str, ctx: WorkerContext) -> ClaimOutcome:
    """Run one delivery of a job. Never raises for a failure of the job itself, nor for
    anything else that goes wrong once the delivery arrived: the attempt ends failed
    with the reason, and the message is acknowledged. Only a database error goes up,
    for Celery to retry the delivery."""
    with ctx.held.holding(job_id, message_id):  # before the claim: see workers.held
        try:
            outcome = _execute(job_id, message_id, ctx)
            if outcome in (ClaimOutcome.claimed, ClaimOutcome.poison, ClaimOutcome.expired):
                _announce_end(job_id, ctx)
            return outcome
        except DBAPIError:
            raise
        except Exception as exc:
            log.exception("job %s message %s: attempt abandoned", job_id, message_id)
            if isinstance(exc, KeyRingMismatch):
                # Whatever this process encrypted, the others could not read: the reason
                # is the error type alone.
                _fail_attempt(job_id, message_id, ctx, "KeyRingMismatch", None)
            else:
                _fail_attempt(job_id, message_id, ctx, "WorkerError",
                              f"the worker could not run or record the job: "
                              f"{type(exc).__name__}: {exc}")
            _announce_end(job_id, ctx)
            return ClaimOutcome.claimed


def _publish_running(job_id: str, ctx: WorkerContext) -> None:
    if ctx.events is not None:
        ctx.events.status(job_id, JobStatus.running)


def _announce_end(job_id: str, ctx: WorkerContext) -> None:
    """The job's status once this delivery is recorded, as its stream's last event (a
    job cancelled while it ran ends cancelled, not succeeded), and in the metrics, when
    it is final: only the delivery that ended it gets here, so it is counted once."""
    with ctx.database.session() as session:
        ended = observe.ended_job(session=session, job_id=job_id)
    if ended is None:  # the attempt failed and the job will run again
        return
    # A slot freed: the dispatcher releases the next held job now, not at its poll.
    ctx.submitter.ring_dispatcher()
    metrics.job_ended(ended)
    if ctx.events is not None:
        ctx.events.status(job_id, JobStatus(ended.status))


def _fail_attempt(job_id: str, message_id: str, ctx: WorkerContext, error_type: str,
                  reason: str | None) -> None:
    """End the attempt ``message_id`` failed, claimed or not, without reading the job's
    payload (what failed may be its decryption)."""
    with ctx.database.session() as session:
        header = job_header(session=session, job_id=job_id)
    if header is None:
        return
    with _ending(header, ctx) as session:
        failed = fail_attempt(session=session, job_id=job_id, message_id=message_id,
                              worker=ctx.name, error_type=error_type, error_message=reason)
    if failed and header.webhook_url and error_type != "KeyRingMismatch":
        with ctx.database.session() as session:
            emit_job_event(session=session, job_id=job_id, settings=ctx.settings)
    if failed:
        _after_final(header.batch_id, header.parent_id, ctx)


def _execute(job_id: str, message_id: str, ctx: WorkerContext) -> ClaimOutcome:
    with ctx.database.session() as session:
        claim = claim_job(
            session=session, job_id=job_id, message_id=message_id, worker=ctx.name,
            pid=os.getpid(), max_attempts=ctx.settings.max_attempts,
            claimant_dead=ctx.claimant_dead,
        )
        # Ended by the claim itself (delivered too often, or past its deadline): it never
        # runs, and what follows an ending follows here.
        ended_unrun = claim.outcome in (ClaimOutcome.poison, ClaimOutcome.expired)
        if ended_unrun and claim.job and claim.job.webhook_url:
            emit_job_event(session=session, job_id=job_id, settings=ctx.settings)
    if ended_unrun and claim.job is not None:
        turns.release_after(claim.job, publish=ctx.publish,
                            routing=RoutingPolicy.of(ctx.settings),
                            database=ctx.database)
        _after_final(claim.job.batch_id, claim.job.parent_id, ctx)
    if claim.outcome != ClaimOutcome.claimed or claim.job is None:
        log.info("job %s message %s dropped: %s", job_id, message_id, claim.outcome.value)
        return claim.outcome
    job = claim.job
    _publish_running(job.id, ctx)
    try:
        # A handler reads the model, the mindspace...: the database out of reach then is
        # not the job failing, and is waited out by this attempt, which holds the job
        # (past the patience the delivery is retried, and its claim takes the job over).
        outcome = _waiting_out_the_database(
            job.id, "database out of reach while running", lambda: _handle(job, ctx))
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:  # the job failed, or a filter blocked it; its row says why
        _record_unsuccessful(job, message_id, ctx, exc)
        return ClaimOutcome.claimed

    def record_success(session: Session) -> None:
        recorded = succeed_job(
            session=session, job_id=job_id, message_id=message_id,
            result=outcome.result, usage=outcome.usage,
        )
        if recorded and outcome.persist is not None:
            outcome.persist(session)
        if recorded and outcome.redacted_by:
            note_redactions(session=session, job_id=job_id, message_id=message_id,
                            rules=outcome.redacted_by)
        if recorded and job.webhook_url:  # enqueued once this transaction commits
            emit_job_event(session=session, job_id=job_id, settings=ctx.settings)
        if not recorded:  # cancelled while it ran: keep what the work cost
            record_abandoned_usage(session=session, job_id=job_id, message_id=message_id,
                                   usage=outcome.usage)

    _record(job, ctx, record_success)
    _after_final(job.batch_id, job.parent_id, ctx)
    return ClaimOutcome.claimed


def _handle(job: Job, ctx: WorkerContext) -> Outcome:
    """Run the job's handler holding the model version it records, so that the pool
    neither evicts nor expires it while the job runs (a model operation holds nothing:
    an unload must not wait for itself)."""
    if job.kind == JobKind.model_op:
        return HANDLERS[job.kind](job, ctx)
    with ctx.pool.in_use(job.model, job.model_version):
        return HANDLERS[job.kind](job, ctx)


def _record_unsuccessful(job: Job, message_id: str, ctx: WorkerContext,
                         exc: Exception) -> None:
    """The outcome of an attempt whose handler raised: `filtered` when a content filter
    blocked the job, else `failed` with the reason."""
    write: Callable[[Session], None]
    if isinstance(exc, ContentFiltered):
        blocked = exc

        def write(session: Session) -> None:
            record_filtered(session, job_id=job.id, message_id=message_id, tenant=job.tenant,
                            blocked=blocked, worker=ctx.name, settings=ctx.settings)
    else:
        log.warning("job %s failed: %s: %s", job.id, type(exc).__name__, exc)
        error_type = "timeout" if isinstance(exc, JobTimeout) else type(exc).__name__
        error_message = str(exc) or repr(exc)

        def write(session: Session) -> None:
            failed = fail_job(session=session, job_id=job.id, message_id=message_id,
                              error_type=error_type, error_message=error_message)
            if failed and job.webhook_url:  # enqueued once this transaction commits
                emit_job_event(session=session, job_id=job.id, settings=ctx.settings)

    _record(job, ctx, write)
    _after_final(job.batch_id, job.parent_id, ctx)


def _after_final(batch_id: str | None, parent_id: str | None, ctx: WorkerContext) -> None:
    """A job ended. Of a graph: its graph moves on when its level has ended. Of a batch:
    the last one to end has the batch's files written."""
    if parent_id is not None:
        graphs.child_ended(ctx.submitter, parent_id)
    if batch_id is None:
        return
    with ctx.database.session() as session:
        done = batch_progress.job_finished(session, batch_id)
    if done and ctx.finalize_batch is not None:
        ctx.finalize_batch(batch_id)
    elif done:
        batches.finalize(ctx.submitter, batch_id)
