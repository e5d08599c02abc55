"""Fair share measured: how long a small tenant waits behind a big one's backlog, and
the service two backlogged tenants of weights 2:1 receive. No-op engine with a delay
per request, one worker, a control process; the dispatcher on and off side by side.

    python bench/fair_share.py [--backlog 1000] [--small 10] [--delay-ms 20] [--concurrency 4]

Prints, per mode: the small tenant's median wait (submission to start) alone, then
behind the backlog, and their ratio; and the measured share at weights 2:1 (tokens
served, read from the job rows while both tenants were backlogged)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import select  # noqa: E402

from bench.models import use_data_dir  # noqa: E402
from llmos_jobs.client import LlmosClient  # noqa: E402
from llmos_jobs.db.session import session_scope  # noqa: E402
from llmos_jobs.db.tables import Job, JobPublic  # noqa: E402
from llmos_jobs.db.tenant_policy import put_policy  # noqa: E402
from llmos_jobs.db.tenant_tables import TenantPolicy  # noqa: E402
from llmos_jobs.settings import Settings  # noqa: E402
from tests.support.services import private_redis  # noqa: E402


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "llmos_jobs.cli.main", *args], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def requests(model: str, n: int, tag: str) -> list[dict[str, object]]:
    return [{"model": model, "prompt": f"{tag} request number {i}", "max_tokens": 4}
            for i in range(n)]


def waits(jobs: list[JobPublic], client: LlmosClient) -> list[float]:
    done = client.wait([j.id for j in jobs], timeout_s=1800, poll_s=0.2)
    return [(j.started_at - j.created_at).total_seconds() for j in done  # type: ignore[operator]
            if j.started_at is not None]


def measure(dispatch: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    with private_redis() as redis_url:
        database = f"sqlite:///{tmp / f'fair-{dispatch}.db'}"
        settings = Settings(broker_url=f"{redis_url}/0", database_url=database, data_dir=tmp,
                            dispatch=dispatch)  # type: ignore[arg-type]
        env = {**os.environ, "LLMOS_BROKER_URL": f"{redis_url}/0",
               "LLMOS_DATABASE_URL": database, "LLMOS_DATA_DIR": str(tmp),
               "LLMOS_DISPATCH": dispatch, "LLMOS_NOOP_DELAY_MS": str(args.delay_ms)}
        model = f"fair-{uuid.uuid4().hex[:6]}"
        LlmosClient(settings=settings).register_model(model, tmp / model, engine="noop")
        processes = [start(["worker", "--name", f"{model}@bench", "--model", model,
                            "--concurrency", str(args.concurrency), "--loglevel", "warning"],
                           env, tmp / "worker.log"),
                     start(["control", "--name", f"control-{dispatch}@bench", "--loglevel",
                            "warning"], env, tmp / "control.log")]
        try:
            small = LlmosClient(tenant="small-alone", settings=settings)
            while not any(w.name == f"{model}@bench" for w in small.workers()):
                time.sleep(0.2)
            alone = waits(small.generate_many(requests(model, args.small, "s"),
                                              priority="default").jobs, small)
            big = LlmosClient(tenant="big", settings=settings)
            small = LlmosClient(tenant="small", settings=settings)
            backlog = big.generate_many(requests(model, args.backlog, "b"), priority="default")
            behind = waits(small.generate_many(requests(model, args.small, "s"),
                                               priority="default").jobs, small)
            big.wait([j.id for j in backlog.jobs], timeout_s=1800, poll_s=0.5)
            share = weighted_share(settings, model, args.share_jobs)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    alone_s, behind_s = statistics.median(alone), statistics.median(behind)
    return {"alone": alone_s, "behind": behind_s, "ratio": behind_s / alone_s, "share": share}


def weighted_share(settings: Settings, model: str, n: int) -> float:
    heavy = LlmosClient(tenant="heavy", settings=settings)
    light = LlmosClient(tenant="light", settings=settings)
    with session_scope(heavy.database) as session:
        put_policy(session=session, policy=TenantPolicy(tenant="heavy", weight=2.0))
    a = heavy.generate_many(requests(model, n, "h"), priority="default")
    b = light.generate_many(requests(model, n, "l"), priority="default")
    heavy.wait([j.id for j in a.jobs], timeout_s=1800, poll_s=0.5)
    light.wait([j.id for j in b.jobs], timeout_s=1800, poll_s=0.5)
    with session_scope(heavy.database) as session:
        rows = list(session.exec(select(Job).where(Job.model == model,
                                                   Job.tenant.in_(["heavy", "light"]))))  # type: ignore[attr-defined]
    rows.sort(key=lambda j: (j.finished_at, j.started_at))
    # While both were backlogged: past the first releases, before the heavy tenant's
    # backlog (2/3 of the service) runs out.
    window = rows[n // 10: n // 10 + n]
    served = {"heavy": 0, "light": 0}
    for job in window:
        served[job.tenant] += (job.prompt_tokens or 0) + 2 * (job.completion_tokens or 0)
    return served["heavy"] / max(served["light"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--share-jobs", type=int, default=300)
    parser.add_argument("--delay-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    results = {}
    with tempfile.TemporaryDirectory() as name:
        use_data_dir(name)
        for dispatch in ("on", "off"):
            results[dispatch] = measure(dispatch, args, Path(name))
    print(f"{args.backlog} jobs of one tenant, then {args.small} of another, same priority; "
          f"no-op engine {args.delay_ms} ms, {args.concurrency} slots")
    print(f"{'dispatcher':12}{'small alone':>14}{'small behind':>14}{'ratio':>8}"
          f"{'share at 2:1':>14}")
    for dispatch, r in results.items():
        print(f"{dispatch:12}{r['alone']:13.3f}s{r['behind']:13.3f}s{r['ratio']:8.1f}"
              f"{r['share']:14.2f}")


if __name__ == "__main__":
    main()
