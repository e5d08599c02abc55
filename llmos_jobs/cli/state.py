"""Options shared by every command (the tenant), kept for the command's run."""

from __future__ import annotations

from llmos_jobs.client import LlmosClient
from llmos_jobs.settings import get_settings

_tenant: str | None = None


def set_tenant(tenant: str | None) -> None:
    global _tenant
    _tenant = tenant


def client() -> LlmosClient:
    """The CLI is a trusted local administrator acting as one tenant."""
    return LlmosClient(tenant=_tenant)


def current_tenant() -> str:
    return _tenant or get_settings().tenant
