"""Printing a job's text as the worker decodes it (`--stream`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from llmos_jobs.cli.output import err_console

if TYPE_CHECKING:
    from llmos_jobs.client import LlmosClient
    from llmos_jobs.db.tables import JobPublic


def print_stream(llmos: LlmosClient, job_id: str, *, as_json: bool) -> JobPublic:
    """Write the job's text to stdout piece by piece as it is decoded, then a newline
    (``as_json``: each live event as one JSON line instead); the job once it ended.
    Exit 1, with the reason on stderr, when it did not succeed."""
    from schemas.common import JobStatus

    for event in llmos.events(job_id):
        if as_json:
            sys.stdout.write(event.model_dump_json(exclude_none=True) + "\n")
        elif event.type == "delta" and event.text:
            sys.stdout.write(event.text)
        sys.stdout.flush()
    if not as_json:
        sys.stdout.write("\n")
    job = llmos.job(job_id)
    if job.status != JobStatus.succeeded:
        err_console.print(f"job {job.id} {job.status.value}: {job.error_type}: "
                          f"{job.error_message}", markup=False)
        raise typer.Exit(1)
    return job
