"""Updates under load: a steady stream of jobs (one every ~50 ms) on a model deployed
with two replicas on two worker processes, measured over the same stretch with no
update, across a rolling update, and across a blue-green update: jobs served, the
longest queue wait (started - created), and how long the update took. Printed side by
side; no figure is a threshold.

    .venv/bin/python bench/rollout.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmos_jobs.demo_model import create_demo_model
from llmos_jobs.errors import NoLiveWorkerWarning
from llmos_jobs.states import DeploymentState
from schemas.common import JobStatus
from tests.support.services import private_redis
from tests.support.stack import Stack, make_stack

EVERY_S = 0.05
MAX_TOKENS = 6


def stream(stack: Stack, model: str, until: threading.Event, ids: list[str]) -> None:
    client = stack.client()
    while not until.wait(EVERY_S):
        ids.append(client.generate(model=model, prompt="a steady stream of work",
                                   max_tokens=MAX_TOKENS).id)


def ready(stack: Stack, model: str, version: int) -> None:
    client = stack.client()
    while True:
        shown = client.deployment(model)
        if (shown.state == DeploymentState.ready and shown.version == version
                and shown.current_version == version and shown.progress >= 1.0):
            return
        time.sleep(0.2)


def measure(stack: Stack, model: str, during: float | None,
            action: Callable[[], None] | None = None
            ) -> tuple[int, float, float, float, int]:
    """(jobs served, longest queue wait s, 95th percentile wait s, seconds, failed) over
    a stretch: ``during`` seconds, or as long as ``action`` (a callable) runs. Prints
    the longest wait of each version's jobs, to tell a job held up by a replica that
    left its version from one queued while a replica loaded."""
    stop, ids = threading.Event(), list[str]()
    thread = threading.Thread(target=stream, args=(stack, model, stop, ids))
    thread.start()
    started = time.monotonic()
    if action is not None:
        action()
    else:
        time.sleep(during or 0)
    seconds = time.monotonic() - started
    stop.set()
    thread.join()
    done = stack.client().wait(ids, timeout_s=600)
    waited = [(j, (j.started_at - j.created_at).total_seconds()) for j in done
              if j.started_at is not None]
    failed = sum(1 for j in done if j.status != JobStatus.succeeded)
    for version in sorted({j.model_version or 0 for j, _ in waited}):
        mine = [(j, w) for j, w in waited if (j.model_version or 0) == version]
        job, wait = max(mine, key=lambda pair: pair[1])
        print(f"  version {version}: {len(mine)} jobs, longest wait {wait:.2f} s "
              f"(on {job.worker}, attempt {job.attempts})", flush=True)
    waits = sorted(w for _, w in waited)
    p95 = waits[int(0.95 * (len(waits) - 1))] if waits else 0.0
    return len(done), max(waits, default=0.0), p95, seconds, failed


def main() -> None:
    warnings.simplefilter("ignore", NoLiveWorkerWarning)
    root = Path(tempfile.mkdtemp(prefix="llmos-rollout-"))
    paths = [create_demo_model(root / f"seed{s}", dtype="float64", seed=s) for s in (0, 1, 2)]
    with private_redis() as redis_base:
        stack = make_stack("sqlite", redis_base, None, root / "stack", redis_db=5)
        client = stack.client()
        stack.control = stack.start_control(wait=True)
        model = f"bench-{uuid.uuid4().hex[:6]}"
        client.register_model(model, paths[0])
        for _ in range(2):
            stack.start_worker(f"bench-{uuid.uuid4().hex[:6]}@bench", "--model", model,
                               "--concurrency", "2")
        try:
            client.deploy_model(model, replicas=2)
            ready(stack, model, 1)

            def rolling() -> None:
                client.update_model(model, paths[1], strategy="rolling")
                ready(stack, model, 2)

            def blue_green() -> None:
                client.update_model(model, paths[2], strategy="blue-green")
                ready(stack, model, 3)

            updated = measure(stack, model, None, rolling)
            blue = measure(stack, model, None, blue_green)
            still = measure(stack, model, max(updated[3], blue[3]))
        finally:
            stack.stop()
    print("| stretch | seconds | jobs served | jobs/s | longest queue wait s "
          "| p95 wait s | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (served, wait, p95, seconds, failed) in (
            ("no update", still), ("rolling update", updated), ("blue-green update", blue)):
        print(f"| {label} | {seconds:.1f} | {served} | {served / seconds:.1f} | "
              f"{wait:.2f} | {p95:.2f} | {failed} |")
    print(f"longest wait ratio to no update: rolling {updated[1] / max(still[1], 1e-9):.2f}, "
          f"blue-green {blue[1] / max(still[1], 1e-9):.2f}")


if __name__ == "__main__":
    main()
