"""Prefill time of a request that shares a 512-token prefix with an earlier one: with
the prefix cache vs. without, side by side, on the demo model and a ~100M model; and
the cache's memory for 100 conversations that share a 1,000-token system prompt,
against the ideal (the prompt once plus each conversation's own tokens).

    python bench/prefix_cache.py [--sizes tiny base] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import model_dir
from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.transformers import TransformersEngine

PREFIX, TAIL = 512, 16


def prompt(tail_seed: int) -> list[int]:
    prefix = [10 + (7 * i) % 400 for i in range(PREFIX)]
    return prefix + [10 + (tail_seed * 31 + 11 * i) % 400 for i in range(TAIL)]


def prefill_s(engine: TransformersEngine, ids: list[int]) -> tuple[float, int]:
    """Seconds to the first token (max_tokens=1: prefill only), and cached tokens."""
    request = EngineRequest(sampling=EngineSampling(max_tokens=1), input_ids=ids)
    started = time.perf_counter()
    [done] = engine.generate([request])
    return time.perf_counter() - started, done.cached_tokens


def measure(size: str, repeats: int) -> tuple[float, float, int]:
    engine = TransformersEngine(size, str(model_dir(size)))
    engine.load()
    prefill_s(engine, prompt(999))  # warm up kernels
    cold, warm, cached = [], [], 0
    for i in range(repeats):
        engine.flush_cache()
        cold.append(prefill_s(engine, prompt(i))[0])  # nothing cached: all 528 tokens
        seconds, cached = prefill_s(engine, prompt(i + 100))  # shares the 512-token prefix
        warm.append(seconds)
    engine.unload()
    return statistics.median(cold), statistics.median(warm), cached


def memory(size: str, conversations: int = 100, system: int = 1000) -> None:
    """Cache bytes after ``conversations`` that share a ``system``-token prompt."""
    engine = TransformersEngine(size, str(model_dir(size)))
    shared = [10 + (7 * i) % 400 for i in range(system)]
    requests = [EngineRequest(sampling=EngineSampling(max_tokens=8), input_ids=[
        *shared, *(10 + (c * 13 + 5 * i) % 400 for i in range(20))])
        for c in range(conversations)]
    done = engine.generate(requests)
    cached = engine.stats().cache_bytes
    engine.flush_cache()
    engine.generate([EngineRequest(sampling=EngineSampling(max_tokens=1), input_ids=shared)])
    per_token = engine.stats().cache_bytes / system  # the store holds prompt + 0 generated
    engine.unload()
    # Each sequence goes into the cache as its prompt and all generated tokens but the last.
    own = sum(c.prompt_tokens + c.completion_tokens - 1 - system for c in done)
    ideal = per_token * (system + own)
    whole = per_token * (conversations * system + own)  # a store of whole sequences
    print(f"{conversations} conversations sharing a {system}-token prompt ({size} model): "
          f"{cached / 2**20:.1f} MiB cached, ideal {ideal / 2**20:.1f} MiB, "
          f"ratio {cached / ideal:.2f} (goal <= 1.5); whole sequences would take "
          f"{whole / 2**20:.1f} MiB ({whole / ideal:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{PREFIX}-token shared prefix + {TAIL}-token tail, median of {args.repeats}")
    print(f"{'model':8}{'no cache (ms)':>15}{'cache (ms)':>12}{'cached tokens':>15}{'speedup':>10}")
    for size in args.sizes:
        cold, warm, cached = measure(size, args.repeats)
        print(f"{size:8}{1000 * cold:15.1f}{1000 * warm:12.1f}{cached:15d}{cold / warm:9.1f}x")
    memory(args.sizes[0])


if __name__ == "__main__":
    main()
