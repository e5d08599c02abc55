"""`llmos mindspace ...`: persistent, isolated LLM contexts."""

from __future__ import annotations

import typer

from llmos_jobs.cli.output import console, emit_json
from llmos_jobs.cli.state import client
from schemas.common import JobStatus

mindspace_app = typer.Typer(help="Persistent, isolated LLM contexts.", no_args_is_help=True)


@mindspace_app.command("create")
def create(
    model: str = typer.Option("demo", "--model", "-m"),
    persona: str = typer.Option(None, "--persona", help="System prompt of every turn."),
    name: str = typer.Option(None, "--name"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a mindspace on a model."""
    mindspace = client().create_mindspace(model=model, persona=persona, name=name)
    emit_json(mindspace) if as_json else console.print(f"created mindspace {mindspace.id}")


@mindspace_app.command("chat")
def chat(
    mindspace_id: str,
    message: str,
    max_tokens: int = typer.Option(64, "--max-tokens"),
    timeout: float = typer.Option(300.0, "--timeout"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send one turn and print the reply (the history is kept in the mindspace)."""
    llmos = client()
    job = llmos.chat(mindspace_id, message, max_tokens=max_tokens)
    [job] = llmos.wait([job.id], timeout_s=timeout)
    if as_json:
        emit_json(job)
    elif job.status == JobStatus.succeeded and job.result is not None:
        console.print(job.result["reply"], markup=False)
    if job.status != JobStatus.succeeded:
        console.print(f"turn {job.status.value}: {job.error_type}: {job.error_message}",
                      markup=False)
        raise typer.Exit(1)


@mindspace_app.command("show")
def show(mindspace_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a mindspace with its messages."""
    mindspace = client().mindspace(mindspace_id)
    if as_json:
        emit_json(mindspace)
        return
    console.print(f"mindspace {mindspace.id} on {mindspace.model}"
                  + (f" ({mindspace.name})" if mindspace.name else ""))
    if mindspace.persona:
        console.print(f"persona: {mindspace.persona}", markup=False)
    for m in mindspace.messages:
        console.print(f"[bold]{m.role}[/bold]: ", end="")
        console.print(m.content, markup=False)


@mindspace_app.command("destroy")
def destroy(mindspace_id: str) -> None:
    """Destroy a mindspace and its history."""
    client().destroy_mindspace(mindspace_id)
    console.print(f"destroyed {mindspace_id}")
