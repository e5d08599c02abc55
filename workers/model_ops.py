"""Model operations on a worker: load, unload or warm up a model version, or prefill a
mindspace's persona prefix into its prefix cache."""

from __future__ import annotations

import time

from llmos_jobs.db.tables import Job
from llmos_jobs.services import turns
from schemas.model import ModelOp, ModelOpRequest, ModelOpResult, split_model_ref
from workers.context import Outcome, WorkerContext, usage_of
from workers.engines.base import Completion, EngineRequest, EngineSampling
from workers.engines.pool import Warmup, WeightUpdate


def run_model_op(job: Job, ctx: WorkerContext) -> Outcome:
    """Load, unload or warm up the version the job records, or prefill a persona.
    Unloading NAME (no version pinned) unloads every version of it this worker holds.
    A warm-up that replaces a version (a rolling update's replica) first tries to load
    the new weights in place of the old ones (``warm_up``)."""
    request = ModelOpRequest.model_validate(job.payload)
    pinned = split_model_ref(request.model)[1] is not None
    started = time.monotonic()
    warmup: Warmup | None = None
    update: WeightUpdate | None = None
    prefilled: Completion | None = None
    if request.op == ModelOp.unload:
        ctx.pool.unload(job.model, job.model_version if pinned else None)
    elif request.op == ModelOp.warmup:
        warmup, update = warm_up(job, request, ctx)
    elif request.op == ModelOp.prefill:
        assert request.mindspace_id is not None  # the contract requires it
        prefilled = prefill_persona(job, request.mindspace_id, ctx)
    else:
        ctx.pool.get(job.model, job.model_version)
    result = ModelOpResult(
        model=job.model, op=request.op, worker=ctx.name, model_version=job.model_version,
        loaded=served_by(job) in ctx.pool.loaded(), seconds=time.monotonic() - started,
        warmup_tokens=None if warmup is None else warmup.done.completion_tokens,
        warmup_seconds=None if warmup is None else warmup.seconds,
        prefix_tokens=None if prefilled is None else prefilled.prompt_tokens,
        in_place=update is not None and update.in_place,
        reload_reason=None if update is None else update.reload_reason,
    )
    usage = (usage_of(0, 0, 0) if prefilled is None else usage_of(
        prefilled.prompt_tokens, prefilled.completion_tokens, prefilled.cached_tokens))
    return Outcome(result.model_dump(mode="json"), usage)


def warm_up(job: Job, request: ModelOpRequest, ctx: WorkerContext
            ) -> tuple[Warmup, WeightUpdate | None]:
    """Load the version the job records and run a short generation through it. When
    it replaces a version, the engine of that one takes the new weights in place if it
    can (EnginePool.update_in_place); a failed in-place update fails the op, the old
    version still loaded."""
    update: WeightUpdate | None = None
    with ctx.pool.in_use(job.model, job.model_version) as ref:
        if request.replaces is not None and request.replaces != ref.version:
            update = ctx.pool.update_in_place(ref.name, request.replaces, ref.version)
        return ctx.pool.warmup(ref.name, ref.version), update


def prefill_persona(job: Job, mindspace_id: str, ctx: WorkerContext) -> Completion | None:
    """Put the prefix that every turn of the mindspace begins with into the prefix cache
    of the version the job records, in its tenant's namespace: the chat template over
    the persona alone, rendered by the engine as a turn's prompt is (workers.execution
    run_mindspace_turn), so that the first turn computes only its own tail. The persona
    is read from the mindspace here, never carried by the job. None, and nothing
    computed, when this worker no longer holds the version (loading it is the first
    turn's to do) or the mindspace has no persona."""
    prefix = turns.read_persona_prefix(database=ctx.database, tenant=job.tenant,
                                       mindspace_id=mindspace_id)
    if not prefix:
        return None
    with ctx.pool.in_use(job.model, job.model_version):  # held: not unloaded meanwhile
        if served_by(job) not in ctx.pool.loaded():
            return None
        engine = ctx.pool.get(job.model, job.model_version)
        # One token: the engine keeps the keys and values of the prompt it prefilled.
        [done] = engine.generate([EngineRequest(
            EngineSampling(max_tokens=1), messages=prefix, generation_prompt=False,
            priority=job.priority, cache_namespace=job.tenant,
            deadline=time.monotonic() + ctx.time_limit_s)])
    return done


def served_by(job: Job) -> str:
    """``NAME@N``: the model version the job records (``NAME`` for a row older than
    versions, which the current version serves)."""
    return job.model if job.model_version is None else f"{job.model}@{job.model_version}"
