"""How the fair-share dispatcher is woken: a job ended (a slot freed) or a submission was
held. A Redis list of at most one entry (``broker_config.streams.DISPATCH_WAKE_KEY``):
ringing pushes, the dispatcher's loop pops with a blocking read, so it reacts within
milliseconds instead of at its poll. The bell is only a hint: a ring that is lost (Redis
unreachable) costs one poll interval, never a job."""

from __future__ import annotations

import logging
import time

import redis

from broker_config.streams import DISPATCH_WAKE_KEY

log = logging.getLogger(__name__)


class DispatchBell:
    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url)

    def ring(self) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.lpush(DISPATCH_WAKE_KEY, 1)
            pipe.ltrim(DISPATCH_WAKE_KEY, 0, 0)
            pipe.execute()
        except redis.RedisError as exc:  # the dispatcher's poll covers it
            log.debug("dispatch bell not rung: %s", exc)

    def wait(self, timeout_s: float) -> bool:
        """Whether it was rung within ``timeout_s`` (False also when Redis is out of
        reach: the caller's poll goes on)."""
        try:
            return self._redis.blpop([DISPATCH_WAKE_KEY], timeout=timeout_s) is not None
        except redis.RedisError as exc:
            log.debug("dispatch bell unreadable: %s", exc)
            time.sleep(timeout_s)  # a poll, not a spin, while Redis is away
            return False

    def close(self) -> None:
        self._redis.close()
