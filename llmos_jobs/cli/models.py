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
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Build a small Llama model locally (nothing is downloaded)."""
    from llmos_jobs.demo_model import create_demo_model

    with console.status(f"building the {size} demo model"):
        create_demo_model(path, size=size, seed=seed)
    console.print(f"wrote {path}; register it with `llmos model register demo {path}`")


@model_app.command("register")
def register(
    name: str = typer.Argument(..., help="Name jobs will use."),
    path: Path = typer.Argument(..., help="Local model directory (Hugging Face layout)."),
    engine: EngineKind = typer.Option(EngineKind.transformers, "--engine"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Register a model for every tenant (an administrator's act)."""
    model = client().register_model(name, path, engine.value)
    if as_json:
        emit_json(model)
    else:
        console.print(f"registered {model.name} → {model.path} ({model.engine}, "
                      f"context {model.context_length})")


def _op(op: ModelOp, name: str, worker: str | None, wait: bool, as_json: bool) -> None:
    llmos = client()
    job = llmos.model_op(name, op, worker=worker)
    if wait:
        [job] = llmos.wait([job.id])
    report_submitted(job, waited=wait, as_json=as_json,
                     queued=f"queued {op.value} of {name}: job {job.id}")


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
    """Load a model and run one short generation through it."""
    _op(ModelOp.warmup, name, worker, wait, as_json)


@model_app.command("list")
def list_models(as_json: bool = _JSON) -> None:
    """Registered models and the live workers each is loaded on."""
    models = client().models()
    if as_json:
        emit_json(models)
        return
    grid = table("name", "engine", "context", "path", "loaded on")
    for m in models:
        grid.add_row(m.name, m.engine, str(m.context_length), m.path,
                     ", ".join(m.loaded_on) or "-")
    console.print(grid)
