"""Who is calling: every audited route depends on ``authorize(action, scope)``, which
checks the bearer key and its scope and fills the call's audit entry.

Two kinds of principal. A tenant key acts only inside its tenant: the tenant scopes
every read and write (another tenant's id answers 404), and its ``admin`` scope covers
the tenant's own keys and webhooks, nothing shared. An operator key (no tenant, `llmos
key create --operator`) also manages what all tenants share (models, workers, every
tenant's keys, priority 0) and acts for the tenant named in ``X-Llmos-Tenant`` (default:
``LLMOS_TENANT``) on tenant routes.

Missing, unknown or revoked key: 401. A key without the scope, or a tenant key on an
operator route: 403."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmos_jobs.api.audit import AuditEntry, audit_entry
from llmos_jobs.api.errors import forbidden, unauthorized
from llmos_jobs.api.gate import KEY_STATE
from llmos_jobs.api.state import api_state
from llmos_jobs.db.tables import ApiKey
from llmos_jobs.services.api_keys import Scope, grants

bearer = HTTPBearer(auto_error=False, description="An API key from `llmos key create`.")
TENANT_HEADER = "X-Llmos-Tenant"
# Reserved for operators: a tenant at 0 would run ahead of every other tenant's work.
OPERATOR_PRIORITY = 0


@dataclass(frozen=True)
class Caller:
    tenant: str  # the tenant this call acts for (an operator's: the one it named)
    key_id: str
    operator: bool
    audit: AuditEntry

    def created(self, resource_id: str) -> None:
        """Name the resource this call created in its audit row."""
        self.audit.resource_id = resource_id

    def check_priority(self, priority: int) -> None:
        if priority <= OPERATOR_PRIORITY and not self.operator:
            raise forbidden(f"priority {priority} is reserved for operators; a tenant key may "
                            f"ask for {OPERATOR_PRIORITY + 1} (interactive) to 9")


def _acting_tenant(request: Request, key: ApiKey, default: str) -> str:
    named = request.headers.get(TENANT_HEADER)
    if key.tenant is not None:
        if named is not None and named != key.tenant:
            raise forbidden(f"this key belongs to one tenant; it cannot act for another "
                            f"({TENANT_HEADER} names a different tenant)")
        return key.tenant
    if named is not None and not 0 < len(named) <= 128:
        raise forbidden(f"{TENANT_HEADER} must name a tenant of 1 to 128 characters")
    return named or default


class Authorize:
    """A dependency admitting callers whose key holds ``scope`` (and is an operator's,
    when ``operator_only``); ``action`` names the call in the audit log (``jobs.create``).
    The key itself was authenticated by the gate (api/gate.py) before the body was read."""

    def __init__(self, action: str, scope: Scope, *, operator_only: bool = False) -> None:
        self.action = action
        self.scope = scope
        self.operator_only = operator_only

    def __call__(
        self, request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        entry = audit_entry(request)
        entry.action = self.action
        entry.resource_id = next(iter(request.path_params.values()), None)
        key = getattr(request.state, KEY_STATE, None)
        if credentials is None or not isinstance(key, ApiKey):
            raise unauthorized("missing API key: send the header 'Authorization: Bearer "
                               "<key>' (an operator creates keys with `llmos key create`)")
        operator = key.tenant is None
        entry.key_id = key.id
        entry.tenant = key.tenant
        if self.operator_only and not operator:
            raise forbidden(f"{self.action} is an operator action: models, workers and "
                            "placement are shared by every tenant (a tenant key cannot use it)")
        if not grants(key.scopes, self.scope):
            held = ", ".join(key.scopes) or "none"
            raise forbidden(f"{self.action} needs the scope '{self.scope.value}'; this key "
                            f"holds: {held}")
        tenant = _acting_tenant(request, key, api_state(request).settings.tenant)
        if not self.operator_only:
            entry.tenant = tenant
        return Caller(tenant=tenant, key_id=key.id, operator=operator, audit=entry)


def authorize(action: str, scope: Scope, *, operator_only: bool = False) -> Authorize:
    return Authorize(action, scope, operator_only=operator_only)
