"""The Celery configuration and queue topology of llmos-jobs, in one place."""

from broker_config.celery_config import celery_config
from broker_config.priority import MAX_PRIORITY, Transport, broker_priority, transport_of
from broker_config.queues import (
    CONTROL_QUEUE,
    JOB_TASKS,
    TASK_FAMILIES,
    WEBHOOKS_QUEUE,
    TaskName,
    is_version_queue,
    language_queue,
    queue_for,
    version_queue,
    worker_queue,
)

__all__ = [
    "CONTROL_QUEUE",
    "JOB_TASKS",
    "MAX_PRIORITY",
    "TASK_FAMILIES",
    "WEBHOOKS_QUEUE",
    "TaskName",
    "Transport",
    "broker_priority",
    "celery_config",
    "is_version_queue",
    "language_queue",
    "queue_for",
    "transport_of",
    "version_queue",
    "worker_queue",
]
