"""End-to-end jobs per second through llmos (no-op engine) against bare Celery no-op
tasks on the same Redis with the same Celery settings, measured side by side.

    python bench/pipeline_throughput.py [--jobs 1000] [--concurrency 8] [--database sqlite|postgres]

Prints the ratio llmos / raw and where the difference goes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
from sqlalchemy import func
from sqlmodel import col, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import use_data_dir  # noqa: E402
from bench.raw_celery import COUNTER, make_app  # noqa: E402
from llmos_jobs.client import LlmosClient  # noqa: E402
from llmos_jobs.db.session import session_scope  # noqa: E402
from llmos_jobs.db.tables import Job  # noqa: E402
from llmos_jobs.settings import Settings  # noqa: E402
from schemas.common import JobStatus  # noqa: E402

FINAL = [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=60)


def run_raw(broker: str, jobs: int, concurrency: int, tmp: Path) -> tuple[float, float]:
    r = redis.Redis.from_url(broker)
    r.delete(COUNTER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = start([sys.executable, str(ROOT / "bench/raw_celery.py"), broker, str(concurrency)],
                   env, tmp / "raw.log")
    app = make_app(broker)
    app.send_task("bench.noop", args=["warm"], queue="lang.raw")
    while int(r.get(COUNTER) or 0) < 1:
        time.sleep(0.05)
    r.delete(COUNTER)
    started = time.perf_counter()
    for i in range(jobs):
        app.send_task("bench.noop", args=[uuid.uuid4().hex], queue="lang.raw",
                      priority=(1, 5, 8)[i % 3])
    submitted = time.perf_counter() - started
    while int(r.get(COUNTER) or 0) < jobs:
        time.sleep(0.01)
    total = time.perf_counter() - started
    stop(worker)
    return submitted, total


def run_llmos(broker: str, database: str, jobs: int, concurrency: int, tmp: Path,
              bulk: bool = False) -> tuple[float, float]:
    settings = Settings(broker_url=broker, database_url=database, data_dir=tmp)
    client = LlmosClient(settings=settings)
    client.register_model("bench", tmp / "bench", engine="noop")
    env = {**os.environ, "LLMOS_BROKER_URL": broker, "LLMOS_DATABASE_URL": database,
           "LLMOS_DATA_DIR": str(tmp)}
    worker = start([sys.executable, "-m", "llmos_jobs.cli.main", "worker", "--name",
                    "bench@bench", "--model", "bench", "--concurrency", str(concurrency),
                    "--loglevel", "warning"], env, tmp / "llmos.log")
    client.wait([client.generate(model="bench", prompt="warm", max_tokens=1).id], timeout_s=120)
    started = time.perf_counter()
    if bulk:
        for chunk in range(0, jobs, 100):
            client.generate_many([{"model": "bench", "prompt": f"job {i}", "max_tokens": 1}
                                  for i in range(chunk, min(jobs, chunk + 100))])
    else:
        for i in range(jobs):
            client.generate(model="bench", prompt=f"job {i}", max_tokens=1,
                            priority=(1, 5, 8)[i % 3])
    submitted = time.perf_counter() - started
    while True:
        with session_scope(client.database) as session:
            done = session.exec(select(func.count()).select_from(Job).where(
                col(Job.status).in_(FINAL))).one()
        if done >= jobs + 1:
            break
        time.sleep(0.02)
    total = time.perf_counter() - started
    stop(worker)
    return submitted, total


def breakdown(broker: str, database: str, tmp: Path, jobs: int = 300) -> dict[str, float]:
    """Per-job cost in ms of llmos's own steps, each timed alone in this process."""
    from workers.engines.pool import EnginePool
    from workers.execution import WorkerContext, execute_job
    from workers.watch import JobWatcher

    settings = Settings(broker_url=broker, database_url=database, data_dir=tmp)
    client = LlmosClient(settings=settings)
    client.register_model("parts", tmp / "parts", engine="noop")
    app = make_app(broker)
    started = time.perf_counter()
    for i in range(jobs):
        app.send_task("bench.noop", args=[f"x{i}"], queue="lang.parts-raw")
    publish = time.perf_counter() - started
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        submitted = [client.generate(model="parts", prompt=f"p{i}", max_tokens=1)
                     for i in range(jobs)]
        submit = time.perf_counter() - started
    submitter = client.submitter
    ctx = WorkerContext(name="bench", submitter=submitter,
                        pool=EnginePool(settings, submitter.database),
                        claimant_dead=lambda _: False, watcher=JobWatcher(submitter.database),
                        publish=lambda _: None)  # generate jobs release no turns
    started = time.perf_counter()
    for job in submitted:
        execute_job(job_id=job.id, message_id=job.task_id, ctx=ctx)
    execute = time.perf_counter() - started
    return {"publish (Celery send_task)": 1000 * publish / jobs,
            "llmos submit (validate, insert+commit, publish)": 1000 * submit / jobs,
            "llmos worker step (claim+commit, engine, result+commit)": 1000 * execute / jobs}


def fresh_database(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:6]}.db'}"
    name = f"llmos_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis).flushdb()
    raw: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []
    bulk: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as name:
        use_data_dir(name)
        tmp = Path(name)
        for round_ in range(args.rounds):
            raw.append(run_raw(args.redis, args.jobs, args.concurrency, tmp))
            ours.append(run_llmos(args.redis, fresh_database(args.database, tmp), args.jobs,
                                  args.concurrency, tmp))
            bulk.append(run_llmos(args.redis, fresh_database(args.database, tmp), args.jobs,
                                  args.concurrency, tmp, bulk=True))
            print(f"round {round_ + 1}: raw {args.jobs / raw[-1][1]:.0f} jobs/s, "
                  f"llmos {args.jobs / ours[-1][1]:.0f} jobs/s, "
                  f"llmos bulk {args.jobs / bulk[-1][1]:.0f} jobs/s")
        parts = breakdown(args.redis, fresh_database(args.database, tmp), tmp)
    n = args.jobs
    raw_sub, raw_total = min(raw, key=lambda t: t[1])
    print(f"\n{n} jobs, threads pool x{args.concurrency}, {args.database}, best of {args.rounds}")
    print(f"{'':22}{'submit jobs/s':>14}{'end-to-end jobs/s':>19}{'ratio to raw':>14}")
    print(f"{'raw celery':22}{n / raw_sub:14.0f}{n / raw_total:19.0f}{1:14.2f}")
    for label, runs in (("llmos, one per call", ours), ("llmos, generate_many", bulk)):
        sub, total = min(runs, key=lambda t: t[1])
        print(f"{label:22}{n / sub:14.0f}{n / total:19.0f}{raw_total / total:14.2f}")
    print("\nwhere the time goes, per job, each step alone in one thread (ms):")
    for label, ms in parts.items():
        print(f"  {label:58}{ms:6.2f}")


if __name__ == "__main__":
    main()
