"""The audit log of operator tools: the CLI and the Python client write the same rows
as the HTTP API (who, tenant, action, object, outcome), so that a model unloaded from a
shell is as visible as one unloaded over HTTP.

A client method marked ``@audited("models.register")`` writes one row when it returns
or raises. ``actor`` names who acted (``user@host`` by default); the status is the
HTTP answer the same outcome would have had (400 refused, 404 not found, 409 illegal
transition, 500 any other error), so rows of both origins read alike. Clients built by
the HTTP API pass ``actor=None``: its middleware writes the row, with the key."""

from __future__ import annotations

import functools
import getpass
import inspect
import socket
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from llmos_jobs.db import audit as audit_rows
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import AuditEventBase
from llmos_jobs.errors import IllegalTransition, InvalidRequest, NotFound, QuotaExceeded


class AuditedClient(Protocol):
    tenant: str
    database: Database
    actor: str | None


P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=AuditedClient)


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def status_of(exc: BaseException | None) -> int:
    for kind, status in ((InvalidRequest, 400), (NotFound, 404), (IllegalTransition, 409),
                         (QuotaExceeded, 429)):
        if isinstance(exc, kind):
            return status
    return 200 if exc is None else 500


def record(database: Database, *, actor: str, tenant: str | None, action: str,
           resource_id: str | None, exc: BaseException | None) -> None:
    status = status_of(exc)
    outcome = "ok" if status < 400 else "denied" if status == 404 else "error"
    with session_scope(database) as session:
        audit_rows.record_event(session=session, event_in=AuditEventBase(
            tenant=tenant, actor=actor, action=action, resource_id=resource_id,
            outcome=outcome, status_code=status))


def _resource(result: object, args: tuple[object, ...]) -> str | None:
    for value in (getattr(result, "id", None), getattr(result, "name", None),
                  args[0] if args else None):
        if isinstance(value, str):
            return value
    return None


def audited(action: str) -> Callable[[Callable[Concatenate[C, P], R]],
                                     Callable[Concatenate[C, P], R]]:
    """Audit a client method as ``action``; ``{name}`` in it is the value of the
    method's argument ``name`` (``models.{op}`` reads ``models.load``)."""

    def decorate(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def call(client: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if client.actor is None:
                return method(client, *args, **kwargs)
            if "{" in action:
                bound = signature.bind(client, *args, **kwargs).arguments
                name = action.format_map({k: str(v) for k, v in bound.items()})
            else:
                name = action
            try:
                result = method(client, *args, **kwargs)
            except Exception as exc:
                record(client.database, actor=client.actor, tenant=client.tenant,
                       action=name, resource_id=_resource(None, args), exc=exc)
                raise
            record(client.database, actor=client.actor, tenant=client.tenant,
                   action=name, resource_id=_resource(result, args), exc=None)
            return result

        return call

    return decorate
