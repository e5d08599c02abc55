"""`llmos worker`, `llmos workers`, `llmos up`, `llmos demo`, `llmos db upgrade`."""

from __future__ import annotations

import signal
import socket
import time

import typer

from llmos_jobs.cli.output import console, emit_json, err_console, table
from llmos_jobs.cli.state import client
from schemas.model import EngineKind

POOLS = ("threads", "prefork", "solo")


def worker(
    concurrency: int = typer.Option(None, "--concurrency", "-c", min=1,
                                    help="Jobs in flight at once; 1 is strict one-at-a-time. "
                                         "Default 8, or 64 on a threads-pool worker whose "
                                         "engine is SGLang (it batches what it is handed)."),
    gpu: int = typer.Option(None, "--gpu", min=0, help="Pin to this GPU (CUDA_VISIBLE_DEVICES)."),
    model: list[str] = typer.Option([], "--model", "-m",
                                    help="Serve only this model (repeatable). Default: all, "
                                         "including models registered later."),
    name: str = typer.Option(None, "--name", "-n",
                             help="Unique worker name. Default: cpu-<pid>@host or gpuN@host."),
    queues: str = typer.Option(None, "--queues", "-Q",
                               help="Comma-separated queues, replacing the defaults."),
    pool: str = typer.Option("threads", "--pool",
                             help="threads: one model copy shared by all jobs (default); "
                                  "prefork: a process per slot."),
    engine: EngineKind = typer.Option(None, "--engine",
                                      help="Run its models on this engine instead of the "
                                           "registered one (sglang needs the gpu extra)."),
    sglang_url: str = typer.Option(None, "--sglang-url",
                                   help="Drive the SGLang server at this URL (implies "
                                        "--engine sglang-http)."),
    mem_fraction: float = typer.Option(0.85, "--mem-fraction", min=0.05, max=0.99,
                                       help="sglang: GPU memory for weights and KV cache."),
    loglevel: str = typer.Option("info", "--loglevel"),
) -> None:
    """Run a worker: it serves language, model and mindspace jobs of its models and its
    own direct queue (w.<name>); control work is `llmos control`'s. With
    LLMOS_WORKER_METRICS_PORT set it serves Prometheus metrics on that port
    (docs/metrics.md; a prefork pool also needs PROMETHEUS_MULTIPROC_DIR)."""
    if pool not in POOLS:
        raise typer.BadParameter(f"choose one of {', '.join(POOLS)}", param_hint="--pool")
    from workers.engines.pool import EngineChoice
    from workers.main import run_worker

    if sglang_url is not None:
        engine = EngineKind.sglang_http
    run_worker(
        name=name, models=model, queues=[q for q in (queues or "").split(",") if q],
        gpu=gpu, concurrency=concurrency, pool=pool, loglevel=loglevel,
        engine_choice=EngineChoice(kind=engine, sglang_url=sglang_url,
                                   mem_fraction_static=mem_fraction),
    )


def control(
    name: str = typer.Option(None, "--name", "-n",
                             help="Unique name. Default: control-<host>."),
    beat: bool = typer.Option(True, "--beat/--no-beat",
                              help="Also schedule the periodic work (run one process "
                                   "with beat; others only add throughput)."),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1),
    loglevel: str = typer.Option("info", "--loglevel"),
) -> None:
    """Run the control plane (no GPU): reaping, reconciling what the broker lost, batch
    expansion, finalisation and expiry, webhook deliveries. With
    LLMOS_CONTROL_METRICS_PORT set it serves Prometheus metrics on that port
    (docs/metrics.md)."""
    from workers.main import run_control

    run_control(name=name, beat=beat, concurrency=concurrency, loglevel=loglevel)


def workers(
    all_: bool = typer.Option(False, "--all", help="Include stopped and dead workers."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List workers with their state, models and load."""
    rows = client().workers(include_gone=all_)
    if as_json:
        emit_json(rows)
        return
    grid = table("name", "state", "pid", "pool", "models", "loaded", "running", "heartbeat")
    for w in rows:
        grid.add_row(
            w.name, w.state, str(w.pid), f"{w.pool} x{w.concurrency}",
            "all" if w.models is None else ", ".join(w.models) or "-",
            ", ".join(w.loaded) or "-", str(w.running_jobs),
            f"{w.seconds_since_heartbeat:.0f}s ago",
        )
    console.print(grid)


def up(
    with_worker: bool = typer.Option(True, "--worker/--no-worker",
                                     help="Also start one CPU worker serving every model."),
) -> None:
    """Run the embedded stack in the foreground until interrupted (Ctrl-C)."""
    from llmos_jobs.embedded import EmbeddedStack
    from llmos_jobs.settings import get_settings

    # From the start, so that a stop during start-up also stops what was started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    settings = get_settings()
    try:
        with EmbeddedStack(settings.data_dir, settings) as stack:
            if stack.recovered:
                err_console.print(f"warning: {stack.recovered}", markup=False, style="yellow")
            console.print(f"broker:   {stack.broker_url}\ndatabase: {stack.database_url}")
            stack.start_control()
            console.print(f"control:  llmos control (logs in {stack.log_dir})")
            if with_worker:
                name = f"cpu-up@{socket.gethostname()}"
                process = stack.start_worker("--name", name)
                with console.status("starting a worker"):
                    stack.wait_for_worker(name, process)
                console.print(f"worker:   {name} (logs in {stack.log_dir})")
            console.print("ready: other shells' `llmos` commands use this stack. "
                          "Ctrl-C stops it.")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopped")


def demo() -> None:
    """Run the whole pipeline once on the embedded stack, then stop everything."""
    from llmos_jobs.demo import run_demo

    raise typer.Exit(run_demo(console))


def db_upgrade() -> None:
    """Apply the database migrations (every command also does it on first use)."""
    from llmos_jobs.cli.state import database
    from llmos_jobs.db.session import masked

    console.print(f"database at the newest revision: {masked(database().url)}")
