"""Per-job deadlines: a job still running when its time limit passes is stopped by the
engine and fails with reason "timeout", under the thread pool and prefork alike."""

from __future__ import annotations

import uuid

import pytest

from schemas.common import JobStatus
from tests.support.stack import Stack

# A model slower than any deadline here: only the deadline (or a bug) ends its jobs.
FOREVER = {"LLMOS_NOOP_DELAY_MS": "600000"}


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_job_past_its_timeout_fails_with_reason_timeout(stack: Stack, pool: str) -> None:
    client = stack.client()
    model = f"forever-{uuid.uuid4().hex[:6]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    worker = stack.start_worker(f"deadline-{pool}-{stack.name}-{uuid.uuid4().hex[:4]}@test",
                                "--model", model, "--pool", pool, "--concurrency", "2",
                                env={**FOREVER, "LLMOS_JOB_TIME_LIMIT_S": "3"})
    try:
        own = client.generate(model=model, prompt="too slow", max_tokens=2, timeout_s=0.5)
        capped = client.generate(model=model, prompt="too slow as well", max_tokens=2)
        done = {j.id: j for j in client.wait([own.id, capped.id])}
    finally:
        stack.stop_worker(worker)
    for job_id, limit in ((own.id, "0.5 s"), (capped.id, "3 s")):
        job = done[job_id]
        assert job.status == JobStatus.failed, job
        assert job.error_type == "timeout" and limit in (job.error_message or "")
        assert job.started_at is not None and job.finished_at is not None


def test_a_timeout_is_validated(stack: Stack) -> None:
    from llmos_jobs.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="timeout_s"):
        stack.client().generate(model="echo", prompt="x", timeout_s=0)
