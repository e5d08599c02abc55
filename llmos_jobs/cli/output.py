"""Rendering for the CLI: Rich tables for people, ``--json`` for scripts.

Imported by every command, `--help` included: nothing here may import the database
layer (the table models cost more CPU to import than most commands spend working)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pydantic import BaseModel

    from llmos_jobs.db.tables import JobPublic

# A pipe has no width; Rich would assume 80 columns and crush wide tables. Give them
# room for one row per line (what grep and people reading a log want); past that,
# and on a narrow terminal, cells fold (see `table`). COLUMNS still decides.
PIPE_WIDTH = 200
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS")
                  else PIPE_WIDTH)
# A message or warning is one line, whatever the terminal's width: scripts grep them.
err_console = Console(stderr=True, soft_wrap=True)

# When a job must have started (docs/deadlines.md); every submitting command takes them.
DEADLINE = typer.Option(
    None, "--deadline", help="The latest moment the job may start, ISO 8601 with a zone "
                             "(2026-11-30T05:00:00Z); not started by then, it ends 'expired' "
                             "without running.")
SLA = typer.Option(
    None, "--sla", help="An SLA class instead of --deadline: interactive | standard | batch "
                        "(seconds from now set by LLMOS_SLA_<CLASS>_S).")


def emit_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, dict):
        data: Any = value
    elif isinstance(value, Sequence):
        data = [v.model_dump(mode="json") for v in value]
    else:
        data = value.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def table(*columns: str, title: str | None = None,
          unbroken: Collection[str] = ("id", "job", "name")) -> Table:
    """A table whose cells fold rather than end in "…" when the width runs out; the
    ``unbroken`` columns (ids) give way last, so they stay whole and can be pasted."""
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column, overflow="fold", no_wrap=column in unbroken)
    return grid


def job_table(jobs: Sequence[JobPublic], title: str | None = None) -> Table:
    grid = table("job", "kind", "model", "priority", "status", "tokens (p/c/cached)",
                 "latency", "worker", title=title)
    for job in jobs:
        usage = job.usage
        tokens = (f"{usage.prompt_tokens}/{usage.completion_tokens}/{usage.cached_tokens}"
                  if usage else "-")
        status = job.status.value
        if job.error_type:
            status += f" ({job.error_type})"
        elif job.graph is not None:  # a job graph: its children that have ended
            status += f" ({job.graph.done}/{job.graph.total})"
        grid.add_row(
            job.id, job.kind.value, job.model, str(job.priority), status, tokens,
            f"{job.latency_s:.2f}s" if job.latency_s is not None else "-", job.worker or "-",
        )
    return grid


def report_submitted(job: JobPublic, *, waited: bool, as_json: bool, queued: str) -> None:
    """Print a submitted job (or its outcome, after waiting); exit 1 when it waited for
    a job that did not succeed."""
    from schemas.common import JobStatus

    if as_json:
        emit_json(job)
    elif waited:
        show_job(job)
    else:
        console.print(queued, markup=False)
    if waited and job.status != JobStatus.succeeded:
        raise typer.Exit(1)


def _answer(job: JobPublic) -> str | None:
    """What a job with a result answered, in words: a generation's text, a turn's reply,
    a preset's result; None for a model operation."""
    from schemas.common import JobKind

    answers = {
        JobKind.generate: lambda: job.generate_result().text,
        JobKind.mindspace_turn: lambda: job.turn_result().reply,
        JobKind.summarise: lambda: job.summarise_result().summary,
        JobKind.translate: lambda: job.translate_result().translation,
        JobKind.answer: lambda: (f"{job.answer_result().answer} (cites passages "
                                 f"{job.answer_result().citations})"),
        JobKind.classify: lambda: (f"{job.classify_result().label} "
                                   f"({job.classify_result().match})"),
        JobKind.extract: lambda: json.dumps(job.extract_result().data),
    }
    answer = answers.get(job.kind)
    return answer() if answer is not None else None


def show_job(job: JobPublic) -> None:
    console.print(job_table([job]))
    console.print(f"id: {job.id}")
    if job.model_version is not None:
        console.print(f"model: {job.model}@{job.model_version}", markup=False)
    if job.content_expired_at is not None:
        console.print(f"content expired: its prompt and output were removed at "
                      f"{job.content_expired_at.isoformat()} (retention)", markup=False)
    if job.graph is not None:
        graph = job.graph
        console.print(f"graph: level {graph.level} ({graph.stage.value}), {graph.done} of "
                      f"{graph.total} child jobs ended, {graph.succeeded} succeeded",
                      markup=False)
    if job.result:
        text = _answer(job)
        if text is not None:
            console.print("output:", repr(text), markup=False)
    if job.deadline is not None:
        console.print(f"deadline: {job.deadline.isoformat()} (the latest moment it may start)",
                      markup=False)
    if job.error_message:
        console.print(f"error: {job.error_type}: {job.error_message}", markup=False)
