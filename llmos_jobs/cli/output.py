"""Rendering for the CLI: Rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from llmos_jobs.db.models import JobPublic
from schemas.common import JobStatus

console = Console()
err_console = Console(stderr=True)


def emit_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [v.model_dump(mode="json") for v in value]
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def short(job_id: str) -> str:
    return job_id[:8]


def job_table(jobs: Sequence[JobPublic], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in ("job", "kind", "model", "priority", "status", "tokens (p/c/cached)",
                   "latency", "worker"):
        table.add_column(column)
    for job in jobs:
        usage = job.usage
        tokens = (f"{usage.prompt_tokens}/{usage.completion_tokens}/{usage.cached_tokens}"
                  if usage else "-")
        status = job.status.value
        if job.error_type:
            status += f" ({job.error_type})"
        table.add_row(
            short(job.id), job.kind.value, job.model, str(job.priority), status, tokens,
            f"{job.latency_s:.2f}s" if job.latency_s is not None else "-", job.worker or "-",
        )
    return table


def report_submitted(job: JobPublic, *, waited: bool, as_json: bool, queued: str) -> None:
    """Print a submitted job (or its outcome, after waiting); exit 1 when it waited for
    a job that did not succeed."""
    if as_json:
        emit_json(job)
    elif waited:
        show_job(job)
    else:
        console.print(queued, markup=False)
    if waited and job.status != JobStatus.succeeded:
        raise typer.Exit(1)


def show_job(job: JobPublic) -> None:
    console.print(job_table([job]))
    console.print(f"id: {job.id}")
    if job.result:
        text = job.result.get("text", job.result.get("reply"))
        if text is not None:
            console.print("output:", repr(text), markup=False)
    if job.error_message:
        console.print(f"error: {job.error_type}: {job.error_message}", markup=False)
