"""The audit log of the HTTP API: one row per call that a route marked with an action.

The route's authorisation dependency (api/auth.py) fills an ``AuditEntry`` with the
action, the caller and the resource; this middleware writes the row with the final
status before the response starts. So no caller sees an answer whose row is missing,
denied calls (401, 403, 404) are recorded like the others, and a row that cannot be
written fails the call instead of vanishing.

Denied calls cost the caller nothing, so each source (its key, else its address) gets a
budget of denied rows per minute; past it, denied calls are answered but not written,
and nobody can fill the database by knocking."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos_jobs.db import audit as audit_rows
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import AuditEventBase


class AuditOutcome(StrEnum):
    ok = "ok"
    denied = "denied"  # 401, 403, and 404 (another tenant's id answers "not found")
    error = "error"


def outcome_of(status: int) -> AuditOutcome:
    if status < 400:
        return AuditOutcome.ok
    if status in (401, 403, 404):
        return AuditOutcome.denied
    return AuditOutcome.error


@dataclass
class AuditEntry:
    action: str | None = None  # None: the call is not audited (docs, health, unknown path)
    tenant: str | None = None
    key_id: str | None = None
    resource_id: str | None = None


def audit_entry(request: Request) -> AuditEntry:
    entry = getattr(request.state, "audit", None)
    if not isinstance(entry, AuditEntry):
        raise RuntimeError("AuditMiddleware is not installed on this app")
    return entry


class DeniedBudget:
    """At most ``per_minute`` denied rows per source in each minute-long window."""

    MAX_SOURCES = 10_000  # past this many sources in one window, the window restarts

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = time.monotonic()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, source: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._window >= 60 or len(self._counts) >= self.MAX_SOURCES:
                self._window, self._counts = now, {}
            count = self._counts.get(source, 0)
            if count >= self.per_minute:
                return False
            self._counts[source] = count + 1
            return True


class AuditMiddleware:
    def __init__(self, app: ASGIApp, *, database: Database, denied_per_minute: int) -> None:
        self.app = app
        self.database = database
        self.denied = DeniedBudget(denied_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = AuditEntry()
        scope.setdefault("state", {})["audit"] = entry
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        started = False

        async def send_recorded(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                await self._record(entry, int(message["status"]), address)
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        except Exception:
            if not started:  # the error handler outside answers 500; record it first
                await self._record(entry, 500, address)
            raise

    async def _record(self, entry: AuditEntry, status: int, address: str) -> None:
        if entry.action is None:
            return
        outcome = outcome_of(status)
        if outcome == AuditOutcome.denied and not self.denied.allow(entry.key_id or address):
            return
        event = AuditEventBase(
            tenant=entry.tenant, key_id=entry.key_id, action=entry.action,
            resource_id=entry.resource_id, outcome=outcome.value, status_code=status,
        )
        await anyio.to_thread.run_sync(self._write, event)

    def _write(self, event: AuditEventBase) -> None:
        with session_scope(self.database) as session:
            audit_rows.record_event(session=session, event_in=event)
