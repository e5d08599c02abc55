"""Load check: a 10,000-line batch uploaded to `llmos api`, validated and completed
with the no-op engine; the time of each phase and the API process's peak memory.

    python bench/batch_load.py [--lines 10000] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeakRSS(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis).flushdb()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        os.environ.update(LLMOS_DATA_DIR=name, LLMOS_BROKER_URL=args.redis,
                          LLMOS_DATABASE_URL=f"sqlite:///{tmp / 'load.db'}")
        from llmos_jobs.client import LlmosClient
        from llmos_jobs.db.session import session_scope
        from llmos_jobs.services.api_keys import issue_key, parse_scopes

        client = LlmosClient()
        client.register_model("load", tmp / "load", engine="noop")
        with session_scope(client.database) as session:
            key = issue_key(session=session, tenant="load", scopes=parse_scopes(None)).key
        env = dict(os.environ)
        worker = subprocess.Popen(
            [sys.executable, "-m", "llmos_jobs.cli.main", "worker", "--name", "load@bench",
             "--model", "load", "--concurrency", "8", "--loglevel", "warning"],
            env=env, stdout=(tmp / "worker.log").open("ab"), stderr=subprocess.STDOUT)
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "llmos_jobs.cli.main", "api", "--port", str(port),
             "--log-level", "warning"], env=env, stdout=(tmp / "api.log").open("ab"),
            stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            rss = PeakRSS(api.pid)
            idle = psutil.Process(api.pid).memory_info().rss
            rss.start()
            body = "\n".join(json.dumps({
                "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "load", "max_tokens": 4,
                         "messages": [{"role": "user", "content": f"request number {i}"}]},
            }) for i in range(args.lines)).encode()
            http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                timeout=120)
            started = time.perf_counter()
            uploaded = http.post("/v1/files", files={"file": ("load.jsonl", body)},
                                 data={"purpose": "batch"}).json()
            t_upload = time.perf_counter() - started
            batch = http.post("/v1/batches", json={
                "input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}).json()
            t_validated = None
            while True:
                state = http.get(f"/v1/batches/{batch['id']}").json()
                if t_validated is None and state["status"] != "validating":
                    t_validated = time.perf_counter() - started
                if state["status"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            total = time.perf_counter() - started
            output = http.get(f"/v1/files/{state['output_file_id']}/content").text
            rss.stop.set()
            rss.join()
        finally:
            for process in (api, worker):
                process.terminate()
                process.wait(timeout=60)
    counts = state["request_counts"]
    print(f"{args.lines} lines ({len(body) / 2**20:.1f} MiB), no-op engine, SQLite, "
          f"one worker x8")
    print(f"status {state['status']}: {counts['completed']} completed, {counts['failed']} "
          f"failed; output file {len(output.splitlines())} lines")
    print(f"upload {t_upload:.2f}s, validated and enqueued at {t_validated:.2f}s, "
          f"completed at {total:.2f}s ({args.lines / total:.0f} requests/s)")
    print(f"API process memory: {idle / 2**20:.0f} MiB idle, peak {rss.peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
