"""The scaling signal with real workers: `llmos scale recommend --json` and the API's
gauge llmos_model_workers_needed agree with each other and with the formula applied to
counts this test derives from the job rows itself."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlmodel import col, select

from llmos_jobs.db.tables import Job
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import IllegalTransition
from llmos_jobs.scaling import ModelDemand, ScalePolicy, workers_needed
from schemas.common import JobStatus
from tests.support.api_server import ApiServer
from tests.support.cli import llmos
from tests.support.stack import Stack
from tests.support.waiting import until

CONCURRENCY = 2
FINISHED = 6
WAITING = 7
PAST_DEADLINES = 3


def test_recommendation_and_gauge_agree_with_the_formula(stack: Stack, api: ApiServer
                                                         ) -> None:
    client = stack.client()
    model = f"scaled-{uuid.uuid4().hex[:8]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    # Phase 1: a quick worker finishes some jobs, which measures its throughput.
    quick = stack.start_worker(f"quick-{model}@test", "--model", model, "--concurrency",
                               str(CONCURRENCY), env={"LLMOS_NOOP_DELAY_MS": "200"})
    try:
        done = client.wait([client.generate(model=model, prompt=f"quick {i}",
                                            max_tokens=2).id for i in range(FINISHED)],
                           timeout_s=120)
    finally:
        stack.stop_worker(quick)
    assert all(j.status == JobStatus.succeeded for j in done)
    # The rate from the rows, independently: each job kept 1/c of a worker busy.
    busy = sum((j.finished_at - j.started_at).total_seconds()  # type: ignore[operator]
               for j in done) / CONCURRENCY
    rate = FINISHED / busy
    # Phase 2: a worker that never finishes holds CONCURRENCY jobs running; the rest wait.
    stuck = stack.start_worker(f"stuck-{model}@test", "--model", model, "--concurrency",
                               str(CONCURRENCY), env={"LLMOS_NOOP_DELAY_MS": "600000"})
    waiting = [client.generate(model=model, prompt=f"wait {i}", max_tokens=2).id
               for i in range(WAITING)]
    try:
        until(lambda: _count(stack, waiting, JobStatus.running) == CONCURRENCY,
              "the stuck worker holding its jobs", 120)
        # The expiry sweep would end the jobs whose deadline has passed: no control
        # process runs while the signal is read.
        with stack.without_control():
            with stack.database.session() as session:
                queued = session.exec(select(Job.id).where(
                    col(Job.id).in_(waiting), Job.status == JobStatus.queued)).all()
                # Deadlines already past need a free slot now: a term that time cannot move.
                session.execute(update(Job).where(col(Job.id).in_(queued[:PAST_DEADLINES]))
                                .values(deadline=utcnow() - timedelta(seconds=5)))
                session.commit()
            policy = ScalePolicy()  # the stack sets no LLMOS_SCALE_*: the defaults
            demand = ModelDemand(model=model, queued=WAITING - CONCURRENCY,
                                 running=CONCURRENCY, deadlines_s=(0.0,) * PAST_DEADLINES,
                                 live_workers=1, concurrency=CONCURRENCY,
                                 jobs_per_worker_s=rate)
            expected = workers_needed(demand, policy)
            out = llmos("scale", "recommend", "--model", model, "--json", env=stack.env)
            assert out.returncode == 0, out.stderr
            (seen,) = json.loads(out.stdout)["models"]
            response = httpx.get(f"{api.url}/metrics", timeout=60)
            gauge = {s.labels["model"]: s.value
                     for family in text_string_to_metric_families(response.text)
                     for s in family.samples if s.name == "llmos_model_workers_needed"}
            # Nothing moved while the two were read.
            assert _count(stack, waiting, JobStatus.running) == CONCURRENCY
            assert _count(stack, waiting, JobStatus.queued) == WAITING - CONCURRENCY
    finally:
        for job_id in waiting:
            with contextlib.suppress(IllegalTransition):  # expired once control is back
                client.cancel(job_id)
        stack.stop_worker(stuck)
    assert (seen["queued"], seen["running"], seen["live_workers"], seen["deadlines"]) == (
        WAITING - CONCURRENCY, CONCURRENCY, 1, PAST_DEADLINES)
    assert seen["measured"] is True
    assert abs(seen["jobs_per_worker_s"] - rate) <= 1e-6 * rate
    assert seen["workers_needed"] == expected.workers == gauge[model]
    assert seen["dominant"] == expected.dominant.value == "deadline"
    # By hand: 2 running + 3 jobs due now on workers of 2 slots -> ceil(5 / 2) = 3.
    assert expected.workers == 3


def _count(stack: Stack, ids: list[str], status: JobStatus) -> int:
    with stack.database.session() as session:
        return len(session.exec(select(Job.id).where(col(Job.id).in_(ids),
                                                     Job.status == status)).all())
