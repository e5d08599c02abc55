"""`llmos submit` and `llmos job ...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from llmos_jobs.cli.output import (
    DEADLINE,
    SLA,
    console,
    emit_json,
    err_console,
    job_table,
    report_submitted,
    show_job,
)
from llmos_jobs.cli.state import client
from llmos_jobs.cli.streaming import print_stream
from llmos_jobs.cli.tasks import json_schema_file
from llmos_jobs.errors import InvalidRequest
from schemas.common import JobStatus

job_app = typer.Typer(help="Inspect and cancel jobs.", no_args_is_help=True)


def _messages(value: str) -> list[dict[str, Any]]:
    """Chat messages from JSON text, or from a file named as @PATH."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"--messages is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InvalidRequest("--messages must be a JSON list of {role, content} objects")
    return data


def submit(
    prompt: str = typer.Argument(None, help="The prompt (or use --messages)."),
    messages: str = typer.Option(None, "--messages",
                                 help='Chat messages as JSON, or @FILE: [{"role":"user",...}]'),
    model: str = typer.Option("demo", "--model", "-m", help="A registered model."),
    priority: str = typer.Option("default", "--priority", "-p",
                                 help="0 (highest) to 9, or interactive | default | batch."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens to generate at most."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy."),
    stop: list[str] = typer.Option([], "--stop", help="A stop string (repeatable)."),
    webhook: str = typer.Option(None, "--webhook",
                                help="POST the job's outcome to this http(s) URL (signed)."),
    timeout_s: float = typer.Option(
        None, "--timeout-s", help="Seconds the job may run once started; then it fails "
                                  "with reason 'timeout' (capped by LLMOS_JOB_TIME_LIMIT_S)."),
    schema: str = typer.Option(
        None, "--schema", help="A FILE holding a JSON Schema: the output must be JSON valid "
                               "against it (tried twice, then the job fails)."),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Run again with the same key (within 24 h), the "
        "command returns the job the first run queued instead of queueing another; the "
        "key with other arguments is refused."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to finish."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait with --wait."),
    stream: bool = typer.Option(
        False, "--stream", help="Print the text to stdout as the worker decodes it (the "
                                "job id goes to stderr); with --json, each live event "
                                "(status, delta) as one JSON line. Exit 1 unless it succeeds."),
    deadline: str = DEADLINE,
    sla: str = SLA,
    as_json: bool = typer.Option(False, "--json", help="Print the job as JSON."),
) -> None:
    """Submit a language job (generate from a prompt or chat messages)."""
    llmos = client()
    response_format = None
    if schema is not None:
        response_format = {"type": "json_schema",
                           "json_schema": {"schema": json_schema_file(schema, "--schema")}}
    job = llmos.generate(
        model=model, prompt=prompt, messages=_messages(messages) if messages else None,
        max_tokens=max_tokens, temperature=temperature, stop=stop, priority=priority,
        webhook=webhook, timeout_s=timeout_s, response_format=response_format,
        idempotency_key=idempotency_key, deadline=deadline, sla=sla,
    )
    if stream:
        err_console.print(f"queued {job.id} (priority {job.priority})", markup=False)
        print_stream(llmos, job.id, as_json=as_json)
        return
    if wait:
        [job] = llmos.wait([job.id], timeout_s=timeout)
    report_submitted(job, waited=wait, as_json=as_json,
                     queued=f"queued {job.id} (priority {job.priority}, queue {job.queue})")


@job_app.command("show")
def job_show(job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one job: status, timings, usage, output or error."""
    job = client().job(job_id)
    emit_json(job) if as_json else show_job(job)


@job_app.command("list")
def job_list(
    status: JobStatus = typer.Option(None, "--status", help="Only jobs in this status."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the newest jobs of this tenant."""
    jobs = client().jobs(status=status, limit=limit)
    emit_json(jobs) if as_json else console.print(job_table(jobs))


@job_app.command("cancel")
def job_cancel(job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Cancel a queued or running job. A queued job then never runs."""
    job = client().cancel(job_id)
    emit_json(job) if as_json else console.print(f"cancelled {job.id}")
