"""Which messages the broker holds: the reconciler's view of the transport.

With Redis (kombu's transport), a message is either waiting in one of its queue's
lists (one per priority step, ``<queue>`` and ``<queue>:<n>``) or delivered and not yet
acknowledged (the ``unacked`` hash, which also holds the countdown retries a worker
keeps until they are due). A message in neither is lost, or in the instant between
the two; either way a new message under a new id is safe, because a delivery whose
id is not the job's current one is dropped (llmos_jobs.db.jobs.claim_job).

Other transports cannot be read like this; ``message_ids`` answers None for them and
the reconciler leaves their work alone."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from celery import Celery

UNACKED_KEY = "unacked"  # kombu.transport.redis.Channel.unacked_key
_CHUNK = 1000


def _message_id(raw: Any) -> str | None:
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(message, list) and message:  # unacked: [message, exchange, routing key]
        message = message[0]
    if not isinstance(message, dict):
        return None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    task_id = headers.get("id") or properties.get("correlation_id")
    return str(task_id) if task_id else None


def message_ids(app: Celery, queues: Iterable[str]) -> set[str] | None:
    """The ids of every message waiting in ``queues`` or delivered and unacknowledged;
    None when the transport is not Redis."""
    with app.connection_for_read() as connection:
        if connection.transport.driver_type != "redis":
            return None
        channel = connection.default_channel
        client = channel.client
        keys = [channel._q_for_pri(queue, step) for queue in queues
                for step in channel.priority_steps]
        ids: set[str] = set()
        for key in dict.fromkeys(keys):
            length = client.llen(key)
            for start in range(0, length, _CHUNK):
                ids.update(i for raw in client.lrange(key, start, start + _CHUNK - 1)
                           if (i := _message_id(raw)) is not None)
        for _, raw in client.hscan_iter(UNACKED_KEY, count=_CHUNK):
            if (i := _message_id(raw)) is not None:
                ids.add(i)
        return ids
