"""`llmos mindspace ...`: persistent, isolated LLM contexts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from llmos_jobs.cli.output import DEADLINE, SLA, console, emit_json, table
from llmos_jobs.cli.state import client
from llmos_jobs.cli.streaming import print_stream

if TYPE_CHECKING:
    from rich.table import Table

    from llmos_jobs.db.tables import MindspacePublic
    from llmos_jobs.services.mindspace_limits import MindspaceUsage

mindspace_app = typer.Typer(help="Persistent, isolated LLM contexts.", no_args_is_help=True)
knowledge_app = typer.Typer(help="A mindspace's knowledge base.", no_args_is_help=True)
mindspace_app.add_typer(knowledge_app, name="kb")
_JSON = typer.Option(False, "--json", help="Print JSON.")


_PER_TURN = typer.Option(
    None, "--max-tokens-per-turn", min=0,
    help="Limit: new tokens a turn may ask for (0: no limit); at most the tenant's "
         "tokens per minute.")
_KNOWLEDGE_BYTES = typer.Option(
    None, "--knowledge-max-bytes", min=0,
    help="Limit: UTF-8 bytes of documents the knowledge base holds (0: no limit).")


def _settings(context_budget: int | None, max_tokens: int | None,
              temperature: float | None, top_k: int | None,
              per_turn: int | None = None, knowledge_bytes: int | None = None
              ) -> dict[str, float]:
    given = {"context_budget": context_budget, "max_tokens": max_tokens,
             "temperature": temperature, "knowledge_top_k": top_k,
             "max_tokens_per_turn": per_turn, "knowledge_max_bytes": knowledge_bytes}
    return {k: v for k, v in given.items() if v is not None}


def _print(mindspace: MindspacePublic, as_json: bool, verb: str) -> None:
    emit_json(mindspace) if as_json else console.print(f"{verb} mindspace {mindspace.id}")


@mindspace_app.command("create")
def create(
    model: str = typer.Option("demo", "--model", "-m"),
    persona: str = typer.Option(None, "--persona", help="System prompt of every turn."),
    name: str = typer.Option(None, "--name"),
    context_budget: int = typer.Option(None, "--context-budget",
                                       help="History tokens kept; older turns are compacted."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Default reply length."),
    temperature: float = typer.Option(None, "--temperature"),
    max_tokens_per_turn: int = _PER_TURN,
    knowledge_max_bytes: int = _KNOWLEDGE_BYTES,
    as_json: bool = _JSON,
) -> None:
    """Create a mindspace on a model, with its own limits if given (see `llmos
    mindspace show` for what it uses against them)."""
    mindspace = client().create_mindspace(
        model=model, persona=persona, name=name,
        **_settings(context_budget, max_tokens, temperature, None, max_tokens_per_turn,
                    knowledge_max_bytes))
    _print(mindspace, as_json, "created")


@mindspace_app.command("configure")
def configure(
    mindspace_id: str,
    persona: str = typer.Option(None, "--persona", help="New persona ('' removes it)."),
    context_budget: int = typer.Option(None, "--context-budget"),
    max_tokens: int = typer.Option(None, "--max-tokens"),
    temperature: float = typer.Option(None, "--temperature"),
    top_k: int = typer.Option(None, "--knowledge-top-k", help="Knowledge chunks per turn."),
    max_tokens_per_turn: int = _PER_TURN,
    knowledge_max_bytes: int = _KNOWLEDGE_BYTES,
    as_json: bool = _JSON,
) -> None:
    """Change a mindspace's persona, settings or limits; its history stays."""
    mindspace = client().configure_mindspace(
        mindspace_id, persona=persona,
        **_settings(context_budget, max_tokens, temperature, top_k, max_tokens_per_turn,
                    knowledge_max_bytes))
    _print(mindspace, as_json, "configured")


@mindspace_app.command("chat")
def chat(
    mindspace_id: str,
    message: str,
    max_tokens: int = typer.Option(None, "--max-tokens"),
    timeout_s: float = typer.Option(
        None, "--timeout-s", help="Seconds the turn may run once started; then it fails "
                                  "with reason 'timeout'."),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Run again with the same key (within 24 h), the "
        "command returns the job the first run queued instead of queueing another; the "
        "key with other arguments is refused."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the reply."),
    deadline: str = DEADLINE,
    sla: str = SLA,
    stream: bool = typer.Option(
        False, "--stream", help="Print the reply as the worker decodes it; with --json, "
                                "each live event (status, delta) as one JSON line."),
    as_json: bool = _JSON,
) -> None:
    """Send one turn and print the reply (the history is kept in the mindspace)."""
    from schemas.common import JobStatus

    llmos = client()
    job = llmos.chat(mindspace_id, message, max_tokens=max_tokens, timeout_s=timeout_s,
                     idempotency_key=idempotency_key, deadline=deadline, sla=sla)
    if stream:
        print_stream(llmos, job.id, as_json=as_json)
        return
    [job] = llmos.wait([job.id], timeout_s=timeout)
    if as_json:
        emit_json(job)
    elif job.status == JobStatus.succeeded and job.result is not None:
        console.print(job.turn_result().reply, markup=False)
    if job.status != JobStatus.succeeded:
        console.print(f"turn {job.status.value}: {job.error_type}: {job.error_message}",
                      markup=False)
        raise typer.Exit(1)


@mindspace_app.command("show")
def show(mindspace_id: str, as_json: bool = _JSON) -> None:
    """Show a mindspace with its messages, and what it uses against its limits:
    history messages and tokens (against context_budget), knowledge bytes and chunks
    (against knowledge_max_bytes), turns, and tokens in and out so far (a turn's
    against max_tokens_per_turn). With --json: the mindspace, and its usage under
    "usage"."""
    llmos = client()
    mindspace = llmos.mindspace(mindspace_id)
    used = llmos.mindspace_usage(mindspace_id)
    if as_json:
        emit_json({**mindspace.model_dump(mode="json"), "usage": used.model_dump(mode="json")})
        return
    console.print(f"mindspace {mindspace.id} on {mindspace.model}"
                  + (f" ({mindspace.name})" if mindspace.name else "")
                  + (f", placed on {mindspace.worker}" if mindspace.worker else ""))
    if mindspace.persona:
        console.print(f"persona: {mindspace.persona}", markup=False)
    for m in mindspace.messages:
        console.print(f"[bold]{m.role}[/bold]{' (compacted)' if m.compacted else ''}: ", end="")
        console.print(m.content, markup=False)
    console.print(_usage(used))


def _usage(used: MindspaceUsage) -> Table:
    def limit(value: int | None) -> str:
        return "no limit" if value is None else str(value)

    grid = table("uses", "so far", "limit", title="usage")
    tokens = "-" if used.history_tokens is None else str(used.history_tokens)
    grid.add_row("history", f"{used.history_messages} messages, {tokens} tokens"
                 + (f" ({used.compacted_messages} compacted)" if used.compacted_messages
                    else ""), f"{used.context_budget} tokens")
    grid.add_row("knowledge", f"{used.knowledge_bytes} bytes, {used.knowledge_chunks} "
                 f"chunks, {used.knowledge_documents} documents",
                 limit(used.knowledge_max_bytes) + " bytes"
                 * (used.knowledge_max_bytes is not None))
    grid.add_row("turns", f"{used.turns}, {used.prompt_tokens} tokens in, "
                 f"{used.completion_tokens} out", limit(used.max_tokens_per_turn)
                 + " new tokens a turn" * (used.max_tokens_per_turn is not None))
    return grid


@mindspace_app.command("list")
def list_(as_json: bool = _JSON) -> None:
    """This tenant's mindspaces."""
    spaces = client().mindspaces()
    if as_json:
        emit_json(spaces)
        return
    grid = table("id", "name", "model", "messages", "documents", "worker", "updated")
    for m in spaces:
        grid.add_row(m.id, m.name or "-", m.model, str(len(m.messages)), str(len(m.documents)),
                      m.worker or "-", m.updated_at.isoformat(timespec="seconds"))
    console.print(grid)


@mindspace_app.command("snapshot")
def snapshot(mindspace_id: str, name: str = typer.Option(None, "--name"),
             as_json: bool = _JSON) -> None:
    """Save the mindspace's whole state (persona, settings, history, knowledge)."""
    snap = client().snapshot(mindspace_id, name=name)
    emit_json(snap) if as_json else console.print(f"snapshot {snap.id} ({snap.messages} messages)")


@mindspace_app.command("snapshots")
def snapshots(mindspace_id: str, as_json: bool = _JSON) -> None:
    """A mindspace's snapshots."""
    snaps = client().snapshots(mindspace_id)
    if as_json:
        emit_json(snaps)
        return
    for s in snaps:
        console.print(f"{s.id}  {s.name or '-'}  {s.messages} messages  {s.created_at}")


@mindspace_app.command("restore")
def restore(snapshot_id: str, as_json: bool = _JSON) -> None:
    """A new mindspace from a snapshot (the original is untouched)."""
    _print(client().restore(snapshot_id), as_json, "restored into")


@mindspace_app.command("fork")
def fork(mindspace_id: str, as_json: bool = _JSON) -> None:
    """A new mindspace sharing the history up to now."""
    _print(client().fork(mindspace_id), as_json, "forked into")


@mindspace_app.command("destroy")
def destroy(mindspace_id: str) -> None:
    """Destroy a mindspace: history, knowledge, snapshots and its turns' text go."""
    client().destroy_mindspace(mindspace_id)
    console.print(f"destroyed {mindspace_id}")


@knowledge_app.command("add")
def knowledge_add(mindspace_id: str,
                  path: Path = typer.Argument(..., exists=True, dir_okay=False,
                                              help="A text or Markdown file."),
                  title: str = typer.Option(None, "--title", help="Default: the file name."),
                  as_json: bool = _JSON) -> None:
    """Add a document: chunked, embedded locally, stored encrypted."""
    doc = client().add_knowledge(mindspace_id, path.read_text(), title=title or path.name)
    emit_json(doc.__dict__) if as_json else console.print(
        f"added {doc.title} as {doc.id} ({doc.chunks} chunks)")


@knowledge_app.command("list")
def knowledge_list(mindspace_id: str, as_json: bool = _JSON) -> None:
    """Documents of a mindspace's knowledge base."""
    docs = client().knowledge(mindspace_id)
    if as_json:
        emit_json({"documents": [d.__dict__ for d in docs]})
        return
    for d in docs:
        console.print(f"{d.id}  {d.title}  {d.chunks} chunks", markup=False)


@knowledge_app.command("remove")
def knowledge_remove(mindspace_id: str, document_id: str) -> None:
    """Remove a document from the knowledge base."""
    n = client().remove_knowledge(mindspace_id, document_id)
    console.print(f"removed {document_id} ({n} chunks)")
