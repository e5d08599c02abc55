"""llmos priorities on the wire. llmos's scale is 0 (highest) to 9 (lowest) everywhere a
user sees it; each transport orders message priorities its own way:

    Redis (kombu's transport)  one list per priority step, polled lowest number first
    AMQP (RabbitMQ)            `x-max-priority` queues deliver the highest number first

so the number put on a message is translated here, once, for every publish path
(llmos_jobs.broker) and for Celery's default priority (broker_config.celery_config)."""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

MAX_PRIORITY = 9  # llmos's lowest priority; also the queues' `x-max-priority`


class Transport(StrEnum):
    redis = "redis"
    amqp = "amqp"


_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
_REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+socket", "sentinel"})


def transport_of(broker_url: str) -> Transport:
    """Which way the broker at ``broker_url`` orders priorities."""
    scheme = urlsplit(broker_url).scheme.lower()
    if scheme in _AMQP_SCHEMES:
        return Transport.amqp
    if scheme in _REDIS_SCHEMES:
        return Transport.redis
    raise ValueError(f"unsupported broker URL scheme {scheme!r}: use redis:// or amqp://")


def broker_priority(priority: int, transport: Transport) -> int:
    """The message priority that makes ``transport`` serve llmos ``priority`` in llmos's
    order (0 first)."""
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority {priority} is outside 0-{MAX_PRIORITY}")
    if transport is Transport.amqp:
        return MAX_PRIORITY - priority
    return priority
