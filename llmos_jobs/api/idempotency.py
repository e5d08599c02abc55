"""``Idempotency-Key`` on every POST, once for the whole API (llmos_jobs.services.
idempotency holds the rules).

A middleware rather than a dependency: it must see the answer a route gives in order to
store it, and answer a repeat without running the route at all. It runs inside the gate
(the caller's key is known and the body is read, within its limits) and before the
route: a repeat of a stored request gets the stored status and body, with
``Idempotent-Replayed: true``; the same key with another body answers 422; a repeat
while the first request still runs waits for its answer. A stored answer is replayed
only to a key that may call the route (the route's own scope check stays in force)."""

from __future__ import annotations

import anyio
from fastapi import HTTPException
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos_jobs.api.audit import AuditEntry
from llmos_jobs.api.auth import TENANT_HEADER, Authorize
from llmos_jobs.api.errors import ErrorBody, ErrorDetail
from llmos_jobs.api.gate import KEY_STATE, replaying
from llmos_jobs.db.tables import ApiKey
from llmos_jobs.errors import IdempotencyInProgress, IdempotencyMismatch, InvalidRequest
from llmos_jobs.services import idempotency
from llmos_jobs.services.api_keys import grants
from llmos_jobs.services.idempotency import HEADER, Claimed, Idempotency, Replay

REPLAYED_HEADER = "Idempotent-Replayed"


def _error(status: int, message: str, code: str, param: str | None = HEADER
           ) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type="invalid_request_error",
                                       param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def authorizer_of(route: APIRoute) -> Authorize | None:
    dependants = [route.dependant]
    while dependants:
        dependant = dependants.pop()
        if isinstance(dependant.call, Authorize):
            return dependant.call
        dependants.extend(dependant.dependencies)
    return None


def may_call(route: APIRoute, key: ApiKey) -> bool:
    authorizer = authorizer_of(route)
    if authorizer is None:
        return False
    if authorizer.operator_only and key.tenant is not None:
        return False
    return grants(key.scopes, authorizer.scope)


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, routes: list[APIRoute], idempotency: Idempotency,
                 default_tenant: str) -> None:
        self.app = app
        self.routes = [r for r in routes if "POST" in (r.methods or ())]
        self.idempotency = idempotency
        self.default_tenant = default_tenant

    def _route(self, scope: Scope) -> APIRoute | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan (the schema upgrade) has no headers
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = scope.get("state", {}).get(KEY_STATE)
        given = headers.get(HEADER)
        route = (self._route(scope) if scope["method"] == "POST" and given is not None
                 else None)
        if given is None or route is None or not isinstance(key, ApiKey) \
                or not may_call(route, key):
            await self.app(scope, receive, send)  # the route answers (or refuses) as ever
            return
        try:
            idempotency.check_key(given)
        except InvalidRequest as exc:
            await _error(400, str(exc), "invalid_idempotency_key")(scope, receive, send)
            return
        tenant = key.tenant or headers.get(TENANT_HEADER) or self.default_tenant
        try:
            body = await _read(receive)
        except HTTPException as exc:  # an upload past its limit (the gate counts it)
            await _error(exc.status_code, str(exc.detail), "request_too_large",
                         param=None)(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        request = f"POST {scope['path']}" + (f"?{query}" if query else "")
        try:
            outcome = await anyio.to_thread.run_sync(lambda: idempotency.claim(
                self.idempotency, tenant=tenant, key=given,
                digest=idempotency.request_hash(request, body), request=request))
        except IdempotencyMismatch as exc:
            await _error(422, str(exc), "idempotency_key_reused")(scope, receive, send)
            return
        except IdempotencyInProgress as exc:
            await _error(409, str(exc), "idempotency_key_in_progress")(scope, receive, send)
            return
        if isinstance(outcome, Replay):
            entry = scope.get("state", {}).get("audit")
            if isinstance(entry, AuditEntry):  # the route's authorize did not run: say who
                entry.tenant, entry.key_id = tenant, key.id
                entry.resource_id = outcome.resource_id
            await _replayed(outcome)(scope, receive, send)
            return
        assert isinstance(outcome, Claimed)
        await self._first(scope, receive, send, body, tenant=tenant, key=given)

    async def _first(self, scope: Scope, receive: Receive, send: Send, body: bytes, *,
                     tenant: str, key: str) -> None:
        """Run the route, pass its answer on, and store it (2xx, 3xx) or forget the key."""
        status = 500
        content_type: str | None = None
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = int(message["status"])
                content_type = Headers(raw=message.get("headers", [])).get("content-type")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replaying(body, receive), keep)
        except BaseException:
            await anyio.to_thread.run_sync(lambda: idempotency.release(
                self.idempotency, tenant=tenant, key=key))
            raise
        text = _text(b"".join(chunks))
        if status >= 400 or text is None:
            await anyio.to_thread.run_sync(lambda: idempotency.release(
                self.idempotency, tenant=tenant, key=key))
            return
        entry = scope.get("state", {}).get("audit")
        resource = entry.resource_id if isinstance(entry, AuditEntry) else None
        await anyio.to_thread.run_sync(lambda: idempotency.complete(
            self.idempotency, tenant=tenant, key=key, status_code=status, response=text,
            content_type=content_type, resource_id=resource))


async def _read(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body)


def _text(body: bytes) -> str | None:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None  # not an answer this API gives to a POST: not stored


def _replayed(replay: Replay) -> Response:
    headers = {REPLAYED_HEADER: "true"}
    return Response(replay.response or "", status_code=replay.status_code, headers=headers,
                    media_type=replay.content_type)
