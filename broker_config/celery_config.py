"""Celery settings. Transport defaults are never trusted: each one that matters is set."""

from __future__ import annotations

from typing import Any

from broker_config.priority import MAX_PRIORITY, Transport, broker_priority, transport_of
from schemas.common import DEFAULT_PRIORITY

# A job may run at most this long; the broker's visibility timeout stays well above
# it so that a long job is never redelivered while it still runs. A worker that
# vanishes whole is handled by heartbeats and the reaper, not by this timeout.
JOB_TIME_LIMIT_S = 600
VISIBILITY_TIMEOUT_S = 3 * JOB_TIME_LIMIT_S
TIME_LIMIT_GRACE_S = 15


def celery_config(*, broker_url: str, time_limit_s: int = JOB_TIME_LIMIT_S,
                  sentinel_master: str | None = None) -> dict[str, Any]:
    """The configuration of the llmos Celery app. ``sentinel_master``: the name of the
    Redis master that the Sentinels of a ``sentinel://`` URL watch."""
    transport = transport_of(broker_url)
    transport_options = _transport_options(transport, time_limit_s)
    if broker_url.lower().startswith("sentinel://"):
        if not sentinel_master:
            raise ValueError("a sentinel:// broker URL needs the master's name: set "
                             "LLMOS_BROKER_SENTINEL_MASTER")
        transport_options["master_name"] = sentinel_master
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
        # Explicit: an unset priority would be the highest on Redis and the lowest on
        # AMQP; llmos's default, translated for the transport, on both.
        "task_default_priority": broker_priority(DEFAULT_PRIORITY, transport),
        # Every queue Celery declares carries `x-max-priority` (RabbitMQ: a classic
        # priority queue; docs/brokers.md says why not a quorum queue).
        "task_queue_max_priority": MAX_PRIORITY,
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


def _transport_options(transport: Transport, time_limit_s: int) -> dict[str, Any]:
    if transport is Transport.amqp:
        # A publish returns once RabbitMQ has taken the message (publisher confirms):
        # a job's message is not lost between its commit and a broker that dropped it
        # unseen. Unacknowledged deliveries go back to their queue when the consumer's
        # connection closes, so there is no visibility timeout to tune; RabbitMQ's own
        # `consumer_timeout` (30 min by default) must stay above the job time limit.
        return {"confirm_publish": True}
    return {
        # Redis: one list per priority level, polled highest first; 0 is highest.
        "priority_steps": list(range(MAX_PRIORITY + 1)),
        "sep": ":",
        "queue_order_strategy": "priority",
        "visibility_timeout": max(VISIBILITY_TIMEOUT_S, 3 * time_limit_s),
    }
