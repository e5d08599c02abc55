"""Job graphs: an input longer than its model's context becomes a parent job whose
children do the work.

    parent (running, never sent)
      level 0: one `part` child per chunk of the input (token-aware, overlapping)
      level n: when level n-1's outputs, joined, still do not fit: chunks of them again
      last:    one `reduce` child over the joined outputs; its result is the parent's

Children are ordinary jobs (at the parent's priority, on the model's queue): the broker,
the claim, the reaper and the reconciler treat them as any other, so a lost message or
a dead worker delays a graph, never strands it. After a child ends, whoever ended it (a
worker, a cancel, the reconciler's pass over running parents) calls ``child_ended``:
when the child's level has ended, the next level is created, once, by a compare-and-set
on the parent's level; a failed or cancelled child fails the parent with its reason and
cancels the rest; the reduce's success is the parent's."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session

from broker_config import queue_for
from llmos_jobs import broker
from llmos_jobs.chunking import Chunk, fitting
from llmos_jobs.db import graphs as graph_rows
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.tables import GraphRole, Job, JobPublic
from llmos_jobs.errors import BrokerUnavailable, InvalidRequest
from llmos_jobs.services.graph_plans import GraphPlan, plans
from llmos_jobs.services.submission import Submitter
from llmos_jobs.services.tokenizers import ModelText, model_text
from llmos_jobs.services.webhooks.events import emit_job_event
from schemas.common import JobKind, JobStatus, Usage

log = logging.getLogger(__name__)

# Tokens each chunk repeats from the end of the one before (at most a quarter of it).
OVERLAP_TOKENS = 64
# Levels of partial results a graph may go through before it gives up: each level must
# shrink the text, or the outputs are too long for the chunks they summarise.
MAX_LEVELS = 8


def chunks_for(plan: GraphPlan, payload: dict[str, Any], text: str, model: ModelText
               ) -> list[Chunk] | None:
    """The chunks ``text`` must be split into for jobs with ``payload``'s options, or
    None when one job can take it whole."""
    budget = plan.budget(payload, model)
    if budget < 1:
        raise InvalidRequest(f"no input fits model {model.model!r}'s context of "
                             f"{model.context_length} tokens with these options")
    if len(model.offsets(text)) <= budget:
        return None
    return fitting(text, model.offsets, size=budget, overlap=min(OVERLAP_TOKENS, budget // 4))


def split_if_long(submitter: Submitter, kind: JobKind, payload: dict[str, Any]
                  ) -> list[Chunk] | None:
    """The chunks a request of ``kind`` must become a graph of, or None when one job
    takes it (a kind with no plan, a text that fits, a model with no tokenizer here:
    sent whole, the worker says whether it fits)."""
    plan = plans(submitter.database).get(kind)
    if plan is None:
        return None
    try:
        model = model_text(submitter.database, str(payload["model"]))
    except InvalidRequest:
        return None
    return chunks_for(plan, payload, plan.text_of(payload), model)


def _child(parent: Job, plan: GraphPlan, payload: dict[str, Any], text: str, *,
           role: GraphRole, level: int, index: int) -> job_rows.JobCreate:
    return job_rows.JobCreate(
        tenant=parent.tenant, kind=parent.kind, priority=parent.priority, model=parent.model,
        model_version=parent.model_version, payload=plan.part(payload, text),
        queue=parent.queue, parent_id=parent.id, deadline=parent.deadline,
        graph_role=role.value, graph_level=level, graph_index=index)


def submit(submitter: Submitter, tenant: str, *, kind: JobKind, model: str,
           payload: dict[str, Any], chunks: Sequence[Chunk], priority: int,
           webhook: str | None, deadline: datetime | None = None) -> JobPublic:
    """Commit a running parent for ``payload`` and one child per chunk, then send the
    children. The parent is what the producer follows: its progress, its result."""
    plan = plans(submitter.database)[kind]
    with submitter.database.session() as session:
        parent = job_rows.create_job(session=session, job_in=job_rows.JobCreate(
            tenant=tenant, kind=kind, priority=priority, model=model, payload=payload,
            queue=queue_for(broker.task_for_kind(kind), model=model), webhook_url=webhook,
            graph_role=GraphRole.parent.value, deadline=deadline))
        graph_rows.start_parent(session=session, job_id=parent.id)
        kids = [job_rows.create_job(session=session, job_in=_child(
            parent, plan, payload, chunk.text, role=GraphRole.part, level=0,
            index=chunk.index)) for chunk in chunks]
    try:
        submitter.publish(kids)
    except BrokerUnavailable:
        child_ended(submitter, parent.id)  # its children that could not leave failed it
        raise
    for queue, name in sorted({(j.queue, j.model) for j in kids}):
        submitter.warn_without_worker(queue, name)
    with submitter.database.session() as session:
        [public] = with_progress(session, [job_rows.get_job(session=session, tenant=tenant,
                                                            job_id=parent.id)])
        return public


def with_progress(session: Session, jobs: Sequence[Job]) -> list[JobPublic]:
    """``jobs`` as producers see them, a graph parent with how far it has come."""
    progress = graph_rows.progress_of(session=session, parents=jobs)
    return [JobPublic.from_row(job, progress.get(job.id)) for job in jobs]


_UNUSABLE = (JobStatus.failed, JobStatus.cancelled, JobStatus.filtered, JobStatus.expired)


def child_ended(submitter: Submitter, parent_id: str) -> None:
    """A child of ``parent_id`` ended: when its level has, the graph moves on (see the
    module docstring). Safe to run any number of times, by any number of processes."""
    with submitter.database.session() as session:
        parent = session.get(Job, parent_id, populate_existing=True)
        if parent is None or parent.status != JobStatus.running or parent.graph_level is None:
            return
        level = parent.graph_level
        kids = graph_rows.children(session=session, parent_id=parent_id, level=level)
        every = graph_rows.children(session=session, parent_id=parent_id)
        session.expunge_all()
    # One child that failed, was cancelled, was stopped by a content filter or expired
    # (its deadline, the parent's, passed before it started) fails the graph at once:
    # the rest of it could not be used. (A filtered child's message names the rule,
    # never the text.)
    failed = next((k for k in kids if k.status in _UNUSABLE), None)
    if failed is None and (not kids or not all(k.status.is_final for k in kids)):
        return
    if failed is not None:
        _fail(submitter, parent, failed.error_type or f"Child{failed.status.value.title()}",
              f"{_name(failed)} {failed.status.value}: "
              f"{failed.error_message or 'no reason given'}")
    elif kids[0].graph_role == GraphRole.reduce:
        _succeed(submitter, parent, kids[0], every)
    else:
        _next_level(submitter, parent, level, kids)


def _name(child: Job) -> str:
    if child.graph_role == GraphRole.reduce:
        return f"the reduce job {child.id}"
    return f"chunk {child.graph_index} of level {child.graph_level} (job {child.id})"


def _next_level(submitter: Submitter, parent: Job, level: int, kids: Sequence[Job]) -> None:
    plan = plans(submitter.database)[parent.kind]
    joined = plan.join([plan.output(k.result or {}) for k in kids])
    try:
        chunks = chunks_for(plan, parent.payload, joined,
                            model_text(submitter.database, parent.model))
    except (InvalidRequest, ValueError) as exc:
        _fail(submitter, parent, "GraphError", f"level {level + 1} could not be planned: {exc}")
        return
    if chunks is not None and level + 1 >= MAX_LEVELS:
        _fail(submitter, parent, "GraphError",
              f"the partial results still did not fit one job after {MAX_LEVELS} levels")
        return
    with submitter.database.session() as session:
        if not graph_rows.next_level(session=session, parent_id=parent.id, level=level):
            return  # another caller created it
        if chunks is None:
            created = [job_rows.create_job(session=session, job_in=_child(
                parent, plan, parent.payload, joined, role=GraphRole.reduce,
                level=level + 1, index=0))]
        else:
            created = [job_rows.create_job(session=session, job_in=_child(
                parent, plan, parent.payload, chunk.text, role=GraphRole.part,
                level=level + 1, index=chunk.index)) for chunk in chunks]
    log.info("graph %s: level %d created (%d job(s))", parent.id, level + 1, len(created))
    submitter.publish(created)


def _succeed(submitter: Submitter, parent: Job, reduce: Job, every: Sequence[Job]) -> None:
    usage = Usage(prompt_tokens=sum(k.prompt_tokens or 0 for k in every),
                  completion_tokens=sum(k.completion_tokens or 0 for k in every),
                  cached_tokens=sum(k.cached_tokens or 0 for k in every))
    with submitter.database.session() as session:
        won = graph_rows.succeed_parent(session=session, parent_id=parent.id,
                                        result=reduce.result or {}, usage=usage)
        if won and parent.webhook_url:  # sent once this transaction commits
            emit_job_event(session=session, job_id=parent.id, settings=submitter.settings)


def _fail(submitter: Submitter, parent: Job, error_type: str, reason: str) -> None:
    with submitter.database.session() as session:
        won = graph_rows.fail_parent(session=session, parent_id=parent.id,
                                     error_type=error_type, error_message=reason)
        if not won:
            return
        graph_rows.cancel_children(session=session, parent_id=parent.id,
                                   error_type="GraphFailed",
                                   error_message=f"graph {parent.id} failed: {reason}"[:4000])
        if parent.webhook_url:
            emit_job_event(session=session, job_id=parent.id, settings=submitter.settings)


def cancel_children(session: Session, parent: Job) -> int:
    """A cancelled parent's children that have not ended never will (in the parent's
    cancelling transaction)."""
    if parent.graph_role != GraphRole.parent:
        return 0
    return graph_rows.cancel_children(session=session, parent_id=parent.id,
                                      error_type="GraphCancelled",
                                      error_message=f"graph {parent.id} was cancelled")


def advance_stalled(submitter: Submitter, *, older_than_s: float, limit: int = 1000) -> int:
    """The reconciler's pass: every running parent is looked at again, so that a graph
    whose last child's ending was never followed up (its process died after the commit)
    moves on. How many parents were looked at."""
    with submitter.database.session() as session:
        parents = graph_rows.running_parents(session=session, older_than_s=older_than_s,
                                             limit=limit)
    for parent_id in parents:
        child_ended(submitter, parent_id)
    return len(parents)
