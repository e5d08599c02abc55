"""API keys: the scopes a key may hold, issuing a key, and recognising one.

A key reads ``llmos_`` + 40 random base62 characters (about 238 bits). Its first 14
characters, the prefix, are stored in clear: they find the row and name the key in
listings without revealing it. Of the whole key only its SHA-256 digest is stored, and
digests are compared in constant time, so neither the table nor the time an answer
takes tells anyone a key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Iterable, Sequence
from enum import StrEnum

from sqlmodel import Session

from llmos_jobs.db import keys as key_rows
from llmos_jobs.db.tables import ApiKey, ApiKeyCreate, ApiKeyIssued
from llmos_jobs.errors import InvalidRequest


class Scope(StrEnum):
    jobs_read = "jobs:read"
    jobs_write = "jobs:write"
    mindspaces_read = "mindspaces:read"
    mindspaces_write = "mindspaces:write"
    models_read = "models:read"
    models_admin = "models:admin"  # register, load, unload: operator keys only (shared models)
    # Every scope above; on a tenant key also the tenant's own keys and webhooks; on an
    # operator key also workers and every tenant's keys.
    admin = "admin"


KEY_PREFIX = "llmos_"
_ALPHABET = string.ascii_letters + string.digits
_SECRET_CHARS = 40
KEY_CHARS = len(KEY_PREFIX) + _SECRET_CHARS
PREFIX_CHARS = len(KEY_PREFIX) + 8


def parse_scopes(value: str | Sequence[str] | None) -> list[Scope]:
    """Scopes from a comma-separated text or a list; none named means every scope."""
    names = value.split(",") if isinstance(value, str) else list(value or [])
    names = [n.strip() for n in names if n.strip()]
    if not names:
        return list(Scope)
    known = {s.value for s in Scope}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidRequest(
            f"unknown scope {unknown[0]!r}: choose from {', '.join(s.value for s in Scope)}"
        )
    return sorted({Scope(n) for n in names}, key=list(Scope).index)


def grants(scopes: Iterable[str], needed: Scope) -> bool:
    held = set(scopes)
    return Scope.admin.value in held or needed.value in held


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_key(*, session: Session, tenant: str | None, scopes: Sequence[Scope],
              name: str | None = None) -> ApiKeyIssued:
    """Create a key of ``tenant``, or an operator's key when ``tenant`` is None; the
    secret is in the answer and nowhere else."""
    if tenant is not None and not tenant.strip():
        raise InvalidRequest("tenant must not be empty")
    if name is not None and len(name) > 128:
        raise InvalidRequest("name is longer than 128 characters")
    key = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_CHARS))
    row = key_rows.create_api_key(session=session, key_in=ApiKeyCreate(
        tenant=tenant, name=name, scopes=[s.value for s in scopes],
        prefix=key[:PREFIX_CHARS], key_hash=digest(key),
    ))
    return ApiKeyIssued(**row.model_dump(), key=key)


def authenticate(*, session: Session, presented: str) -> ApiKey | None:
    """The live key row matching ``presented``, or None (unknown, malformed or revoked)."""
    if not presented.startswith(KEY_PREFIX) or len(presented) != KEY_CHARS:
        return None
    wanted = digest(presented)
    match = None
    for row in key_rows.keys_with_prefix(session=session, prefix=presented[:PREFIX_CHARS]):
        if hmac.compare_digest(row.key_hash, wanted):
            match = row
    if match is None or match.revoked_at is not None:
        return None
    return match
