"""N concurrent chat jobs through the queue to one worker at ``--concurrency N``,
against the ceiling: the same N requests handed to the engine in-process at once
(``TransformersEngine.generate``), side by side in one run. Optionally also one job
at a time through the queue (``--sequential``), the speed-up batching is measured
against. Every prompt shares a system prompt, so the prefix cache is in use.

    python bench/batching.py [--size base] [--jobs 32 128] [--max-tokens 16] [--rounds 2]
                             [--sequential]

The two sides alternate, ``--rounds`` times each, and the best time of each counts:
on a shared machine a neighbour's burst then spoils one round, not the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import model_dir, use_data_dir  # noqa: E402
from llmos_jobs.client import LlmosClient  # noqa: E402
from llmos_jobs.settings import Settings  # noqa: E402
from tests.support.services import private_redis  # noqa: E402
from workers.engines.base import EngineRequest, EngineSampling  # noqa: E402
from workers.engines.transformers import BatchingOptions, TransformersEngine  # noqa: E402

SYSTEM = ("You are the scheduler of a shared model service. Answer in one short line, "
          "name the queue, the worker and the priority of the job you describe. ") * 2


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Describe job {i} of batch {i % 5}."}]


def ceiling(size: str, jobs: int, max_tokens: int) -> float:
    """Seconds for the engine alone to serve ``jobs`` requests handed over at once."""
    from schemas.common import ChatMessage

    engine = TransformersEngine("bench", str(model_dir(size)), BatchingOptions(max_batch=jobs))
    warm = [ChatMessage(**m) for m in messages(-1)]
    engine.generate([EngineRequest(EngineSampling(2), messages=warm)])
    requests = [EngineRequest(EngineSampling(max_tokens),
                              messages=[ChatMessage(**m) for m in messages(i)])
                for i in range(jobs)]
    started = time.perf_counter()
    engine.generate(requests)
    elapsed = time.perf_counter() - started
    engine.unload()
    return elapsed


def through_queue(label: str, concurrency: int, jobs: int, args: argparse.Namespace,
                  redis_url: str, tmp: Path) -> tuple[float, dict[str, Any]]:
    database = f"sqlite:///{tmp / f'{label}.db'}"
    settings = Settings(broker_url=redis_url, database_url=database, data_dir=tmp)
    client = LlmosClient(settings=settings)
    client.register_model("bench", model_dir(args.size))
    env = {**os.environ, "LLMOS_BROKER_URL": redis_url, "LLMOS_DATABASE_URL": database,
           "LLMOS_DATA_DIR": str(tmp), "LLMOS_MAX_BATCH": str(jobs),
           "LLMOS_HEARTBEAT_INTERVAL_S": "0.5"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "llmos_jobs.cli.main", "worker", "--name", f"{label}@bench",
         "--model", "bench", "--concurrency", str(concurrency), "--loglevel", "warning"],
        env=env, stdout=(tmp / f"{label}.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Load the model and cache the system prompt before the clock starts.
            client.wait([client.generate(model="bench", messages=messages(-1),
                                         max_tokens=2).id], timeout_s=600)
            started = time.perf_counter()
            submitted = client.generate_many([{
                "model": "bench", "max_tokens": args.max_tokens, "messages": messages(i),
            } for i in range(jobs)], priority="default").jobs
            done = client.wait([j.id for j in submitted], timeout_s=3600)
            elapsed = time.perf_counter() - started
            time.sleep(1.5)  # one more heartbeat carries the engine's statistics
            [row] = [w for w in client.workers() if w.name == f"{label}@bench"]
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert all(j.status == "succeeded" for j in done), [j.error_message for j in done]
    return elapsed, row.engines.get("bench", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", choices=["tiny", "base"])
    parser.add_argument("--jobs", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequential", action="store_true",
                        help="also run the jobs one at a time through the queue")
    args = parser.parse_args()
    print(f"{args.size} model, {args.max_tokens} new tokens per job")
    print(f"{'jobs':>5} {'ceiling':>9} {'queue':>9} {'of ceiling':>11} {'passes':>7} "
          f"{'largest':>8}" + (f" {'sequential':>11} {'speed-up':>9}" if args.sequential else ""))
    with tempfile.TemporaryDirectory() as name, private_redis() as redis_url:
        use_data_dir(name)
        for jobs in args.jobs:
            best, queued, engine = float("inf"), float("inf"), {}
            for r in range(args.rounds):
                best = min(best, ceiling(args.size, jobs, args.max_tokens))
                seconds, stats = through_queue(f"batched-{jobs}-{r}", jobs, jobs, args,
                                               redis_url, Path(name))
                if seconds < queued:
                    queued, engine = seconds, stats
            line = (f"{jobs:>5} {best:>8.2f}s {queued:>8.2f}s {best / queued:>11.2f} "
                    f"{engine.get('forward_passes', 0):>7.0f} {engine.get('max_batch', 0):>8.0f}")
            if args.sequential:
                one, _ = through_queue(f"sequential-{jobs}", 1, jobs, args, redis_url,
                                       Path(name))
                line += f" {one:>10.2f}s {one / queued:>8.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
