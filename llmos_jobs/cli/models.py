"""`llmos model ...`: build, register, load, unload, warm up, list."""

from __future__ import annotations

from pathlib import Path

import typer

from llmos_jobs.cli.output import console, emit_json, report_submitted, table
from llmos_jobs.cli.state import client
from schemas.model import EngineKind, ModelOp

model_app = typer.Typer(help="Register models and place them on workers.", no_args_is_help=True)


@model_app.command("create-demo")
def create_demo(
    path: Path = typer.Argument(..., help="Directory to write the model into."),
    size: str = typer.Option("tiny", "--size", help="tiny (~0.1M parameters) or base (~100M)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights; models of one size "
                             "share the tokenizer, like checkpoints of one model."),
) -> None:
    """Build a small Llama model locally (nothing is downloaded)."""
    from llmos_jobs.demo_model import create_demo_model

    with console.status(f"building the {size} demo model"):
        create_demo_model(path, size=size, seed=seed)
    console.print(f"wrote {path}; register it with `llmos model register demo {path}`")


@model_app.command("register")
def register(
    name: str = typer.Argument(..., help="Name jobs use (NAME@N pins one of its versions)."),
    path: Path = typer.Argument(..., help="Local model directory (Hugging Face layout)."),
    engine: EngineKind = typer.Option(EngineKind.transformers, "--engine"),
    keep_alive: str | None = typer.Option(
        None, "--keep-alive", help="How long a worker keeps it loaded while idle: 5m, 30s, "
        "1h; 0 unloads after each job; -1 keeps it forever (default: LLMOS_MODEL_KEEP_ALIVE)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Register a model for every tenant (an administrator's act). A new name becomes
    version 1; new content under a known name becomes its next version, which NAME then
    serves; the current version's content again changes nothing (but --keep-alive);
    an older version's content is refused (pin it with NAME@N)."""
    model = client().register_model(name, path, engine.value, keep_alive=keep_alive)
    if as_json:
        emit_json(model)
    elif model.registered == "unchanged":
        console.print(f"{model.name} is already version {model.current_version} with this "
                      f"content ({model.path}); nothing registered", markup=False)
    else:
        console.print(f"registered {model.name}@{model.current_version} → {model.path} "
                      f"({model.engine}, context {model.context_length})", markup=False)


@model_app.command("versions")
def versions(
    name: str = typer.Argument(..., help="A registered model name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The versions of a model: number, path, content hash, when registered, and which
    one NAME serves (the current one, marked *)."""
    rows = client().model_versions(name)
    if as_json:
        emit_json(rows)
        return
    grid = table("", "version", "path", "hash", "size MB", "created")
    for v in rows:
        grid.add_row("*" if v.current else "", str(v.version), v.path, v.content_hash[:12],
                     f"{v.size_bytes / 2**20:.1f}", v.created_at.isoformat(timespec="seconds"))
    console.print(grid)


def _op(op: ModelOp, name: str, worker: str | None, wait: bool, as_json: bool) -> None:
    llmos = client()
    job = llmos.model_op(name, op, worker=worker)
    if wait:
        [job] = llmos.wait([job.id])
    report_submitted(job, waited=wait, as_json=as_json,
                     queued=f"queued {op.value} of {name}: job {job.id}")
    if wait and not as_json and job.result is not None:
        done = job.model_op_result()
        if done.warmup_seconds is not None:
            console.print(f"warmed up {done.model}@{done.model_version} on {done.worker}: "
                          f"{done.warmup_tokens} tokens in {done.warmup_seconds:.3f} s "
                          f"({done.seconds:.3f} s with the load)", markup=False)


_WORKER = typer.Option(None, "--worker", help="Aim at one worker (its direct queue).")
_WAIT = typer.Option(True, "--wait/--no-wait")
_JSON = typer.Option(False, "--json")


@model_app.command("load")
def load(name: str, worker: str = _WORKER, wait: bool = _WAIT, as_json: bool = _JSON) -> None:
    """Load a model on a worker serving it (or on the one named)."""
    _op(ModelOp.load, name, worker, wait, as_json)


@model_app.command("unload")
def unload(name: str, worker: str = _WORKER, wait: bool = _WAIT, as_json: bool = _JSON) -> None:
    """Unload a model from a worker, freeing its memory."""
    _op(ModelOp.unload, name, worker, wait, as_json)


@model_app.command("warmup")
def warmup(name: str, worker: str = _WORKER, wait: bool = _WAIT, as_json: bool = _JSON) -> None:
    """Load a model (NAME or NAME@N) and run a real short generation through it; reports
    how long it took, or why it failed."""
    _op(ModelOp.warmup, name, worker, wait, as_json)


@model_app.command("list")
def list_models(as_json: bool = _JSON) -> None:
    """Registered models and the live workers each is loaded on."""
    models = client().models()
    if as_json:
        emit_json(models)
        return
    grid = table("name", "version", "engine", "context", "keep alive", "path", "loaded on")
    for m in models:
        grid.add_row(m.name, str(m.current_version), m.engine, str(m.context_length),
                     m.keep_alive or "-", m.path, ", ".join(m.loaded_on) or "-")
    console.print(grid)
