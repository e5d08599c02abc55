"""Quotas at submission: a tenant's policy (llmos_jobs.db.tenant_tables) checked before
its jobs are committed, so that a refusal leaves nothing behind (docs/quotas.md).

    max_priority       a job asking for a higher priority (a smaller number) is refused
    max_queued         the tenant's queued and waiting jobs outside batches, plus the
                       new ones, may not exceed it
    tokens_per_minute  each job is charged its cost in a moving window of one minute
                       per tenant; a job that does not fit is refused

A job's cost is an estimate made before any tokenizer runs: the UTF-8 bytes of its
request divided by four (about four bytes a token in English text; more tokens in
other scripts, so this undercharges them) plus its ``max_tokens``.

Batches are accepted whole and paced, not refused: their jobs skip these checks (as do
operators' model operations), and the dispatcher asks ``TokenPacer.admit`` before it releases
each one, which charges the same window. ``max_running`` is the dispatcher's to enforce.

The window lives in the broker's Redis (keys under LLMOS_QUOTA_KEY_PREFIX), shared by
every API process and client; with a RabbitMQ broker it lives in each process's memory,
so each process grants the whole quota on its own."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from sqlmodel import Session

from broker_config.streams import stream_redis_url
from llmos_jobs import metrics
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import tenant_policy as policy_rows
from llmos_jobs.db.session import Database
from llmos_jobs.db.tenant_tables import TenantPolicy
from llmos_jobs.errors import InvalidRequest, QuotaExceeded
from llmos_jobs.settings import Settings
from llmos_jobs.ttl_cache import TTLCache
from schemas.common import PRIORITY_CLASSES, JobKind

MAX_PRIORITY = "max_priority"
MAX_QUEUED = "max_queued"
TOKENS_PER_MINUTE = "tokens_per_minute"
BYTES_PER_TOKEN = 4
# Policies are read on every submission and changed rarely; another process sees an
# operator's change within this many seconds (this one at once).
POLICY_CACHE_S = 2.0


def job_cost(payload: dict[str, object]) -> int:
    """The tokens a job is charged: its request's bytes / 4, plus its max_tokens."""
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    max_tokens = payload.get("max_tokens")
    return math.ceil(size / BYTES_PER_TOKEN) + (max_tokens if isinstance(max_tokens, int)
                                                 else 0)


def _priority_name(priority: int) -> str:
    names = [name for name, number in PRIORITY_CLASSES.items() if number == priority]
    return f"{priority} ({names[0]})" if names else str(priority)


class TokenWindow:
    """The tokens-per-minute windows of every tenant: ``limits``' moving window, in the
    broker's Redis when the broker is Redis, else in this process's memory. Connects on
    first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limiter: MovingWindowRateLimiter | None = None

    def _storage(self) -> Storage:
        url = stream_redis_url(self.settings.resolved_broker_url())
        if url is None:
            return MemoryStorage()
        if url.startswith("unix://"):  # the embedded broker's socket
            url = "redis+unix://" + url.removeprefix("unix://")
        return RedisStorage(url, key_prefix=self.settings.quota_key_prefix)

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            self._limiter = MovingWindowRateLimiter(self._storage())
        return self._limiter

    def charge(self, tenant: str, tokens: int, per_minute: int) -> float | None:
        """Charge ``tokens`` to the tenant's window: None when they fit, else the
        seconds until the window has room for them (when its oldest charge leaves; it
        may take more than one to leave)."""
        item = RateLimitItemPerMinute(per_minute)
        if self.limiter.hit(item, tenant, cost=tokens):
            return None
        stats = self.limiter.get_window_stats(item, tenant)
        return max(1.0, math.ceil(stats.reset_time - time.time()))

    def clear(self, tenant: str, per_minute: int) -> None:
        """Forget the tenant's charges (its limit changed, or a test starts afresh)."""
        self.limiter.clear(RateLimitItemPerMinute(per_minute), tenant)


@dataclass(frozen=True)
class Demand:
    """What one submission asks of one tenant."""

    jobs: int
    tokens: int
    highest_priority: int  # the smallest number asked for


class Quotas:
    """Checks a submission against its tenants' policies before anything is committed."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.window = TokenWindow(settings)
        self._policies: TTLCache[TenantPolicy] = TTLCache(seconds=POLICY_CACHE_S)

    def policy(self, tenant: str) -> TenantPolicy:
        policy = self._policies.get(tenant)
        if policy is None:
            with self.database.session() as session:
                row = policy_rows.policy_or_default(session=session, tenant=tenant)
                # A copy outlives the session (its commit expires the row's attributes).
                policy = TenantPolicy(**row.model_dump())
            self._policies.put(tenant, policy)
        return policy

    def allowed_priority(self, tenant: str, wanted: int) -> int:
        """``wanted``, or the tenant's max_priority where that allows no higher: the
        priority of requests that do not choose one (OpenAI's routes run at interactive
        priority), which are lowered rather than refused."""
        ceiling = self.policy(tenant).max_priority
        return wanted if ceiling is None else max(wanted, ceiling)

    def changed(self, policy: TenantPolicy) -> None:
        """An operator set (or removed: the default) the tenant's policy: this process
        uses it from now on."""
        self._policies.put(policy.tenant, policy)

    def admit(self, jobs_in: Iterable[job_rows.JobCreate], *, session: Session) -> None:
        """QuotaExceeded when a tenant's jobs here exceed one of its quotas (checked in
        the order of the docstring above; the window is charged only when the others
        pass); jobs of a batch are not checked. ``session``: the transaction that then
        inserts the jobs; max_queued is counted in it, under a lock it keeps until it
        ends (``unstarted_jobs_held``), so concurrent submissions never overshoot."""
        demands: dict[str, Demand] = {}
        for job in jobs_in:
            # An operator's model operation is no tenant's work.
            if job.batch_id is not None or job.kind == JobKind.model_op:
                continue
            seen = demands.get(job.tenant, Demand(0, 0, job.priority))
            demands[job.tenant] = Demand(seen.jobs + 1, seen.tokens + job_cost(job.payload),
                                         min(seen.highest_priority, job.priority))
        for tenant, demand in sorted(demands.items()):  # one lock order: no deadlock
            try:
                self._check(session, tenant, self.policy(tenant), demand)
            except QuotaExceeded as refusal:
                metrics.QUOTA_REFUSALS.labels(tenant, refusal.limit).inc()
                raise

    def _check(self, session: Session, tenant: str, policy: TenantPolicy, demand: Demand
               ) -> None:
        if policy.max_priority is not None and demand.highest_priority < policy.max_priority:
            raise QuotaExceeded(
                f"priority {_priority_name(demand.highest_priority)} is higher than tenant "
                f"{tenant!r} may ask for: its max_priority is "
                f"{_priority_name(policy.max_priority)}", limit=MAX_PRIORITY,
                retry_after_s=None)
        if policy.max_queued is not None:
            waiting = policy_rows.unstarted_jobs_held(session=session, tenant=tenant)
            if waiting + demand.jobs > policy.max_queued:
                raise QuotaExceeded(
                    f"tenant {tenant!r} has {waiting} job(s) queued or waiting; "
                    f"{demand.jobs} more would exceed its max_queued of "
                    f"{policy.max_queued}: try again once some have started",
                    limit=MAX_QUEUED, retry_after_s=self.settings.quota_retry_after_s)
        if policy.tokens_per_minute is not None:
            if demand.tokens > policy.tokens_per_minute:
                # No wait helps: say so plainly rather than answer 429 forever.
                raise InvalidRequest(
                    f"this request costs about {demand.tokens} tokens, more than tenant "
                    f"{tenant!r}'s tokens_per_minute of {policy.tokens_per_minute}: "
                    "lower max_tokens, shorten the prompt, or send fewer at once")
            wait = self.window.charge(tenant, demand.tokens, policy.tokens_per_minute)
            if wait is not None:
                raise QuotaExceeded(
                    f"tenant {tenant!r} is over its tokens_per_minute of "
                    f"{policy.tokens_per_minute}: this request costs about "
                    f"{demand.tokens} tokens (bytes/4 + max_tokens); retry in "
                    f"{wait:.0f} s", limit=TOKENS_PER_MINUTE, retry_after_s=wait)


class TokenPacer:
    """The dispatcher's pacing of batch jobs: ``admit`` charges a job's tokens to its
    tenant's tokens-per-minute window (the one interactive jobs are charged to), and
    says no while the tenant is over it. A job costing more than the whole quota is
    admitted into an empty window, charged the quota, so that it is slowed, never
    stranded."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    def paces(self, tenant: str) -> bool:
        return self.quotas.policy(tenant).tokens_per_minute is not None

    def admit(self, tenant: str, tokens: int) -> bool:
        per_minute = self.quotas.policy(tenant).tokens_per_minute
        if per_minute is None:
            return True
        return self.quotas.window.charge(tenant, max(1, min(tokens, per_minute)),
                                         per_minute) is None

