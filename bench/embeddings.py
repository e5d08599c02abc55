"""Time of one /v1/embeddings computation in-process (the work the API does per
request, without HTTP): best of ``--runs`` for 1, 8 and 64 texts, with torch on 1 and
on all threads. The figure behind docs/embeddings.md's choice to embed in the API
process rather than as a job.

    python -m bench.embeddings [--runs 7]
"""

from __future__ import annotations

import argparse
import time

import torch

from llmos_jobs.services.embeddings import MODEL, embed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    texts = [f"Jobs carry a priority from 0 to 9; sentence {i} is about queues."
             for i in range(64)]
    embed(texts[:1], model=MODEL)  # the model's load is paid once per process
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        for n in (1, 8, 64):
            best = float("inf")
            for _ in range(runs):
                start = time.perf_counter()
                embed(texts[:n], model=MODEL)
                best = min(best, time.perf_counter() - start)
            print(f"torch threads {threads}: {n:3d} texts  {best * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
