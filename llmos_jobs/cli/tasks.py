"""`llmos summarise | translate | answer | classify | extract`: the task presets
(docs/presets.md). Each queues one job like `llmos submit`; --wait shows its result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from llmos_jobs.cli.output import DEADLINE, SLA, report_submitted
from llmos_jobs.cli.state import client
from llmos_jobs.errors import InvalidRequest

if TYPE_CHECKING:
    from llmos_jobs.db.tables import JobPublic

MODEL = typer.Option("demo", "--model", "-m", help="A registered model.")
PRIORITY = typer.Option("default", "--priority", "-p",
                        help="0 (highest) to 9, or interactive | default | batch.")
WEBHOOK = typer.Option(None, "--webhook",
                       help="POST the job's outcome to this http(s) URL (signed).")
TIMEOUT_S = typer.Option(None, "--timeout-s",
                         help="Seconds the job may run once started; then it fails with "
                              "reason 'timeout'.")
TEMPERATURE = typer.Option(0.0, "--temperature", help="0 is greedy.")
WAIT = typer.Option(False, "--wait", help="Wait for the job and show its result.")
TIMEOUT = typer.Option(300.0, "--timeout", help="Seconds to wait with --wait.")
AS_JSON = typer.Option(False, "--json", help="Print the job as JSON (its result under \"result\").")


def _read(source: str, what: str) -> str:
    """The text of FILE, or of stdin for '-'."""
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if not path.is_file():
        raise InvalidRequest(f"{what} {source!r} is not a file (use - for stdin)")
    return path.read_text()


def _run(kind: str, request: dict[str, Any], *, priority: str, webhook: str | None,
         deadline: str | None, sla: str | None, wait: bool, timeout: float, as_json: bool
         ) -> None:
    llmos = client()
    job: JobPublic = llmos.task(kind, request, priority=priority, webhook=webhook,
                                deadline=deadline, sla=sla)
    if wait:
        [job] = llmos.wait([job.id], timeout_s=timeout)
    report_submitted(job, waited=wait, as_json=as_json,
                     queued=f"queued {kind} job {job.id} (priority {job.priority}, "
                            f"queue {job.queue})")


def summarise(
    file: str = typer.Argument(..., help="The text to summarise: a FILE, or - for stdin."),
    length: str = typer.Option("medium", "--length",
                               help="short | medium | long, or a budget in tokens."),
    style: str = typer.Option("paragraph", "--style", help="paragraph | bullets."),
    model: str = MODEL, priority: str = PRIORITY, webhook: str = WEBHOOK,
    temperature: float = TEMPERATURE, timeout_s: float = TIMEOUT_S, wait: bool = WAIT,
    deadline: str = DEADLINE, sla: str = SLA,
    timeout: float = TIMEOUT, as_json: bool = AS_JSON,
) -> None:
    """Summarise a text file (or stdin) with the model."""
    budget: str | int = int(length) if length.isdigit() else length
    _run("summarise", {"model": model, "text": _read(file, "FILE"), "length": budget,
                       "style": style, "temperature": temperature, "timeout_s": timeout_s},
         priority=priority, webhook=webhook, deadline=deadline, sla=sla, wait=wait,
         timeout=timeout, as_json=as_json)


def translate(
    text: str = typer.Argument(..., help="The text to translate (- for stdin)."),
    to: str = typer.Option(..., "--to", help="The language to translate into, e.g. fr."),
    source: str = typer.Option(None, "--from", help="The text's language (optional)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Tokens to generate at most."),
    model: str = MODEL, priority: str = PRIORITY, webhook: str = WEBHOOK,
    temperature: float = TEMPERATURE, timeout_s: float = TIMEOUT_S, wait: bool = WAIT,
    deadline: str = DEADLINE, sla: str = SLA,
    timeout: float = TIMEOUT, as_json: bool = AS_JSON,
) -> None:
    """Translate a text into another language."""
    _run("translate", {"model": model, "text": sys.stdin.read() if text == "-" else text,
                       "target_language": to, "source_language": source,
                       "max_tokens": max_tokens, "temperature": temperature,
                       "timeout_s": timeout_s},
         priority=priority, webhook=webhook, deadline=deadline, sla=sla, wait=wait,
         timeout=timeout, as_json=as_json)


def answer(
    question: str = typer.Argument(..., help="The question."),
    context: list[str] = typer.Option(
        ..., "--context", help="A FILE of passages, separated by blank lines (repeatable; "
                               "- for stdin). The answer cites them as [1], [2]..."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens to generate at most."),
    model: str = MODEL, priority: str = PRIORITY, webhook: str = WEBHOOK,
    temperature: float = TEMPERATURE, timeout_s: float = TIMEOUT_S, wait: bool = WAIT,
    deadline: str = DEADLINE, sla: str = SLA,
    timeout: float = TIMEOUT, as_json: bool = AS_JSON,
) -> None:
    """Answer a question from given passages; the result lists the passages cited."""
    passages = [p.strip() for source in context
                for p in _read(source, "--context").split("\n\n") if p.strip()]
    _run("answer", {"model": model, "question": question, "context": passages,
                    "max_tokens": max_tokens, "temperature": temperature,
                    "timeout_s": timeout_s},
         priority=priority, webhook=webhook, deadline=deadline, sla=sla, wait=wait,
         timeout=timeout, as_json=as_json)


def classify(
    text: str = typer.Argument(..., help="The text to classify (- for stdin)."),
    label: list[str] = typer.Option(..., "--label", "-l",
                                    help="A label to choose from (repeat: two at least)."),
    max_tokens: int = typer.Option(16, "--max-tokens", help="Tokens to generate at most."),
    model: str = MODEL, priority: str = PRIORITY, webhook: str = WEBHOOK,
    temperature: float = TEMPERATURE, timeout_s: float = TIMEOUT_S, wait: bool = WAIT,
    deadline: str = DEADLINE, sla: str = SLA,
    timeout: float = TIMEOUT, as_json: bool = AS_JSON,
) -> None:
    """Classify a text into one of the given labels (read from the model's output:
    the label it writes, else the first it names, else the most similar)."""
    _run("classify", {"model": model, "text": sys.stdin.read() if text == "-" else text,
                      "labels": label, "max_tokens": max_tokens, "temperature": temperature,
                      "timeout_s": timeout_s},
         priority=priority, webhook=webhook, deadline=deadline, sla=sla, wait=wait,
         timeout=timeout, as_json=as_json)


def extract(
    text: str = typer.Argument(..., help="The text to read the fields from (- for stdin)."),
    schema: str = typer.Option(..., "--schema",
                               help="A FILE holding the JSON Schema of the fields."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Tokens to generate at most."),
    model: str = MODEL, priority: str = PRIORITY, webhook: str = WEBHOOK,
    temperature: float = TEMPERATURE, timeout_s: float = TIMEOUT_S, wait: bool = WAIT,
    deadline: str = DEADLINE, sla: str = SLA,
    timeout: float = TIMEOUT, as_json: bool = AS_JSON,
) -> None:
    """Extract fields from a text as JSON valid against a JSON Schema (an invalid
    output is generated once more, then the job fails with the validation error)."""
    _run("extract", {"model": model, "text": sys.stdin.read() if text == "-" else text,
                     "json_schema": json_schema_file(schema, "--schema"),
                     "max_tokens": max_tokens, "temperature": temperature,
                     "timeout_s": timeout_s},
         priority=priority, webhook=webhook, deadline=deadline, sla=sla, wait=wait,
         timeout=timeout, as_json=as_json)


def json_schema_file(source: str, what: str) -> dict[str, Any]:
    """The JSON object in FILE, or InvalidRequest saying why not."""
    try:
        data = json.loads(_read(source, what))
    except ValueError as exc:
        raise InvalidRequest(f"{what} {source!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} {source!r} must hold a JSON object (a JSON Schema)")
    return data
