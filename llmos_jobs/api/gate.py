"""The gate in front of every route: who is calling, and how much it may send, decided
before any body is read.

FastAPI reads and parses a request's body before it runs a route's dependencies, so a
check in a dependency comes too late: an anonymous caller would get a 5 MB upload read
in full, and bad JSON answered 400 before the missing key was noticed. The gate runs
first. It finds the route, authenticates the bearer key (401 at once when it is
missing, unknown or revoked, without reading a byte of the body), refuses a declared
length over the route's limit with 413, and counts the bytes as they arrive so that a
body without a declared length is cut off at the same limit. A JSON body (at most the
limit) is read whole and its nesting measured before any parser sees it; an upload is
passed on as it streams. The key it found is left in the request for ``authorize``
(api/auth.py), which checks scopes and tenants."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from fastapi import HTTPException
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos_jobs.api.audit import AuditEntry
from llmos_jobs.api.errors import ErrorBody, ErrorDetail
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import ApiKey
from llmos_jobs.limits import json_depth
from llmos_jobs.services.api_keys import authenticate

# /metrics checks its own token (LLMOS_METRICS_TOKEN; llmos_jobs.api.metrics).
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs",
                          "/docs/oauth2-redirect", "/redoc"})
# Routes that take a file upload rather than a small JSON body.
UPLOAD_ROUTES = frozenset({("POST", "/v1/files")})
# Room for the multipart framing and the form's other fields around the file itself.
UPLOAD_FRAMING_BYTES = 64 * 1024
KEY_STATE = "api_key"


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int
    upload_bytes: int
    json_depth: int

    def for_route(self, method: str, path: str) -> tuple[int, str]:
        if (method, path) in UPLOAD_ROUTES:
            return self.upload_bytes + UPLOAD_FRAMING_BYTES, "LLMOS_BATCH_MAX_BYTES"
        return self.json_bytes, "LLMOS_API_MAX_BODY_BYTES"


def too_large(limit: int, setting: str) -> HTTPException:
    # fastapi's HTTPException: raised while FastAPI reads the body, it passes through
    # unchanged (any other exception there turns into a 400).
    return HTTPException(413, f"request body is larger than {limit} bytes ({setting})")


def _error(status: int, message: str, type_: str, code: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(message=message, type=type_, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class Gate:
    def __init__(self, app: ASGIApp, *, routes: list[APIRoute], database: Database,
                 limits: BodyLimits) -> None:
        self.app = app
        self.routes = routes
        # Which audit action each route names never changes: read once, not per request.
        self.actions = {id(route): action_of(route) for route in routes}
        self.database = database
        self.limits = limits

    def _route(self, scope: Scope) -> tuple[APIRoute | None, dict[str, str]]:
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route, dict(child.get("path_params", {}))
        return None, {}

    def _authenticate(self, presented: str) -> ApiKey | None:
        with session_scope(self.database) as session:
            return authenticate(session=session, presented=presented)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        route, params = self._route(scope)
        entry = scope.get("state", {}).get("audit")
        if isinstance(entry, AuditEntry) and route is not None:
            entry.action = self.actions[id(route)]
            entry.resource_id = next(iter(params.values()), None)
        scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            await _error(401, "missing API key: send the header 'Authorization: Bearer "
                              "<key>' (an operator creates keys with `llmos key create`)",
                         "authentication_error", "invalid_api_key",
                         {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        key = await anyio.to_thread.run_sync(self._authenticate, presented.strip())
        if key is None:
            await _error(401, "invalid or revoked API key", "authentication_error",
                         "invalid_api_key", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        scope.setdefault("state", {})[KEY_STATE] = key
        path = route.path if route else scope["path"]
        limit, setting = self.limits.for_route(scope["method"], path)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            exc = too_large(limit, setting)
            await _error(413, str(exc.detail), "invalid_request_error",
                         "request_too_large")(scope, receive, send)
            return
        if (scope["method"], path) not in UPLOAD_ROUTES:
            await self._buffered(scope, receive, send, limit, setting)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit, setting)
            return message

        await self.app(scope, counted, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, limit: int,
                        setting: str) -> None:
        """Read a small JSON body whole (it is at most ``limit`` bytes), refuse it when it
        nests too deeply, and hand it on to the route as if it arrived just now."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > limit:
                exc = too_large(limit, setting)
                await _error(413, str(exc.detail), "invalid_request_error",
                             "request_too_large")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        depth = json_depth(bytes(body))
        if depth > self.limits.json_depth:
            await _error(400, f"request body nests {depth} levels deep; the limit is "
                              f"{self.limits.json_depth} (LLMOS_LIMIT_JSON_DEPTH)",
                         "invalid_request_error", "invalid_value")(scope, receive, send)
            return
        await self.app(scope, replaying(bytes(body), receive), send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands a body already read to the route as if it arrived just
    now, then passes on what the client sends next: its disconnect, which a streamed
    answer (docs/streaming.md) listens for while it streams."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def action_of(route: APIRoute) -> str | None:
    """The audit action that the route's ``authorize`` dependency names."""
    from_dependencies = [route.dependant]
    while from_dependencies:
        dependant = from_dependencies.pop()
        action = getattr(dependant.call, "action", None)
        if isinstance(action, str):
            return action
        from_dependencies.extend(dependant.dependencies)
    return None
