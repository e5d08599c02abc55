"""Scale on one host: 1, 2, 4 and 8 worker processes on the no-op engine, memory per
queued job in the broker and the database, and API submit latency under load, on Redis
and on RabbitMQ, side by side in one run (PostgreSQL as the database).

    python bench/scale.py [--workers 1,2,4,8] [--jobs 3000] [--queued 100000]
                          [--brokers redis,rabbitmq] [--api-requests 300]

Needs redis-server on PATH, PostgreSQL on 127.0.0.1:5432 and RabbitMQ on
127.0.0.1:5672 with rabbitmqctl (each run gets its own Redis server, database and
virtual host). Prints the load average around every phase: on a shared host the
figures are only as good as the CPU they got."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis
from sqlalchemy import func
from sqlmodel import col, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import use_data_dir  # noqa: E402
from broker_config import language_queue  # noqa: E402
from llmos_jobs.client import LlmosClient  # noqa: E402
from llmos_jobs.db.session import Database, session_scope  # noqa: E402
from llmos_jobs.db.tables import Job  # noqa: E402
from llmos_jobs.services.api_keys import issue_key, parse_scopes  # noqa: E402
from llmos_jobs.settings import Settings  # noqa: E402
from schemas.common import JobStatus  # noqa: E402

FINAL = [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
WORKER_CONCURRENCY = 4
CHUNK = 500


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)


@contextmanager
def private_redis(tmp: Path) -> Iterator[str]:
    """A redis-server of this run alone: its memory figure is this run's."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                          text=True, timeout=120).stdout


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    vhost = f"llmos-bench-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@contextmanager
def pg_database() -> Iterator[str]:
    name = f"llmos_scale_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        from llmos_jobs.db.session import _engines

        for engine in _engines.values():
            engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    broker: str  # "redis" or "rabbitmq"
    broker_url: str
    database_url: str
    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")
                   or k == "LLMOS_ENCRYPTION_KEYS"},
                "LLMOS_BROKER_URL": self.broker_url, "LLMOS_DATABASE_URL": self.database_url,
                "LLMOS_DATA_DIR": str(self.data_dir), "PYTHONPATH": str(ROOT),
                "LLMOS_MODEL_ROOTS": str(self.data_dir)}

    def settings(self) -> Settings:
        return Settings(broker_url=self.broker_url, database_url=self.database_url,
                        data_dir=self.data_dir)

    def client(self) -> LlmosClient:
        return LlmosClient(settings=self.settings())

    def spawn(self, log: str, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos_jobs.cli.main", *args], env=self.env,
            stdout=(self.data_dir / log).open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self, processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def finished(self, model: str) -> int:
        with session_scope(Database.from_settings(self.settings())) as session:
            return int(session.exec(select(func.count()).select_from(Job).where(
                col(Job.model) == model, col(Job.status).in_(FINAL))).one())


def submit(client: LlmosClient, model: str, jobs: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no live worker: the parked model's warning
        for start in range(0, jobs, CHUNK):
            done = client.generate_many(
                [{"model": model, "prompt": f"job {i}", "max_tokens": 1}
                 for i in range(start, min(jobs, start + CHUNK))], priority="default")
            assert not done.errors, done.errors


def start_workers(stack: Stack, model: str, count: int) -> list[subprocess.Popen[bytes]]:
    names = [f"{model}-{i}@bench" for i in range(count)]
    processes = [stack.spawn(f"{name}.log", "worker", "--name", name, "--model", model,
                             "--concurrency", str(WORKER_CONCURRENCY), "--loglevel", "warning")
                 for name in names]
    client = stack.client()
    deadline = time.monotonic() + 300
    while {w.name for w in client.workers()} < set(names):
        assert all(p.poll() is None for p in processes), f"a worker exited: {stack.data_dir}"
        assert time.monotonic() < deadline, "workers did not come up"
        time.sleep(0.2)
    return processes


def throughput(stack: Stack, count: int, jobs: int) -> float:
    """Jobs per second, from the first submission until every job is finished."""
    client = stack.client()
    model = f"w{count}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    workers = start_workers(stack, model, count)
    try:
        started = time.perf_counter()
        submit(client, model, jobs)
        while stack.finished(model) < jobs:
            time.sleep(0.05)
        return jobs / (time.perf_counter() - started)
    finally:
        stack.stop(workers)


def broker_bytes(stack: Stack, queue: str) -> int:
    if stack.broker == "redis":
        return int(redis.Redis.from_url(stack.broker_url).info("memory")["used_memory"])
    vhost = stack.broker_url.rsplit("/", 1)[1]
    # The queue process's own memory, and the message bodies it keeps in RAM (large
    # binaries live outside the process heap and are counted apart).
    for line in rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name",
                            "memory", "message_bytes_ram").splitlines():
        name, memory, bodies = line.split("\t")
        if name == queue:
            return int(memory) + int(bodies)
    return 0


def database_bytes(stack: Stack) -> int:
    plain = stack.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        row = conn.execute("SELECT pg_total_relation_size('job')").fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Queued:
    jobs: int
    submit_per_s: float
    broker_per_job: float
    database_per_job: float


def queued_memory(stack: Stack, jobs: int) -> Queued:
    """Bytes per queued job: ``jobs`` submitted to a model no worker serves."""
    client = stack.client()
    model = "parked"
    queue = language_queue(model)
    client.register_model(model, stack.data_dir / model, engine="noop")
    submit(client, model, 1)  # the queue exists before the first reading
    broker_before, db_before = broker_bytes(stack, queue), database_bytes(stack)
    started = time.perf_counter()
    submit(client, model, jobs)
    elapsed = time.perf_counter() - started
    time.sleep(2)  # RabbitMQ samples queue memory now and then
    broker_after, db_after = broker_bytes(stack, queue), database_bytes(stack)
    return Queued(jobs, jobs / elapsed, (broker_after - broker_before) / jobs,
                  (db_after - db_before) / jobs)


def api_latency(stack: Stack, workers: int, requests: int) -> list[float]:
    """POST /v1/jobs latencies (ms), one after another, while ``workers`` worker processes
    run the jobs and another producer keeps submitting in bulk."""
    client = stack.client()
    model = "api"
    client.register_model(model, stack.data_dir / model, engine="noop")
    port = free_port()
    server = stack.spawn("api.log", "api", "--port", str(port), "--log-level", "warning")
    pool = start_workers(stack, model, workers)
    with session_scope(Database.from_settings(stack.settings())) as session:
        key = issue_key(session=session, tenant="default", scopes=parse_scopes(None)).key
    stop = threading.Event()

    def background() -> None:
        while not stop.is_set():
            submit(client, model, CHUNK)
            time.sleep(0.5)

    loader = threading.Thread(target=background, daemon=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http.get("/healthz").status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.2)
            loader.start()
            latencies = []
            for i in range(requests):
                started = time.perf_counter()
                http.post("/v1/jobs", json={"model": model, "prompt": f"api {i}",
                                            "max_tokens": 1}).raise_for_status()
                latencies.append(1000 * (time.perf_counter() - started))
        return latencies
    finally:
        stop.set()
        if loader.is_alive():
            loader.join()
        stack.stop([server, *pool])


@dataclass
class Result:
    broker: str
    rates: dict[int, float]
    queued: Queued
    latency_ms: list[float]
    loads: list[str]


@contextmanager
def stacks(brokers: list[str], tmp: Path) -> Iterator[list[Stack]]:
    """One stack per broker, each with a database of its own, all up at once: the
    phases below alternate between them, so a change of load on the host falls on both."""
    with ExitStack() as resources:
        made: list[Stack] = []
        for broker in brokers:
            data_dir = tmp / broker
            data_dir.mkdir()
            url = resources.enter_context(
                private_redis(data_dir) if broker == "redis" else rabbitmq_vhost())
            made.append(Stack(broker, url, resources.enter_context(pg_database()), data_dir))
        try:
            yield made
        finally:
            for stack in made:
                stack.stop(stack.processes)


def measure(args: argparse.Namespace, tmp: Path) -> list[Result]:
    brokers = args.brokers.split(",")
    results = {b: Result(b, {}, Queued(0, 0, 0, 0), [], [f"start: {load()}"]) for b in brokers}
    with stacks(brokers, tmp) as made:
        for count in args.workers:
            for stack in made:
                result = results[stack.broker]
                result.rates[count] = throughput(stack, count, args.jobs)
                result.loads.append(f"{count} workers: {result.rates[count]:.0f} jobs/s, "
                                    f"{load()}")
                print(f"{stack.broker}: {result.loads[-1]}", flush=True)
        for stack in made:
            result = results[stack.broker]
            result.latency_ms = api_latency(stack, max(args.workers), args.api_requests)
            result.loads.append(f"API latency: p50 {statistics.median(result.latency_ms):.0f}"
                                f" ms, {load()}")
            print(f"{stack.broker}: {result.loads[-1]}", flush=True)
        for stack in made:
            result = results[stack.broker]
            result.queued = queued_memory(stack, args.queued)
            result.loads.append(f"{args.queued} queued: {result.queued.submit_per_s:.0f} "
                                f"submits/s, {load()}")
            print(f"{stack.broker}: {result.loads[-1]}", flush=True)
    return list(results.values())


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(results: list[Result], args: argparse.Namespace) -> None:
    names = [r.broker for r in results]
    print(f"\nno-op engine, PostgreSQL, {args.jobs} jobs per run, threads pool x"
          f"{WORKER_CONCURRENCY} per worker process, {os.cpu_count()} CPUs")
    print(f"{'worker processes':28}" + "".join(f"{n + ' jobs/s':>16}{'vs 1':>7}" for n in names))
    for count in args.workers:
        row = f"{count:<28}"
        for r in results:
            row += f"{r.rates[count]:16.0f}{r.rates[count] / r.rates[args.workers[0]]:7.2f}"
        print(row)
    print(f"\n{'':28}" + "".join(f"{n:>23}" for n in names))
    rows = [
        ("queued jobs", lambda r: f"{r.queued.jobs}"),
        ("submit (generate_many) /s", lambda r: f"{r.queued.submit_per_s:.0f}"),
        ("broker bytes per queued job", lambda r: f"{r.queued.broker_per_job:.0f}"),
        ("database bytes per job", lambda r: f"{r.queued.database_per_job:.0f}"),
        (f"API submit p50 ms ({max(args.workers)} w)",
         lambda r: f"{statistics.median(r.latency_ms):.1f}"),
        ("API submit p95 ms", lambda r: f"{percentile(r.latency_ms, 95):.1f}"),
        ("API submit p99 ms", lambda r: f"{percentile(r.latency_ms, 99):.1f}"),
    ]
    for label, cell in rows:
        print(f"{label:28}" + "".join(f"{cell(r):>23}" for r in results))
    if len(results) == 2:
        a, b = results
        print(f"\nratio {b.broker}/{a.broker}: throughput at " + ", ".join(
            f"{c} w {b.rates[c] / a.rates[c]:.2f}" for c in args.workers)
            + f"; API p50 {statistics.median(b.latency_ms) / statistics.median(a.latency_ms):.2f}")
    print("\nload during the run:")
    for r in results:
        for line in r.loads:
            print(f"  {r.broker}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8",
                        type=lambda s: [int(n) for n in s.split(",")])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per throughput run")
    parser.add_argument("--queued", type=int, default=100_000,
                        help="jobs left queued to measure memory per job")
    parser.add_argument("--api-requests", type=int, default=300)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    args = parser.parse_args()
    if not os.environ.get("LLMOS_ENCRYPTION_KEYS"):
        from cryptography.fernet import Fernet

        os.environ["LLMOS_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    with tempfile.TemporaryDirectory() as name:
        use_data_dir(name)
        results = measure(args, Path(name))
    report(results, args)


if __name__ == "__main__":
    main()
