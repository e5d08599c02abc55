"""Where a job's live events sit in Redis: one stream per job, every key named here.

A worker appends the job's status changes and its text as it is decoded; readers (the
HTTP API's server-sent events, ``llmos submit --stream``) read the stream from its
first entry, so a reader that starts late, or after the job ended, still sees it all.
The database stays the truth: a stream is a live copy of the job's progress, bounded
in length and dropped a while after the job ends."""

from __future__ import annotations

STREAM_PREFIX = "llmos:events:"
# XADD ... MAXLEN ~ this: a runaway job cannot grow its stream without bound. Deltas are
# coalesced per decode step, so a job of max_tokens up to this keeps every entry.
STREAM_MAXLEN = 20_000
# How long a finished job's stream stays readable (a late reader replays it); after
# that the events route answers from the database alone.
STREAM_KEEP_AFTER_END_S = 3600


def job_events_key(job_id: str) -> str:
    """The stream of one job's events."""
    return f"{STREAM_PREFIX}{job_id}"


def stream_redis_url(broker_url: str) -> str | None:
    """The redis-py URL of the Redis behind a Celery broker URL, or None when the broker
    is not Redis (RabbitMQ, Sentinel: set LLMOS_STREAM_URL)."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return broker_url
    return None


# A list that holds at most one entry: pushed when a job ends or a submission is held,
# popped (BLPOP) by the fair-share dispatcher, which then runs a pass at once instead of
# at its next poll (llmos_jobs.dispatch_bell).
DISPATCH_WAKE_KEY = "llmos:dispatch:wake"
