"""`llmos demo`: the whole pipeline on the embedded stack, end to end, in one command."""

from __future__ import annotations

import os
import socket
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from llmos_jobs.cli.output import job_table
from llmos_jobs.client import LlmosClient
from llmos_jobs.db.tables import JobPublic
from llmos_jobs.embedded import EmbeddedStack, live_stack
from llmos_jobs.errors import LlmosError
from llmos_jobs.settings import get_settings
from schemas.common import JobStatus

PROMPTS = [
    ("Summarise the queue status", "batch"),
    ("Translate the result to French", "default"),
    ("Answer: which worker runs first?", "interactive"),
    ("Write one line about caches", "batch"),
    ("Explain priority in one sentence", "default"),
    ("Name three tokens", "interactive"),
    ("Describe the model", "batch"),
    ("List what a mindspace keeps", "default"),
]
TURNS = ["Hello, who are you?", "What did I just ask?", "Thank you."]


def run_demo(console: Console) -> int:
    """Run the demo; 0 when every job succeeded."""
    settings = get_settings()
    data_dir = settings.data_dir / "demo"
    running = live_stack(data_dir)
    if running is not None:  # its database is about to be deleted: never under it
        raise LlmosError(f"a demo already runs (pid {running.owner.pid}); wait for it to end")
    database_url = settings.database_url
    if database_url is None:
        db_file = data_dir / "demo.db"
        for leftover in data_dir.glob("demo.db*"):
            leftover.unlink()
        database_url = f"sqlite:///{db_file}"
    model_dir = data_dir / "models" / "demo-tiny"
    if not (model_dir / "config.json").exists():
        from llmos_jobs.demo_model import create_demo_model

        with console.status("building the demo model (tokenizer, config, seeded weights)"):
            create_demo_model(model_dir)
    with EmbeddedStack(data_dir, settings, database_url=database_url) as stack:
        console.print(f"broker: {stack.broker_url}\ndatabase: {database_url}")
        client = LlmosClient(settings=stack.settings)
        client.register_model("demo", model_dir)
        stack.start_control()
        name = f"demo-{os.getpid()}@{socket.gethostname()}"
        with console.status(f"starting worker {name}"):
            process = stack.start_worker("--model", "demo", "--name", name,
                                         "--concurrency", "2")
            stack.wait_for_worker(name, process)
        jobs = _run_jobs(console, client, name)
        console.print(job_table(jobs, title="llmos demo"))
        mindspace = client.mindspace(jobs[-1].mindspace_id or "")
        console.print(f"mindspace {mindspace.id}: {len(mindspace.messages)} messages kept")
    failed = [j for j in jobs if j.status != JobStatus.succeeded]
    if failed:
        console.print(f"[red]{len(failed)} job(s) did not succeed[/red]")
        return 1
    console.print("[green]all jobs succeeded[/green]")
    return 0


def _run_jobs(console: Console, client: LlmosClient, worker: str) -> list[JobPublic]:
    total = 1 + len(PROMPTS) + len(TURNS)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("jobs", total=total)
        submitted = [client.model_op("demo", "load", worker=worker)]
        submitted += [
            client.generate(model="demo", prompt=p, priority=c, max_tokens=16)
            for p, c in PROMPTS
        ]
        _track(progress, bar, client, [j.id for j in submitted])
        mindspace = client.create_mindspace(model="demo", persona="You are a concise helper.")
        for message in TURNS:
            # Turns of one mindspace run in order: each waits for the one before.
            turn = client.chat(mindspace.id, message, max_tokens=16)
            submitted.append(turn)
            _track(progress, bar, client, [j.id for j in submitted])
    return [client.job(j.id) for j in submitted]


def _track(progress: Progress, bar: TaskID, client: LlmosClient, job_ids: list[str],
           timeout_s: float = 600.0) -> None:
    """Advance the bar as jobs finish; return when all of ``job_ids`` are final."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = sum(client.job(j).status.is_final for j in job_ids)
        progress.update(bar, completed=done)
        if done == len(job_ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(job_ids) - done} demo job(s) unfinished after {timeout_s}s")
        time.sleep(0.1)


