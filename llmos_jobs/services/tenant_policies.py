"""Tenants' scheduling policies, as operators set them (`llmos tenant set`,
``PUT /v1/tenants/{tenant}/policy``): the fair-share weight and the quotas that
llmos_jobs.services.quotas and the dispatcher enforce (docs/quotas.md)."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmos_jobs.db import tenant_policy as rows
from llmos_jobs.db.tenant_tables import DEFAULT_WEIGHT, TenantPolicy, TenantPolicyPublic
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.submission import Submitter, validate
from schemas.common import Contract, parse_priority

FIELDS = ("weight", "max_queued", "max_running", "tokens_per_minute", "max_priority")


class PolicyUpdate(Contract):
    """The fields to change; a field left out keeps its value, null removes it (the
    weight back to 1, a quota to none)."""

    weight: float | None = Field(default=None, gt=0, le=1000, description=(
        "share of the workers against other backlogged tenants (default 1)"))
    max_queued: int | None = Field(default=None, ge=0, description=(
        "jobs queued or waiting at once, batches aside; null: no limit"))
    max_running: int | None = Field(default=None, ge=1, description=(
        "jobs running at once (the dispatcher holds the rest); null: no limit"))
    tokens_per_minute: int | None = Field(default=None, ge=1, description=(
        "tokens charged per moving minute (bytes/4 + max_tokens); null: no limit"))
    max_priority: int | None = Field(default=None, ge=0, le=9, description=(
        "the highest priority (smallest number, or a class name: interactive, default, "
        "batch) the tenant may ask for; null: any"))

    @field_validator("max_priority", mode="before")
    @classmethod
    def _priority_class(cls, value: object) -> object:
        return parse_priority(value) if isinstance(value, str) else value


def _public(tenant: str, policy: TenantPolicy | None) -> TenantPolicyPublic:
    if policy is None:  # the default: weight 1, no quota, never set
        return TenantPolicyPublic(tenant=tenant)
    return TenantPolicyPublic.model_validate(policy.model_dump())


def _check_tenant(tenant: str) -> None:
    if not 0 < len(tenant) <= 128:
        raise InvalidRequest("a tenant name has 1 to 128 characters")


def show(submitter: Submitter, tenant: str) -> TenantPolicyPublic:
    """The tenant's policy; the default one (``updated_at`` null) when it has none."""
    with submitter.database.session() as session:
        return _public(tenant, rows.get_policy(session=session, tenant=tenant))


def listing(submitter: Submitter) -> list[TenantPolicyPublic]:
    """Every tenant that has a policy, by name."""
    with submitter.database.session() as session:
        return [_public(p.tenant, p) for p in rows.list_policies(session=session)]


def update(submitter: Submitter, tenant: str, changes: dict[str, object]
           ) -> TenantPolicyPublic:
    """Change the named fields of the tenant's policy (None: remove it); InvalidRequest
    names each bad value, and nothing is changed then."""
    _check_tenant(tenant)
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown policy field(s) {', '.join(unknown)}; the fields "
                             f"are {', '.join(FIELDS)}")
    checked = validate(PolicyUpdate, {k: v for k, v in changes.items() if v is not None})
    with submitter.database.session() as session:
        stored = rows.get_policy(session=session, tenant=tenant)
        policy = TenantPolicy(**stored.model_dump()) if stored else TenantPolicy(tenant=tenant)
        for name in changes:
            value = getattr(checked, name)
            setattr(policy, name, DEFAULT_WEIGHT if name == "weight" and value is None
                    else value)
        saved = rows.put_policy(session=session, policy=policy)
        public = _public(tenant, saved)
    submitter.quotas.changed(TenantPolicy(**public.model_dump()))
    return public


def remove(submitter: Submitter, tenant: str) -> TenantPolicyPublic:
    """Remove the tenant's policy: weight 1 and no quota again. The default policy."""
    with submitter.database.session() as session:
        rows.delete_policy(session=session, tenant=tenant)
    submitter.quotas.changed(TenantPolicy(tenant=tenant))
    return _public(tenant, None)
