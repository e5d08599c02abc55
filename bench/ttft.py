"""Time to first token through the queue against the engine called directly, side by
side in one run: one request at a time, the same prompts on both sides.

  - engine: ``TransformersEngine.generate`` in this process; the clock stops at the
    first text piece its ``on_text`` receives.
  - queue: ``LlmosClient.generate`` (database row, Redis broker, a worker process) and
    ``LlmosClient.events`` (the job's Redis stream); the clock stops at the first delta.
  - api: the official ``openai`` SDK streaming a chat completion from ``llmos api``
    (the queue path plus HTTP and server-sent events); first content chunk.

    python bench/ttft.py [--size tiny|base] [--requests 20] [--max-tokens 16]

Prints the median and 90th percentile of each, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import model_dir, use_data_dir  # noqa: E402
from llmos_jobs.client import LlmosClient  # noqa: E402
from llmos_jobs.db.session import session_scope  # noqa: E402
from llmos_jobs.services.api_keys import issue_key, parse_scopes  # noqa: E402
from llmos_jobs.settings import Settings  # noqa: E402
from schemas.common import ChatMessage  # noqa: E402
from tests.support.api_server import free_port  # noqa: E402
from tests.support.services import private_redis  # noqa: E402
from workers.engines.base import EngineRequest, EngineSampling  # noqa: E402
from workers.engines.transformers import TransformersEngine  # noqa: E402

SYSTEM = "You are the scheduler of a shared model service. Answer in one short line."


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Describe job {i} of batch {i % 5} in the queue."}]


def engine_ttft(engine: TransformersEngine, i: int, max_tokens: int) -> float:
    first = threading.Event()
    started = time.perf_counter()
    seen: list[float] = []

    def on_text(_: str) -> None:
        if not first.is_set():
            seen.append(time.perf_counter() - started)
            first.set()

    engine.generate([EngineRequest(EngineSampling(max_tokens),
                                   messages=[ChatMessage(**m) for m in messages(i)],
                                   on_text=on_text)])
    return seen[0]


def queue_ttft(client: LlmosClient, i: int, max_tokens: int) -> float:
    started = time.perf_counter()
    job = client.generate(model="bench", messages=messages(i), max_tokens=max_tokens,
                          priority="interactive")
    ttft = None
    for event in client.events(job.id):  # read to the end: the job is done after
        if ttft is None and event.type == "delta":
            ttft = time.perf_counter() - started
    assert ttft is not None, f"job {job.id} streamed no text"
    return ttft


def api_ttft(sdk: openai.OpenAI, i: int, max_tokens: int) -> float:
    started = time.perf_counter()
    ttft = None
    for chunk in sdk.chat.completions.create(model="bench", messages=messages(i),  # type: ignore[arg-type]
                                             max_tokens=max_tokens, stream=True):
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
    assert ttft is not None
    return ttft


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "llmos_jobs.cli.main", *args], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"{name:<8} median {statistics.median(ms):8.1f} ms   p90 {p90:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--dispatch", choices=["on", "off"], default="on",
                        help="the fair-share dispatcher (on: a control process runs too)")
    args = parser.parse_args()
    path = model_dir(args.size)
    with tempfile.TemporaryDirectory() as name, private_redis() as redis_url:
        tmp = Path(name)
        use_data_dir(name)
        database = f"sqlite:///{tmp / 'ttft.db'}"
        settings = Settings(broker_url=redis_url, database_url=database, data_dir=tmp,
                            dispatch=args.dispatch)
        client = LlmosClient(settings=settings)
        client.register_model("bench", path)
        env = {**os.environ, "LLMOS_BROKER_URL": redis_url, "LLMOS_DATABASE_URL": database,
               "LLMOS_DATA_DIR": name, "LLMOS_MODEL_ROOTS": str(path.parent),
               "LLMOS_DISPATCH": args.dispatch}
        port = free_port()
        processes = [
            start(["worker", "--name", "ttft@bench", "--model", "bench", "--concurrency", "4",
                   "--loglevel", "warning"], env, tmp / "worker.log"),
            start(["api", "--port", str(port), "--log-level", "warning"], env, tmp / "api.log"),
        ]
        if args.dispatch == "on":
            processes.append(start(["control", "--name", "control@bench", "--loglevel",
                                    "warning"], env, tmp / "control.log"))
        try:
            wait_up(f"http://127.0.0.1:{port}/healthz")
            with session_scope(client.database) as session:
                key = issue_key(session=session, tenant=settings.tenant,
                                scopes=parse_scopes(None)).key
            sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                max_retries=0)
            engine = TransformersEngine("bench", str(path))
            engine.load()
            # Warm both sides (model loaded, first passes compiled) off the clock.
            engine_ttft(engine, -1, 2)
            queue_ttft(client, -1, 2)
            api_ttft(sdk, -2, 2)
            sides: dict[str, list[float]] = {"engine": [], "queue": [], "api": []}
            runs: dict[str, Callable[[int], float]] = {
                "engine": lambda i: engine_ttft(engine, i, args.max_tokens),
                "queue": lambda i: queue_ttft(client, 1000 + i, args.max_tokens),
                "api": lambda i: api_ttft(sdk, 2000 + i, args.max_tokens),
            }
            for i in range(args.requests):  # the sides alternate: noise hits all alike
                for side, run in runs.items():
                    sides[side].append(run(i))
            engine.unload()
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    print(f"{args.size} model, {args.requests} requests per side, one at a time, "
          f"{args.max_tokens} new tokens, dispatcher {args.dispatch}")
    for side, seconds in sides.items():
        print(summary(side, seconds))
    base = statistics.median(sides["engine"])
    print(f"queue / engine: {statistics.median(sides['queue']) / base:.1f}x   "
          f"api / engine: {statistics.median(sides['api']) / base:.1f}x")


if __name__ == "__main__":
    main()
