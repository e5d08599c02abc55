"""The baseline: a bare Celery no-op task with the same settings as llmos-jobs.

    python bench/raw_celery.py BROKER_URL CONCURRENCY   (runs a worker)
"""

from __future__ import annotations

import sys

import redis
from celery import Celery

from broker_config import celery_config

COUNTER = "bench:raw:done"


def make_app(broker_url: str) -> Celery:
    app = Celery("bench-raw", set_as_current=False)
    app.conf.update(celery_config(broker_url=broker_url))
    client = redis.Redis.from_url(broker_url)

    @app.task(name="bench.noop", acks_late=True)  # type: ignore[untyped-decorator]
    def noop(job_id: str) -> None:
        client.incr(COUNTER)

    return app


if __name__ == "__main__":
    broker, concurrency = sys.argv[1], sys.argv[2]
    make_app(broker).worker_main([
        "worker", "--hostname", "raw@bench", "--queues", "lang.raw", "--pool", "threads",
        "--concurrency", concurrency, "--loglevel", "warning", "--task-events",
        "--without-gossip", "--without-mingle",
    ])
