"""Errors a user can act on. The CLI prints their message, never a traceback."""

from __future__ import annotations


class LlmosError(Exception):
    """Base of every error whose message is meant for the user."""


class NotFound(LlmosError):
    """The thing does not exist, or belongs to another tenant (the same answer)."""


class InvalidRequest(LlmosError):
    """The request was rejected before anything was enqueued."""


class BrokerUnavailable(LlmosError):
    """No broker could be reached."""


class QuotaExceeded(LlmosError):
    """The tenant is over one of its quotas (docs/quotas.md); nothing was accepted.
    ``limit`` names the quota (max_queued, tokens_per_minute, max_priority) and
    ``retry_after_s`` says when trying again may succeed (None: not by waiting)."""

    def __init__(self, message: str, *, limit: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s


class IllegalTransition(LlmosError):
    """A job state change that the state machine refuses."""


class ResultUnavailable(LlmosError):
    """A job's result was read where it has none: it has not succeeded (or its result
    was scrubbed with its mindspace), or it is a job of another kind."""


class NoLiveWorkerWarning(UserWarning):
    """A job was accepted for a model that no live worker serves yet."""


class StreamingUnavailable(LlmosError):
    """No Redis holds jobs' live events (a RabbitMQ broker, no LLMOS_STREAM_URL)."""


class IdempotencyMismatch(LlmosError):
    """An idempotency key was used again with a different request."""


class IdempotencyInProgress(LlmosError):
    """The first request with this idempotency key has not finished yet."""


class ContentExpired(ResultUnavailable):
    """A job's prompt and result were pruned under its tenant's retention policy; its
    metadata (status, timestamps, model, usage) is kept."""
