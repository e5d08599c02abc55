"""32 concurrent jobs through the queue: a worker that batches them vs. one that runs
them one at a time, side by side, with the prefix cache in use in both (every prompt
shares a system prompt).

    python bench/batching.py [--size base] [--jobs 32] [--max-tokens 16]
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

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import model_dir, use_data_dir  # noqa: E402
from llmos_jobs.client import LlmosClient  # noqa: E402
from llmos_jobs.settings import Settings  # noqa: E402

SYSTEM = ("You are the scheduler of a shared model service. Answer in one short line, "
          "name the queue, the worker and the priority of the job you describe. ") * 2


def run(label: str, concurrency: int, args: argparse.Namespace, tmp: Path) -> float:
    database = f"sqlite:///{tmp / f'{label}.db'}"
    settings = Settings(broker_url=args.redis, database_url=database, data_dir=tmp)
    client = LlmosClient(settings=settings)
    client.register_model("bench", model_dir(args.size))
    env = {**os.environ, "LLMOS_BROKER_URL": args.redis, "LLMOS_DATABASE_URL": database,
           "LLMOS_DATA_DIR": str(tmp), "LLMOS_MAX_BATCH": str(args.jobs)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "llmos_jobs.cli.main", "worker", "--name", f"{label}@bench",
         "--model", "bench", "--concurrency", str(concurrency), "--loglevel", "warning"],
        env=env, stdout=(tmp / f"{label}.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Load the model and cache the system prompt before the clock starts.
            client.wait([client.generate(model="bench", messages=[
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": "warm"}],
                max_tokens=2).id], timeout_s=600)
            started = time.perf_counter()
            jobs = client.generate_many([{
                "model": "bench", "max_tokens": args.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": f"Describe job {i} of batch {i % 5}."}],
            } for i in range(args.jobs)], priority="default").jobs
            done = client.wait([j.id for j in jobs], timeout_s=3600)
            elapsed = time.perf_counter() - started
            time.sleep(2.5)  # one more heartbeat carries the engine's statistics
            [row] = [w for w in client.workers() if w.name == f"{label}@bench"]
            engine = row.engines.get("bench", {})
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert all(j.status == "succeeded" for j in done), [j.error_message for j in done]
    cached = sum(j.usage.cached_tokens for j in done if j.usage)
    prompt = sum(j.usage.prompt_tokens for j in done if j.usage)
    print(f"{label:14}{elapsed:10.2f}s {args.jobs / elapsed:8.2f} jobs/s   "
          f"prompt tokens from cache {cached}/{prompt}, forward passes "
          f"{engine.get('forward_passes', 0):.0f}, largest batch {engine.get('max_batch', 0):.0f}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", choices=["tiny", "base"])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis).flushdb()
    print(f"{args.jobs} jobs x {args.max_tokens} tokens, {args.size} model")
    with tempfile.TemporaryDirectory() as name:
        use_data_dir(name)
        one = run("one-at-a-time", 1, args, Path(name))
        batched = run("batched", args.jobs, args, Path(name))
    print(f"throughput, batched / one at a time: {one / batched:.1f}x")


if __name__ == "__main__":
    main()
