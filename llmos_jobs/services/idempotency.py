"""Idempotency keys: a request sent again with the key of an earlier one gets the
earlier one's answer and creates nothing.

A key belongs to a tenant and is remembered for LLMOS_IDEMPOTENCY_TTL_S (24 h) with a
hash of its request. The first request inserts the key's row before it does anything
(a unique constraint on (tenant, key) lets one of two concurrent inserts win, so two racing
requests never both run); it stores its answer when it succeeds and forgets the key
when it fails, so a request that failed can be sent again. A later request with the
key then gets the stored answer, waits while the first one is still running, or is
refused when its request differs (a key names one request, never two)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from llmos_jobs.db import idempotency as rows
from llmos_jobs.db.retention_tables import IdempotencyRecord
from llmos_jobs.db.session import Database
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import IdempotencyInProgress, IdempotencyMismatch, InvalidRequest
from llmos_jobs.settings import Settings

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces
POLL_S = 0.1  # how often a request waits on the first request of its key


@dataclass(frozen=True)
class Claimed:
    """This request holds the key: it runs, then ``complete`` or ``release``."""


@dataclass(frozen=True)
class Replay:
    """The key's first request finished: its answer."""

    status_code: int
    response: str | None
    content_type: str | None
    resource_id: str | None


@dataclass(frozen=True)
class Idempotency:
    database: Database
    ttl_s: float
    wait_s: float  # how long a request waits for the first request of its key
    # A first request still unfinished this long after it began died with its process
    # (no request runs that long): its key is free again.
    abandoned_after_s: float

    @classmethod
    def of(cls, settings: Settings, database: Database) -> Idempotency:
        # A repeat waits as long as its first request may take (a waiting call's limit).
        wait_s = settings.api_wait_timeout_s + 30
        return cls(database=database, ttl_s=settings.idempotency_ttl_s, wait_s=wait_s,
                   abandoned_after_s=2 * wait_s)


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise InvalidRequest(f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable ASCII "
                             "characters without spaces (a UUID is a good key)")
    return key


def request_hash(request: str, body: bytes) -> str:
    """A digest of what was asked: ``request`` names the operation (``POST /v1/jobs``),
    ``body`` its content. A JSON body is hashed in canonical form, so the same object
    sent with other spacing or key order is the same request."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
        content = canonical.encode()
    except ValueError:
        content = body
    return hashlib.sha256(request.encode() + b"\n" + content).hexdigest()


def _try_claim(idem: Idempotency, *, tenant: str, key: str, digest: str, request: str
               ) -> Claimed | Replay | None:
    """One attempt: Claimed, the stored answer, or None while the first request runs."""
    now = utcnow()
    with idem.database.session() as session:
        existing = rows.get_record(session=session, tenant=tenant, key=key)
        if existing is not None and (existing.expires_at <= now or (
                existing.status_code is None and existing.created_at
                + timedelta(seconds=idem.abandoned_after_s) <= now)):
            rows.delete_record(session=session, tenant=tenant, key=key,
                               created_at=existing.created_at)
            existing = None
    if existing is None:
        record = IdempotencyRecord(tenant=tenant, key=key, request_hash=digest,
                                   request=request[:300], created_at=now,
                                   expires_at=now + timedelta(seconds=idem.ttl_s))
        with idem.database.session() as session:
            if rows.insert_record(session=session, record=record):
                return Claimed()
        return None  # another request took the key first: read what it holds
    if existing.request_hash != digest:
        raise IdempotencyMismatch(
            f"{HEADER} '{key}' was already used with a different request ({existing.request} "
            "with another body); a key names one request: send a new key for a new request")
    if existing.status_code is None:
        return None
    return Replay(status_code=existing.status_code, response=existing.response,
                  content_type=existing.content_type, resource_id=existing.resource_id)


def claim(idem: Idempotency, *, tenant: str, key: str, digest: str, request: str
          ) -> Claimed | Replay:
    """Hold ``key`` for this request, or get the answer of its first request (waiting,
    at most ``wait_s``, while that one is still running)."""
    check_key(key)
    deadline = time.monotonic() + idem.wait_s
    while True:
        outcome = _try_claim(idem, tenant=tenant, key=key, digest=digest, request=request)
        if outcome is not None:
            return outcome
        if time.monotonic() >= deadline:
            raise IdempotencyInProgress(
                f"the first request with {HEADER} '{key}' is still running; send this one "
                "again later to get its answer")
        time.sleep(POLL_S)


def complete(idem: Idempotency, *, tenant: str, key: str, status_code: int,
             response: str | None = None, content_type: str | None = None,
             resource_id: str | None = None) -> None:
    with idem.database.session() as session:
        rows.complete_record(session=session, tenant=tenant, key=key,
                             status_code=status_code, response=response,
                             content_type=content_type, resource_id=resource_id)


def release(idem: Idempotency, *, tenant: str, key: str) -> None:
    """Forget the key of a request that failed: sending it again runs it again."""
    with idem.database.session() as session:
        rows.delete_record(session=session, tenant=tenant, key=key)


def once(idem: Idempotency, *, tenant: str, key: str, request: str, body: bytes,
         create: Callable[[], str]) -> str:
    """Run ``create`` (which returns the id of what it made) once per key: a repeat
    returns the first call's id without calling it."""
    outcome = claim(idem, tenant=tenant, key=key, digest=request_hash(request, body),
                    request=request)
    if isinstance(outcome, Replay):
        if outcome.resource_id is None:
            raise IdempotencyMismatch(f"{HEADER} '{key}' was used for an HTTP request "
                                      "that made nothing this call can return")
        return outcome.resource_id
    try:
        resource_id = create()
    except BaseException:
        release(idem, tenant=tenant, key=key)
        raise
    complete(idem, tenant=tenant, key=key, status_code=200, resource_id=resource_id)
    return resource_id
