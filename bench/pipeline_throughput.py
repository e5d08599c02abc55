"""End-to-end jobs per second through llmos (no-op engine) against bare Celery no-op
tasks on the same Redis with the same Celery settings, measured side by side.

    python bench/pipeline_throughput.py [--jobs 1000] [--concurrency 8] [--database sqlite|postgres]
                                        [--dispatch on|off|both]

With the fair-share dispatcher on (the default of llmos), a control process runs beside
the worker and releases the jobs held in the database; ``both`` measures llmos with it
off and on, side by side in each round.

Prints the ratio llmos / raw and where the difference goes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from cryptography.fernet import Fernet
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
              bulk: bool = False, dispatch: str = "on") -> tuple[float, float]:
    settings = Settings(broker_url=broker, database_url=database, data_dir=tmp,
                        dispatch=dispatch)  # type: ignore[arg-type]
    client = LlmosClient(settings=settings)
    client.register_model("bench", tmp / "bench", engine="noop")
    env = {**os.environ, "LLMOS_BROKER_URL": broker, "LLMOS_DATABASE_URL": database,
           "LLMOS_DATA_DIR": str(tmp), "LLMOS_DISPATCH": dispatch}
    worker = start([sys.executable, "-m", "llmos_jobs.cli.main", "worker", "--name",
                    "bench@bench", "--model", "bench", "--concurrency", str(concurrency),
                    "--loglevel", "warning"], env, tmp / "llmos.log")
    control = (start([sys.executable, "-m", "llmos_jobs.cli.main", "control", "--name",
                      "control@bench", "--no-beat", "--loglevel", "warning"], env,
                     tmp / "control.log") if dispatch == "on" else None)
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
    if control is not None:
        stop(control)
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


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
CREATED: list[str] = []  # PostgreSQL databases this run made, dropped at its end


def fresh_database(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:6]}.db'}"
    name = f"llmos_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    CREATED.append(name)
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@contextmanager
def dropping_databases() -> Iterator[None]:
    """The PostgreSQL databases made inside are dropped when it ends."""
    try:
        yield
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for name in CREATED:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--dispatch", choices=["on", "off", "both"], default="both")
    args = parser.parse_args()
    if args.database == "postgres":
        # Outside the embedded default every process needs the same key ring.
        os.environ.setdefault("LLMOS_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    redis.Redis.from_url(args.redis).flushdb()
    modes = ["off", "on"] if args.dispatch == "both" else [args.dispatch]
    raw: list[tuple[float, float]] = []
    ours: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    bulk: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as name, dropping_databases():
        use_data_dir(name)
        tmp = Path(name)
        for round_ in range(args.rounds):
            raw.append(run_raw(args.redis, args.jobs, args.concurrency, tmp))
            line = f"round {round_ + 1}: raw {args.jobs / raw[-1][1]:.0f} jobs/s"
            for mode in modes:
                ours[mode].append(run_llmos(args.redis, fresh_database(args.database, tmp),
                                            args.jobs, args.concurrency, tmp, dispatch=mode))
                bulk[mode].append(run_llmos(args.redis, fresh_database(args.database, tmp),
                                            args.jobs, args.concurrency, tmp, bulk=True,
                                            dispatch=mode))
                line += (f", dispatch {mode}: llmos {args.jobs / ours[mode][-1][1]:.0f} jobs/s, "
                         f"bulk {args.jobs / bulk[mode][-1][1]:.0f} jobs/s")
            print(line)
        parts = breakdown(args.redis, fresh_database(args.database, tmp), tmp)
    n = args.jobs
    raw_sub, raw_total = min(raw, key=lambda t: t[1])
    print(f"\n{n} jobs, threads pool x{args.concurrency}, {args.database}, best of {args.rounds}")
    print(f"{'':36}{'submit jobs/s':>14}{'end-to-end jobs/s':>19}{'ratio to raw':>14}")
    print(f"{'raw celery':36}{n / raw_sub:14.0f}{n / raw_total:19.0f}{1:14.2f}")
    for mode in modes:
        for label, runs in ((f"llmos, one per call, dispatch {mode}", ours[mode]),
                            (f"llmos, generate_many, dispatch {mode}", bulk[mode])):
            sub, total = min(runs, key=lambda t: t[1])
            print(f"{label:36}{n / sub:14.0f}{n / total:19.0f}{raw_total / total:14.2f}")
    print("\nwhere the time goes, per job, each step alone in one thread (ms):")
    for label, ms in parts.items():
        print(f"  {label:58}{ms:6.2f}")


if __name__ == "__main__":
    main()
