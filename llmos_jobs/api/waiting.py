"""Waiting for a job inside a request without holding a thread between polls: a
waiting chat completion costs a coroutine, not one of the server's worker threads."""

from __future__ import annotations

import time

import anyio

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.tables import JobPublic

_FIRST_POLL_S = 0.02  # the no-op engine answers in milliseconds; a model takes longer
_MAX_POLL_S = 0.25


async def wait_final(client: LlmosClient, job_id: str, *, timeout_s: float) -> JobPublic:
    """The job once final; TimeoutError when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    pause = _FIRST_POLL_S
    while True:
        job = await anyio.to_thread.run_sync(client.job, job_id)
        if job.status.is_final:
            return job
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s:g} s")
        await anyio.sleep(min(pause, left))
        pause = min(pause * 1.5, _MAX_POLL_S)
