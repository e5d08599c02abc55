"""Rendering for the CLI: Rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from llmos_jobs.db.models import JobPublic

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


def show_job(job: JobPublic) -> None:
    console.print(job_table([job]))
    console.print(f"id: {job.id}")
    if job.result:
        text = job.result.get("text", job.result.get("reply"))
        if text is not None:
            console.print("output:", repr(text), markup=False)
    if job.error_message:
        console.print(f"error: {job.error_type}: {job.error_message}", markup=False)
