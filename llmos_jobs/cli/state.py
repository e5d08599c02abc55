"""Options shared by every command (the tenant), kept for the command's run, and the
client the commands act through."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos_jobs.cli.output import err_console

if TYPE_CHECKING:
    from llmos_jobs.client import LlmosClient
    from llmos_jobs.db.session import Database

_tenant: str | None = None


def set_tenant(tenant: str | None) -> None:
    global _tenant
    _tenant = tenant


def client() -> LlmosClient:
    """The CLI is a trusted local administrator acting as one tenant."""
    from llmos_jobs.client import LlmosClient

    forget_crashed_stack()
    return LlmosClient(tenant=_tenant, database=database())


def database() -> Database:
    """This command's database (from the settings), at the newest revision."""
    from llmos_jobs.db.migrate import upgrade
    from llmos_jobs.db.session import Database
    from llmos_jobs.settings import get_settings

    db = Database.from_settings(get_settings())
    upgrade(db)
    return db


def forget_crashed_stack() -> None:
    """Say so, once, when the embedded stack this data directory names has died, and
    remove what it left behind: the command then asks for `llmos up` instead of
    trying a broker that is gone."""
    from llmos_jobs.embedded import stale_stack
    from llmos_jobs.settings import get_settings

    settings = get_settings()
    if settings.broker_url is None:
        message = stale_stack(settings.data_dir)
        if message is not None:
            err_console.print(f"warning: {message}", markup=False, style="yellow")


def current_tenant() -> str:
    from llmos_jobs.settings import get_settings

    return _tenant or get_settings().tenant
