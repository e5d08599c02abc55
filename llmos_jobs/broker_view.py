"""Which messages the broker holds: the reconciler's view of the transport.

With Redis (kombu's transport), a message is either waiting in one of its queue's
lists (one per priority step, ``<queue>`` and ``<queue>:<n>``) or delivered and not yet
acknowledged (the ``unacked`` hash, which also holds the countdown retries a worker
keeps until they are due). A message in neither is lost, or in the instant between
the two; either way a new message under a new id is safe, because a delivery whose
id is not the job's current one is dropped (llmos_jobs.db.jobs.claim_job).

A message stays in the ``unacked`` hash while the consumer it was delivered to lives;
when that consumer dies (a worker killed whole), kombu gives the message back only after
the visibility timeout. ``held_messages`` therefore also says when each was delivered
(kombu's ``unacked_index``), so that the reconciler can tell one that a live worker is
about to run from one that a dead worker took with it.

With AMQP (RabbitMQ) the ids of waiting messages cannot be read without taking the
messages; what can be read cheaply is a queue's depth (a passive ``queue.declare``
answers how many messages wait, ready to deliver). ``queue_depths`` answers that, and
the reconciler compares it with how many jobs the database holds queued there
(docs/reliability.md). Other transports answer None to both and their work is left
alone."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import NotFound
from celery import Celery

UNACKED_KEY = "unacked"  # kombu.transport.redis.Channel.unacked_key
UNACKED_INDEX_KEY = "unacked_index"  # delivery tag → time delivered (seconds since epoch)
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


@dataclass(frozen=True)
class HeldMessages:
    waiting: set[str]  # ids of messages in a queue
    delivered: dict[str, float]  # id → when delivered, of messages not yet acknowledged

    def ids(self) -> set[str]:
        return self.waiting | set(self.delivered)


def message_ids(app: Celery, queues: Iterable[str]) -> set[str] | None:
    """The ids of every message waiting in ``queues`` or delivered and unacknowledged;
    None when the transport is not Redis."""
    held = held_messages(app, queues)
    return None if held is None else held.ids()


def held_messages(app: Celery, queues: Iterable[str]) -> HeldMessages | None:
    """The messages waiting in ``queues``, and every message delivered and not yet
    acknowledged with the time of its delivery; None when the transport is not Redis."""
    with app.connection_for_read() as connection:
        if connection.transport.driver_type != "redis":
            return None
        channel = connection.default_channel
        client = channel.client
        keys = [channel._q_for_pri(queue, step) for queue in queues
                for step in channel.priority_steps]
        waiting: set[str] = set()
        for key in dict.fromkeys(keys):
            length = client.llen(key)
            for start in range(0, length, _CHUNK):
                waiting.update(i for raw in client.lrange(key, start, start + _CHUNK - 1)
                               if (i := _message_id(raw)) is not None)
        # The index first: a message acknowledged in between is then absent from the
        # hash, never present without a time.
        delivered_at = {_text(tag): float(score) for tag, score in
                        client.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True)}
        delivered: dict[str, float] = {}
        for tag, raw in client.hscan_iter(UNACKED_KEY, count=_CHUNK):
            if (i := _message_id(raw)) is not None:
                # No time (delivered after the index was read): as new as can be.
                delivered[i] = delivered_at.get(_text(tag), float("inf"))
        return HeldMessages(waiting=waiting, delivered=delivered)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_depths(app: Celery, queues: Iterable[str]) -> dict[str, int] | None:
    """How many messages wait, ready, in each of ``queues`` (delivered ones not counted;
    a queue the broker does not have holds none); None when the transport is not AMQP."""
    with app.connection_for_read() as connection:
        if connection.transport.driver_type != "amqp":
            return None
        depths: dict[str, int] = {}
        channel = connection.channel()
        try:
            for queue in dict.fromkeys(queues):
                try:
                    depths[queue] = int(channel.queue_declare(queue, passive=True)
                                        .message_count)
                except NotFound:  # the broker closed the channel with its answer
                    depths[queue] = 0
                    channel = connection.channel()
        finally:
            channel.close()
        return depths
