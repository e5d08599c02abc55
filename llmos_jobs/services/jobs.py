"""Jobs as a tenant sees them: read, list, wait for, cancel."""

from __future__ import annotations

import time
from collections.abc import Sequence

from llmos_jobs import broker, metrics
from llmos_jobs.db import batch_progress, observe
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.tables import JobHeader, JobPublic
from llmos_jobs.errors import NotFound
from llmos_jobs.services import batches, graphs, turns
from llmos_jobs.services.routing import RoutingPolicy
from llmos_jobs.services.submission import Submitter
from llmos_jobs.services.webhooks.events import emit_job_event
from schemas.common import JobStatus


def get(submitter: Submitter, tenant: str, job_id: str) -> JobPublic:
    with submitter.database.session() as session:
        [public] = graphs.with_progress(
            session, [job_rows.get_job(session=session, tenant=tenant, job_id=job_id)])
        return public


def listing(submitter: Submitter, tenant: str, *, status: JobStatus | None, limit: int
            ) -> list[JobPublic]:
    with submitter.database.session() as session:
        rows = job_rows.list_jobs(session=session, tenant=tenant, status=status, limit=limit)
        return graphs.with_progress(session, rows)


def cancel(submitter: Submitter, tenant: str, job_id: str) -> JobPublic:
    """Cancel a job that has not ended; a cancelled turn lets the next one run, a job of
    a batch counts toward it (the control process finalises the batch when it was the
    last one), a graph's parent takes its children with it, and a graph's child fails
    its parent."""
    with submitter.database.session() as session:
        job = job_rows.get_job(session=session, tenant=tenant, job_id=job_id)
    with turns.ending(job, publish=submitter.publish,
                      routing=RoutingPolicy.of(submitter.settings),
                      database=submitter.database) as session:
        job = job_rows.cancel_job(session=session, tenant=tenant, job_id=job_id)
        graphs.cancel_children(session, job)
        if job.webhook_url:  # enqueued once the cancellation commits
            emit_job_event(session=session, job_id=job.id, settings=submitter.settings)
        [cancelled] = graphs.with_progress(session, [job])
    if job.parent_id is not None:
        graphs.child_ended(submitter, job.parent_id)
    if job.batch_id is not None:
        with submitter.database.session() as session:
            done = batch_progress.job_finished(session, job.batch_id)
        if done:
            broker.send_batch_finalization(submitter.app, job.batch_id)
    return cancelled


def after_ending(submitter: Submitter, job: JobHeader, *, routing: RoutingPolicy) -> None:
    """What follows a job that ended outside a worker (expired, or failed because no
    replica serves its version), once that is committed: the next turn of its
    mindspace, its graph, its batch, the count. Its webhook event was emitted in the
    transaction that ended it."""
    turns.release_after(job, publish=submitter.publish, routing=routing,
                        database=submitter.database)
    if job.parent_id is not None:
        graphs.child_ended(submitter, job.parent_id)
    if job.batch_id is not None:
        with submitter.database.session() as session:
            done = batch_progress.job_finished(session, job.batch_id)
        if done:
            batches.finalize(submitter, job.batch_id)
    with submitter.database.session() as session:
        final = observe.ended_job(session=session, job_id=job.id)
    if final is not None:
        metrics.job_ended(final)


def wait(submitter: Submitter, tenant: str, job_ids: Sequence[str], *, timeout_s: float,
         poll_s: float) -> list[JobPublic]:
    """The jobs once all are final; TimeoutError naming those that are not."""
    deadline = time.monotonic() + timeout_s
    final: dict[str, JobPublic] = {}
    while True:
        pending = [j for j in job_ids if j not in final]
        with submitter.database.session() as session:
            rows = job_rows.get_jobs(session=session, tenant=tenant, job_ids=pending)
            missing = [j for j in pending if j not in rows]
            if missing:
                raise NotFound(f"job {missing[0]} not found")
            final.update((p.id, p) for p in graphs.with_progress(
                session, [r for r in rows.values() if r.status.is_final]))
        pending = [j for j in job_ids if j not in final]
        if not pending:
            return [final[j] for j in job_ids]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} job(s) not finished: {', '.join(pending)}")
        time.sleep(poll_s)
