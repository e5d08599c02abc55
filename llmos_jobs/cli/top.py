"""`llmos top`: queues, running jobs and workers, live in the terminal.

It reads what the Prometheus collectors read (llmos_jobs.db.observe.snapshot), so the
two never disagree."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from llmos_jobs.cli.output import console, emit_json, table
from llmos_jobs.cli.state import database

if TYPE_CHECKING:
    from llmos_jobs.db.session import Database
    from schemas.observe import SystemSnapshot


def top(
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print one snapshot as JSON (the "
                                 "system_snapshot schema in schemas/json) and exit."),
    interval: float = typer.Option(1.0, "--interval", min=0.1,
                                   help="Seconds between refreshes of the live view."),
    window: float = typer.Option(60.0, "--window", min=1.0,
                                 help="Workers' tokens/s: over the jobs they finished in "
                                      "this many seconds."),
) -> None:
    """Watch the system as an operator: queue depth and the age of the oldest waiting
    job per model and priority, jobs queued and running, and each worker's running
    jobs, tokens/s and heartbeat. Refreshes every second until Ctrl-C; every tenant's
    jobs are counted (the CLI is a trusted local administrator)."""
    db = database()
    if as_json:
        emit_json(_read(db, window))
        return
    if once:
        console.print(render(_read(db, window)))
        return
    try:
        with Live(render(_read(db, window)), console=console, auto_refresh=False,
                  screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(_read(db, window)), refresh=True)
    except KeyboardInterrupt:
        pass


def _read(db: Database, window: float) -> SystemSnapshot:
    from llmos_jobs.db import observe
    from llmos_jobs.db.types import utcnow

    with db.session() as session:
        return observe.snapshot(session=session, now=utcnow(), window_s=window)


def render(seen: SystemSnapshot) -> Group:
    queued = sum(a.count for a in seen.active if a.status == "queued")
    running = sum(a.count for a in seen.active if a.status == "running")
    rate = sum(w.completion_tokens_per_s for w in seen.workers)
    alive = sum(1 for w in seen.workers if w.state == "alive")
    header = Text(f"{seen.taken_at:%H:%M:%S} UTC   queued {queued}   running {running}   "
                  f"workers alive {alive}   {rate:.1f} tokens/s (last {seen.window_s:g} s)",
                  style="bold")
    queues = table("model", "priority", "depth", "oldest waits", title="queues",
                   unbroken=("model",))
    for q in seen.queues:
        queues.add_row(q.model, str(q.priority), str(q.depth), f"{q.oldest_age_s:.1f} s")
    workers = table("name", "state", "running", "tokens/s", "heartbeat", "cpu", "memory",
                    title="workers")
    for w in seen.workers:
        workers.add_row(
            w.name, w.state, f"{w.running}/{w.concurrency}",
            f"{w.completion_tokens_per_s:.1f}", f"{w.heartbeat_age_s:.1f} s ago",
            "-" if w.cpu_pct is None else f"{w.cpu_pct:.0f}%",
            "-" if w.rss_mb is None else f"{w.rss_mb:.0f} MB")
    return Group(header, queues, workers)
