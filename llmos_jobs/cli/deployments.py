"""`llmos model deploy|update|rollback|status`: deployments and their updates (hung
under `llmos model` by llmos_jobs.cli.main)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import Progress

from llmos_jobs.cli.output import console, emit_json, err_console
from llmos_jobs.cli.state import client
from llmos_jobs.db.deployment_tables import DeploymentPublic
from llmos_jobs.states import DeploymentState


def _describe(d: DeploymentPublic) -> None:
    placed = ", ".join(f"{r.worker} {d.model}@{r.version} {r.state.value}" for r in d.placed)
    console.print(f"{d.model}: {d.state.value}, serving {d.model}@{d.current_version}, "
                  f"{d.replicas} replica(s) of {d.model}@{d.version} desired "
                  f"({d.progress:.0%} ready)", markup=False)
    console.print(f"  replicas: {placed or 'none placed yet'}", markup=False)
    if d.reason:
        console.print(f"  last rollback: {d.reason}", markup=False)


def _wait(name: str, timeout_s: float) -> DeploymentPublic:
    deadline = time.monotonic() + timeout_s
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"{name}", total=1.0)
        while True:
            shown = client().deployment(name)
            progress.update(bar, completed=shown.progress,
                            description=f"{name} {shown.state.value}")
            if shown.state == DeploymentState.ready and shown.progress >= 1.0:
                return shown
            if time.monotonic() > deadline:
                raise typer.BadParameter(f"{name} still {shown.state.value} after "
                                         f"{timeout_s:.0f} s; see `llmos model status {name}`")
            time.sleep(0.5)


def register_commands(model_app: typer.Typer) -> None:
    @model_app.command("deploy")
    def deploy(
        name: str = typer.Argument(..., help="A registered model name."),
        replicas: int = typer.Option(..., "--replicas", min=1,
                                     help="How many workers hold and serve it."),
        gpu_memory_gb: float | None = typer.Option(
            None, "--gpu-memory-gb", help="Free accelerator memory a worker needs to hold "
            "a replica (from its heartbeat)."),
        wait: bool = typer.Option(False, "--wait", help="Return once every replica serves."),
        timeout_s: float = typer.Option(600, "--timeout"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """State the desired placement of a model: the control process places the
        replicas on live workers that can hold it, loads and warms them, and places a
        replica again when its worker dies."""
        shown = client().deploy_model(name, replicas=replicas, gpu_memory_gb=gpu_memory_gb)
        if wait:
            shown = _wait(name, timeout_s)
        emit_json(shown) if as_json else _describe(shown)

    @model_app.command("update")
    def update(
        name: str = typer.Argument(..., help="A deployed model name."),
        path: Path = typer.Argument(..., help="The new version's model directory."),
        strategy: str = typer.Option("rolling", "--strategy",
                                     help="rolling (one replica at a time) or blue-green "
                                     "(new replicas beside the old, then one switch)."),
        wait: bool = typer.Option(False, "--wait", help="Return once the update ended."),
        timeout_s: float = typer.Option(600, "--timeout"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Register PATH as the next version of a deployed model and move its replicas
        to it without losing a job; a failed load, warm-up or health check rolls back."""
        if strategy not in ("rolling", "blue-green"):
            raise typer.BadParameter(f"--strategy is rolling or blue-green, not {strategy}")
        shown = client().update_model(name, path, strategy=strategy)
        target = shown.version
        if wait:
            shown = _wait(name, timeout_s)
        emit_json(shown) if as_json else _describe(shown)
        if wait and shown.version != target:
            err_console.print(f"update of {name} to version {target} rolled back: "
                              f"{shown.reason}", markup=False)
            raise typer.Exit(1)

    @model_app.command("rollback")
    def rollback(name: str = typer.Argument(..., help="A deployed model name."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
        """Move a deployment back to the version its last update left."""
        shown = client().rollback_model(name)
        emit_json(shown) if as_json else _describe(shown)

    @model_app.command("status")
    def status(
        name: str = typer.Argument(..., help="A deployed model name."),
        wait: bool = typer.Option(False, "--wait", help="Show progress until ready."),
        timeout_s: float = typer.Option(600, "--timeout"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """A deployment: its state, the version NAME serves, each replica, and why the
        last update rolled back."""
        shown = _wait(name, timeout_s) if wait else client().deployment(name)
        emit_json(shown) if as_json else _describe(shown)
