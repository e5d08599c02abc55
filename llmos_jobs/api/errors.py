"""Every error leaves as an OpenAI-style body, ``{"error": {message, type, param, code}}``,
so that OpenAI SDKs and plain HTTP clients read the same shape from every route."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmos_jobs.errors import (
    BrokerUnavailable,
    ContentExpired,
    IdempotencyInProgress,
    IdempotencyMismatch,
    IllegalTransition,
    InvalidRequest,
    LlmosError,
    NotFound,
    QuotaExceeded,
    StreamingUnavailable,
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# Declared on every route; "4XX" also keeps FastAPI from documenting its default 422
# shape, which this API never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "Rejected: bad input (400), missing or wrong "
            "key (401), missing scope (403), not found (404), conflict (409), over a quota "
            "(429, with Retry-After; code names the quota)"},
    "5XX": {"model": ErrorBody, "description": "Broker unreachable (503), wait timed out "
            "(504), or an internal error"},
}

_LLMOS_ERRORS: list[tuple[type[LlmosError], int, str, str]] = [
    (InvalidRequest, 400, "invalid_request_error", "invalid_request"),
    (NotFound, 404, "not_found_error", "not_found"),
    (IllegalTransition, 409, "invalid_request_error", "illegal_transition"),
    (IdempotencyMismatch, 422, "invalid_request_error", "idempotency_key_reused"),
    (IdempotencyInProgress, 409, "invalid_request_error", "idempotency_key_in_progress"),
    (ContentExpired, 410, "invalid_request_error", "content_expired"),
    (BrokerUnavailable, 503, "service_unavailable_error", "broker_unavailable"),
    (StreamingUnavailable, 400, "invalid_request_error", "streaming_unavailable"),
]


class ApiError(Exception):
    """An error raised by the API layer itself, with its HTTP status."""

    def __init__(self, status: int, message: str, *, type_: str, code: str,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type_, param=param, code=code)
        self.headers = headers


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type_="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, type_="permission_error", code="insufficient_scope")


def _response(status: int, detail: ErrorDetail, headers: dict[str, str] | None = None
              ) -> JSONResponse:
    return JSONResponse(ErrorBody(error=detail).model_dump(), status_code=status,
                        headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _response(exc.status, exc.detail, exc.headers)


def _quota_refusal(exc: QuotaExceeded) -> JSONResponse:
    # OpenAI's rate-limit shape: 429, type rate_limit_error; the code names the quota.
    # Retry-After only where waiting can help (not for a refused priority).
    headers = (None if exc.retry_after_s is None
               else {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    return _response(429, ErrorDetail(message=str(exc), type="rate_limit_error",
                                      code=exc.limit), headers)


async def _llmos_error(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, QuotaExceeded):
        return _quota_refusal(exc)
    for kind, status, type_, code in _LLMOS_ERRORS:
        if isinstance(exc, kind):
            return _response(status, ErrorDetail(message=str(exc), type=type_, code=code))
    return _response(400, ErrorDetail(message=str(exc), type="invalid_request_error",
                                      code="invalid_request"))


def _where(loc: tuple[int | str, ...]) -> tuple[str, str | None]:
    """A readable place for a validation error, and the parameter it names."""
    source, path = (str(loc[0]), loc[1:]) if loc else ("body", ())
    param = ".".join(str(p) for p in path) or None
    if param is None:
        return ("request body" if source == "body" else source), None
    return (param if source == "body" else f"{source} parameter {param}"), param


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems, first_param = [], None
    for error in exc.errors():
        where, param = _where(tuple(error.get("loc", ())))
        first_param = first_param or param
        problems.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return _response(400, ErrorDetail(message="; ".join(problems), type="invalid_request_error",
                                      param=first_param, code="invalid_value"))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _response(exc.status_code, ErrorDetail(message=str(exc.detail), type=type_,
                                                  code=f"http_{exc.status_code}"),
                     dict(exc.headers) if exc.headers else None)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The server logs the traceback (the exception is re-raised after this response).
    return _response(500, ErrorDetail(message=f"internal error ({type(exc).__name__}); "
                                      "see the API server's log", type="server_error",
                                      code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(LlmosError, _llmos_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
