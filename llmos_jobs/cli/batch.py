"""`llmos batch ...`: OpenAI-style batch files from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from llmos_jobs.cli.output import console, emit_json, table
from llmos_jobs.cli.state import client

if TYPE_CHECKING:
    from llmos_jobs.services.batch_objects import BatchObject

batch_app = typer.Typer(help="Batches of chat-completion requests (OpenAI's JSONL format).",
                        no_args_is_help=True)
_JSON = typer.Option(False, "--json", help="Print JSON.")
FINAL = ("completed", "failed", "cancelled", "expired")


def _public(batch_id: str) -> BatchObject:
    from llmos_jobs.services import batches

    llmos = client()
    with llmos.session() as session:
        return batches.public(session, batches.get_batch(session, llmos.tenant, batch_id))


def _watch(batch_id: str, timeout: float) -> BatchObject:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("validating", total=None)
        while True:
            state = _public(batch_id)
            counts = state.request_counts
            progress.update(bar, description=state.status, total=counts.total,
                            completed=counts.completed + counts.failed)
            if state.status in FINAL:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {state.status}")
            time.sleep(0.5)


@batch_app.command("submit")
def submit(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSONL batch file."),
    priority: str = typer.Option("batch", "--priority", "-p",
                                 help="0 (highest) to 9, or interactive | default | batch."),
    webhook: str = typer.Option(None, "--webhook",
                                help="POST batch.completed (or .failed, .cancelled) here."),
    wait: bool = typer.Option(False, "--wait", help="Wait for it, with a progress bar."),
    timeout: float = typer.Option(3600.0, "--timeout"),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Run again with the same key (within 24 h), the "
        "command returns the batch the first run started instead of starting another; "
        "the key with another file or options is refused."),
    as_json: bool = _JSON,
) -> None:
    """Upload a file and start a batch; invalid lines go to its error file."""

    llmos = client()
    # One key covers both steps: the upload's and the batch's keys derive from it.
    stored = llmos.upload_file(filename=path.name, content=path.read_bytes(),
                               purpose="batch",
                               idempotency_key=f"{idempotency_key}/file"
                               if idempotency_key else None)
    batch = llmos.create_batch(input_file_id=stored.id, priority=priority, webhook=webhook,
                               idempotency_key=f"{idempotency_key}/batch"
                               if idempotency_key else None)
    state = _watch(batch.id, timeout) if wait else _public(batch.id)
    if as_json:
        emit_json(state)
    else:
        counts = state.request_counts
        console.print(f"batch {batch.id}: {state.status} ({counts.completed} completed, "
                      f"{counts.failed} failed of {counts.total})")
    if wait and state.status != "completed":
        raise typer.Exit(1)


@batch_app.command("status")
def status(batch_id: str, as_json: bool = _JSON) -> None:
    """A batch's status and request counts."""
    state = _public(batch_id)
    if as_json:
        emit_json(state)
        return
    counts = state.request_counts
    console.print(f"{batch_id}: {state.status}, {counts.completed} completed, "
                  f"{counts.failed} failed of {counts.total}")


@batch_app.command("results")
def results(batch_id: str,
            errors: bool = typer.Option(False, "--errors", help="The error file instead."),
            ) -> None:
    """Print the batch's output (or error) file, one JSON line per request."""
    from llmos_jobs.services import batch_files

    llmos = client()
    state = _public(batch_id)
    file_id = state.error_file_id if errors else state.output_file_id
    if file_id is None:
        raise typer.BadParameter(f"batch {batch_id} ({state.status}) has no "
                                 f"{'error' if errors else 'output'} file")
    with llmos.session() as session:
        print(batch_files.get_file(session, llmos.tenant, file_id).content, end="")


@batch_app.command("cancel")
def cancel(batch_id: str, as_json: bool = _JSON) -> None:
    """Cancel: queued requests never run, running ones finish."""

    llmos = client()
    batch = llmos.cancel_batch(batch_id)
    emit_json(_public(batch.id)) if as_json else console.print(f"{batch.id}: {batch.status}")


@batch_app.command("list")
def list_(as_json: bool = _JSON) -> None:
    """This tenant's batches, newest first."""
    from sqlmodel import col, select

    from llmos_jobs.db.batch_tables import Batch
    from llmos_jobs.services import batches

    llmos = client()
    with llmos.session() as session:
        rows = session.exec(select(Batch).where(Batch.tenant == llmos.tenant)
                            .order_by(col(Batch.created_at).desc()).limit(50)).all()
        states = [batches.public(session, b) for b in rows]
    if as_json:
        emit_json({"data": [s.model_dump(mode="json") for s in states]})
        return
    grid = table("id", "status", "completed", "failed", "total")
    for s in states:
        c = s.request_counts
        grid.add_row(s.id, s.status, str(c.completed), str(c.failed), str(c.total))
    console.print(grid)
