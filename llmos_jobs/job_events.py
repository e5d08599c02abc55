"""Reading and writing jobs' live events in Redis streams (key names and bounds:
``broker_config.streams``).

A worker appends; readers follow a job's stream from its first entry. Neither is
the truth: a reader that sees no event for a while asks the database whether the job
ended (cancelled while queued, failed by the reaper, its stream expired...), so a
stream that misses its final event never leaves a reader waiting."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import anyio
import redis
import redis.asyncio as aioredis

from broker_config.streams import (
    STREAM_KEEP_AFTER_END_S,
    STREAM_MAXLEN,
    job_events_key,
    stream_redis_url,
)
from llmos_jobs.errors import StreamingUnavailable
from llmos_jobs.settings import Settings
from schemas.common import JobStatus
from schemas.events import JobEvent

# How long one read waits for the next event before the database is asked instead.
READ_BLOCK_MS = 1000
_FIELD = "event"


def events_url(settings: Settings) -> str | None:
    """LLMOS_STREAM_URL, else the broker's Redis; None when neither is a Redis."""
    if settings.stream_url:
        return stream_redis_url(settings.stream_url) or settings.stream_url
    return stream_redis_url(settings.resolved_broker_url())


def require_events_url(settings: Settings) -> str:
    url = events_url(settings)
    if url is None:
        raise StreamingUnavailable(
            "streaming needs a Redis for live events: the broker is not Redis, so set "
            "LLMOS_STREAM_URL=redis://HOST:6379/0")
    return url


class JobEventWriter:
    """Appends events to jobs' streams (one connection pool; thread-safe)."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url)

    def append(self, job_id: str, events: list[JobEvent]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        key = job_events_key(job_id)
        for event in events:
            pipe.xadd(key, {_FIELD: event.model_dump_json(exclude_none=True)},
                      maxlen=STREAM_MAXLEN, approximate=True)
            if event.is_final:  # the job ended: its stream stays a while for late readers
                pipe.expire(key, STREAM_KEEP_AFTER_END_S)
        pipe.execute()

    def close(self) -> None:
        self._redis.close()


def _decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, JobEvent]]:
    return [(entry_id.decode(), JobEvent.model_validate_json(fields[_FIELD.encode()]))
            for entry_id, fields in entries]


@dataclass
class _Follow:
    """What both readers track: where they are, and whether the text was replayed."""

    after: str = "0"
    deltas: bool = False

    def take(self, batch: list[tuple[str, JobEvent]]) -> list[JobEvent]:
        out = []
        for entry_id, event in batch:
            self.after = entry_id
            self.deltas = self.deltas or event.type == "delta"
            out.append(event)
            if event.is_final:
                break
        return out

    def ending(self, status: JobStatus, text: str | None) -> list[JobEvent]:
        """The events of a job the database says ended, past what the stream gave: its
        text when the stream had none (it expired), then its final status."""
        events = [JobEvent.delta(text)] if text and not self.deltas else []
        return [*events, JobEvent.of_status(status)]


# The job's final status and, when it succeeded with text, that text; None: not final.
JobEnding = tuple[JobStatus, str | None] | None


def follow(url: str, job_id: str, final: Callable[[], JobEnding]) -> Iterator[JobEvent]:
    """A job's events from the first, until its final status (for the CLI)."""
    client = redis.Redis.from_url(url)
    key, state = job_events_key(job_id), _Follow()
    try:
        while True:
            reply = client.xread({key: state.after}, count=512, block=READ_BLOCK_MS)
            events = state.take(_decode(reply[0][1])) if reply else []
            yield from events
            if events and events[-1].is_final:
                return
            if not reply and (ended := final()) is not None:
                # Whatever landed between the read and the question, then the end.
                rest = client.xread({key: state.after}, count=STREAM_MAXLEN)
                events = state.take(_decode(rest[0][1])) if rest else []
                yield from events
                if not (events and events[-1].is_final):
                    yield from state.ending(*ended)
                return
    finally:
        client.close()


async def follow_async(url: str, job_id: str, final: Callable[[], Awaitable[JobEnding]],
                       *, until: float | None = None) -> AsyncIterator[JobEvent]:
    """``follow`` for the API: waiting costs a coroutine, not a thread. ``until``
    (time.monotonic()): stop there, final status or not."""
    client = aioredis.Redis.from_url(url)
    key, state = job_events_key(job_id), _Follow()
    try:
        while until is None or (left := until - time.monotonic()) > 0:
            block = READ_BLOCK_MS if until is None else max(1, min(READ_BLOCK_MS,
                                                                   int(left * 1000)))
            reply = await client.xread({key: state.after}, count=512, block=block)
            events = state.take(_decode(reply[0][1])) if reply else []
            for event in events:
                yield event
            if events and events[-1].is_final:
                return
            if not reply and (ended := await final()) is not None:
                rest = await client.xread({key: state.after}, count=STREAM_MAXLEN)
                events = state.take(_decode(rest[0][1])) if rest else []
                for event in events:
                    yield event
                if not (events and events[-1].is_final):
                    for event in state.ending(*ended):
                        yield event
                return
    finally:
        # Shielded: a reader that went away cancels this generator, and the connection
        # must still go back. aclose: redis 5's name; types-redis predates it.
        with anyio.CancelScope(shield=True):
            await client.aclose()  # type: ignore[attr-defined]
