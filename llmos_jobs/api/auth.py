"""Who is calling: every audited route depends on ``authorize(action, scope)``, which
checks the bearer key and its scope and fills the call's audit entry.

Missing, unknown or revoked key: 401. A key without the scope: 403. The key's tenant
then scopes every read and write (another tenant's id answers 404)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmos_jobs.api.audit import AuditEntry, audit_entry
from llmos_jobs.api.errors import forbidden, unauthorized
from llmos_jobs.api.state import api_state
from llmos_jobs.keys import Scope, authenticate, grants

bearer = HTTPBearer(auto_error=False, description="An API key from `llmos key create`.")


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    audit: AuditEntry

    def created(self, resource_id: str) -> None:
        """Name the resource this call created in its audit row."""
        self.audit.resource_id = resource_id


Authorizer = Callable[[Request, HTTPAuthorizationCredentials | None], Caller]


def authorize(action: str, scope: Scope) -> Authorizer:
    """A dependency admitting callers whose key holds ``scope``; ``action`` names the
    call in the audit log (``jobs.create``)."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        entry = audit_entry(request)
        entry.action = action
        entry.resource_id = next(iter(request.path_params.values()), None)
        if credentials is None:
            raise unauthorized("missing API key: send the header 'Authorization: Bearer "
                               "<key>' (an operator creates keys with `llmos key create`)")
        state = api_state(request)
        with state.session() as session:
            key = authenticate(session=session, presented=credentials.credentials)
        if key is None:
            raise unauthorized("invalid or revoked API key")
        entry.tenant, entry.key_id = key.tenant, key.id
        if not grants(key.scopes, scope):
            held = ", ".join(key.scopes) or "none"
            raise forbidden(f"{action} needs the scope '{scope.value}'; this key holds: {held}")
        return Caller(tenant=key.tenant, key_id=key.id, audit=entry)

    return dependency
