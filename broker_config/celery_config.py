"""Celery settings. Transport defaults are never trusted: each one that matters is set."""

from __future__ import annotations

from typing import Any

from schemas.common import DEFAULT_PRIORITY

# A job may run at most this long; the broker's visibility timeout stays well above
# it so that a long job is never redelivered while it still runs. A worker that
# vanishes whole is handled by heartbeats and the reaper, not by this timeout.
JOB_TIME_LIMIT_S = 600
VISIBILITY_TIMEOUT_S = 3 * JOB_TIME_LIMIT_S
TIME_LIMIT_GRACE_S = 15


def celery_config(*, broker_url: str, time_limit_s: int = JOB_TIME_LIMIT_S) -> dict[str, Any]:
    """The configuration of the llmos Celery app."""
    transport_options: dict[str, Any] = {
        # Redis: one list per priority level, polled highest first; 0 is highest.
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
        "visibility_timeout": max(VISIBILITY_TIMEOUT_S, 3 * time_limit_s),
    }
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # Results live in the database, not in a Celery result backend.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Explicit: an unset priority is 0, the highest, on Redis.
        "task_default_priority": DEFAULT_PRIORITY,
        "task_queue_max_priority": 9,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Backstops only: the engine stops a job at its own deadline (at most
        # time_limit_s), under every pool, and the job fails with reason "timeout".
        # Celery's limits act under prefork alone, and only if that failed.
        "task_soft_time_limit": time_limit_s + TIME_LIMIT_GRACE_S,
        "task_time_limit": time_limit_s + 2 * TIME_LIMIT_GRACE_S,
        # Events for Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_create_missing_queues": True,
        "task_default_queue": "control",
    }
