"""Multi-round conversations across two workers: the share of prompt tokens served
from the prefix cache with cache-affinity routing vs. round-robin, side by side, and
against the ideal (one worker, where every earlier prefix is in its cache).

    python bench/mindspace_affinity.py [--users 8] [--rounds 6] [--size tiny]
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
from llmos_jobs.settings import Settings, get_settings  # noqa: E402

SYSTEM = ("You are a helpful assistant of the llmos job system. Answer briefly and name "
          "the queue, the worker and the priority involved. ") * 3


def run(label: str, workers: int, routing: str, args: argparse.Namespace, tmp: Path
        ) -> tuple[float, float]:
    os.environ["LLMOS_TURN_ROUTING"] = routing
    get_settings.cache_clear()
    database = f"sqlite:///{tmp / f'{label}.db'}"
    broker = args.redis
    redis.Redis.from_url(broker).flushdb()
    client = LlmosClient(settings=Settings(broker_url=broker, database_url=database,
                                           data_dir=tmp))
    client.register_model("chat", model_dir(args.size))
    env = {**os.environ, "LLMOS_BROKER_URL": broker, "LLMOS_DATABASE_URL": database,
           "LLMOS_DATA_DIR": str(tmp)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "llmos_jobs.cli.main", "worker", "--name", f"{label}-{i}@bench",
         "--model", "chat", "--concurrency", "8", "--loglevel", "warning"],
        env=env, stdout=(tmp / f"{label}-{i}.log").open("ab"), stderr=subprocess.STDOUT)
        for i in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while len([w for w in client.workers() if w.name.startswith(label)]) < workers:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.2)
        spaces = [client.create_mindspace(model="chat", persona=SYSTEM, max_tokens=16)
                  for _ in range(args.users)]
        prompt = cached = 0
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for r in range(args.rounds):
                jobs = [client.chat(s.id, f"Round {r}: what happens to job {u * 31 + r}?")
                        for u, s in enumerate(spaces)]
                for job in client.wait([j.id for j in jobs], timeout_s=600):
                    assert job.usage is not None, job.error_message
                    prompt += job.usage.prompt_tokens
                    cached += job.usage.cached_tokens
        elapsed = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    share = cached / prompt
    print(f"{label:13} {share:7.1%} of prompt tokens from cache  ({cached}/{prompt}), "
          f"{elapsed:6.2f}s end to end", flush=True)
    return share, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    print(f"{args.users} mindspaces x {args.rounds} turns, shared persona, {args.size} model")
    with tempfile.TemporaryDirectory() as name:
        use_data_dir(name)
        tmp = Path(name)
        ideal, _ = run("ideal-1w", 1, "affinity", args, tmp)
        affinity, t_aff = run("affinity-2w", 2, "affinity", args, tmp)
        rr, t_rr = run("roundrobin-2w", 2, "round_robin", args, tmp)
    print(f"affinity reaches {affinity / ideal:.0%} of the ideal hit rate, round-robin "
          f"{rr / ideal:.0%}; end to end, round-robin / affinity = {t_rr / t_aff:.2f}")


if __name__ == "__main__":
    main()
