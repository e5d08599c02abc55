"""CPU seconds of `llmos` read commands, the way a person at a shell pays for them.

Each command runs as a fresh `python -m llmos_jobs.cli.main ...` process against one
prepared data directory (SQLite, a registered no-op model, one job, one mindspace, no
broker); the figure is the child's user + system CPU time (os.wait4), the median of
``--runs`` runs. ``--ref REV`` also runs the same commands from a `git archive` of REV,
so before and after are measured side by side on the same machine and data.

    python bench/cli_speed.py [--runs 5] [--ref 75992c3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare(data_dir: Path) -> dict[str, str]:
    """A data directory holding a model, a queued job and a mindspace; their ids."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from llmos_jobs.client import LlmosClient
from llmos_jobs.db import jobs as job_rows
from schemas.common import JobKind

client = LlmosClient()
client.register_model("echo", Path({str(data_dir)!r}) / "echo", engine="noop")
space = client.create_mindspace(model="echo", persona="You are terse.")
with client.session() as session:
    job = job_rows.create_job(session=session, job_in=job_rows.JobCreate(
        tenant=client.tenant, kind=JobKind.generate, priority=5, model="echo",
        payload={{"model": "echo", "prompt": "hello", "max_tokens": 4}}, queue="lang.echo"))
print(job.id, space.id)
"""
    out = subprocess.run([sys.executable, "-c", script], env=environment(data_dir),
                         capture_output=True, text=True, check=True)
    job_id, mindspace_id = out.stdout.split()
    return {"JOB": job_id, "MINDSPACE": mindspace_id}


def environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env["LLMOS_DATA_DIR"] = str(data_dir)
    return env


COMMANDS = [
    ["--help"],
    ["job", "list"],
    ["job", "list", "--json"],
    ["job", "show", "JOB"],
    ["workers"],
    ["mindspace", "show", "MINDSPACE"],
]


def cpu_seconds(checkout: Path, args: list[str], env: dict[str, str]) -> float:
    """User + system CPU of one `llmos ARGS` run from ``checkout``."""
    process = subprocess.Popen([sys.executable, "-m", "llmos_jobs.cli.main", *args],
                               cwd=checkout, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"llmos {' '.join(args)} failed in {checkout}: {stderr}")
    return usage.ru_utime + usage.ru_stime


def checkout_of(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ref", help="also measure this git revision (the 'before')")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmos-cli-speed-") as tmp:
        data_dir = Path(tmp) / "data"
        ids = prepare(data_dir)
        env = environment(data_dir)
        checkouts = {"this checkout": ROOT}
        if args.ref:
            checkouts = {args.ref: checkout_of(args.ref, Path(tmp) / "ref"), **checkouts}
        widths = max(len(" ".join(c)) for c in COMMANDS) + 2
        print(f"{'llmos command':<{widths}}" + "".join(f"{name:>16}" for name in checkouts))
        for command in COMMANDS:
            argv = [ids.get(a, a) for a in command]
            cells = []
            for checkout in checkouts.values():
                cpu_seconds(checkout, argv, env)  # warm the page cache and .pyc files
                runs = [cpu_seconds(checkout, argv, env) for _ in range(args.runs)]
                cells.append(f"{statistics.median(runs):>15.2f}s")
            print(f"{' '.join(command):<{widths}}" + "".join(cells))


if __name__ == "__main__":
    main()
