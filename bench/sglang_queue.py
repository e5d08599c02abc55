"""Throughput of llmos through its queue (embedded Redis, SQLite, a worker with the
in-process sglang engine) against ``sglang.Engine`` driven directly, on the same
prompts with the same greedy sampling. GPU hosts only (bench/gpu_check.sh runs it).

    python bench/sglang_queue.py MODEL_DIR [--jobs 256] [--max-tokens 128] [--concurrency 256]

Prints completion tokens per second of both and the ratio llmos / direct (goal >= 0.95)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import use_data_dir  # noqa: E402


def prompts(n: int) -> list[str]:
    return [f"Request {i}: write a short story about the number {i * 7919 % 1000}."
            for i in range(n)]


def direct(model: str, texts: list[str], max_tokens: int) -> tuple[float, int]:
    """One generate call with every prompt: SGLang batches them as it likes."""
    import sglang

    engine = sglang.Engine(model_path=model, mem_fraction_static=0.5)
    params = {"max_new_tokens": max_tokens, "temperature": 0.0}
    engine.generate(prompt=texts[:8], sampling_params=params)  # warm up (CUDA graphs)
    started = time.perf_counter()
    outs = engine.generate(prompt=texts, sampling_params=params)
    seconds = time.perf_counter() - started
    engine.shutdown()  # before the stack starts: it kills every child of this process
    return seconds, sum(o["meta_info"]["completion_tokens"] for o in outs)


def through_llmos(model: str, texts: list[str], max_tokens: int,
                  concurrency: int, tmp: Path) -> tuple[float, int]:
    from llmos_jobs.client import LlmosClient
    from llmos_jobs.embedded import EmbeddedStack
    from llmos_jobs.settings import get_settings

    with EmbeddedStack(tmp, get_settings()) as stack:
        client = LlmosClient(settings=stack.settings)
        client.register_model("bench", model, engine="sglang")
        worker = stack.start_worker("--name", "gpu0@bench", "--model", "bench", "--gpu", "0",
                                    "--mem-fraction", "0.5", "--concurrency", str(concurrency),
                                    "--loglevel", "warning")
        stack.wait_for_worker("gpu0@bench", worker, timeout_s=600)
        warm = client.generate_many([{"model": "bench", "prompt": t, "max_tokens": max_tokens}
                                     for t in texts[:8]])
        client.wait([j.id for j in warm.jobs], timeout_s=900)
        started = time.perf_counter()
        ids: list[str] = []
        for at in range(0, len(texts), 100):
            ids += [j.id for j in client.generate_many(
                [{"model": "bench", "prompt": t, "max_tokens": max_tokens}
                 for t in texts[at:at + 100]]).jobs]
        jobs = client.wait(ids, timeout_s=1800, poll_s=0.02)
        seconds = time.perf_counter() - started
    failed = [j.id for j in jobs if j.usage is None]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not succeed; see {tmp}/logs")
    return seconds, sum(j.usage.completion_tokens for j in jobs if j.usage is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--jobs", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    texts = prompts(args.jobs)
    d_s, d_tokens = direct(args.model, texts, args.max_tokens)
    with tempfile.TemporaryDirectory() as name:
        use_data_dir(name)
        q_s, q_tokens = through_llmos(args.model, texts, args.max_tokens, args.concurrency,
                                      Path(name))
    d_rate, q_rate = d_tokens / d_s, q_tokens / q_s
    print(f"{args.jobs} prompts x {args.max_tokens} tokens, greedy")
    print(f"sglang.Engine direct: {d_tokens} tokens in {d_s:.2f}s = {d_rate:.0f} tok/s")
    print(f"llmos (queue, x{args.concurrency}): {q_tokens} tokens in {q_s:.2f}s = "
          f"{q_rate:.0f} tok/s")
    print(f"ratio llmos/direct: {q_rate / d_rate:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
