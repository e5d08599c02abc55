"""The Celery app, built on first use from the settings (never at import)."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from broker_config import celery_config
from llmos_jobs.settings import get_settings


def create_app(broker_url: str, *, with_tasks: bool = False) -> Celery:
    app = Celery("llmos", set_as_current=False)
    app.conf.update(
        celery_config(broker_url=broker_url, time_limit_s=get_settings().job_time_limit_s,
                      sentinel_master=get_settings().broker_sentinel_master)
    )
    if with_tasks:
        from workers.tasks import register_tasks

        register_tasks(app)
    return app


@lru_cache(maxsize=4)
def get_app(broker_url: str | None = None) -> Celery:
    """The producer-side app for ``broker_url`` (default: the settings)."""
    return create_app(broker_url or get_settings().resolved_broker_url())
