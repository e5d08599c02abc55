"""`llmos key ...` and `llmos audit list`: the operator's side of the HTTP API's keys."""

from __future__ import annotations

import typer

from llmos_jobs.cli.output import console, emit_json, err_console, table
from llmos_jobs.cli.state import current_tenant, database

key_app = typer.Typer(help="API keys of the HTTP API.", no_args_is_help=True)
audit_app = typer.Typer(help="The HTTP API's audit log.", no_args_is_help=True)
_JSON = typer.Option(False, "--json")


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19]


@key_app.command("create")
def create(
    tenant: str = typer.Option(None, "--tenant",
                               help="The key's tenant (default: the global --tenant)."),
    scopes: str = typer.Option(None, "--scopes",
                               help="Comma-separated, e.g. jobs:read,jobs:write (an unknown "
                                    "one is refused with the list). Default: all."),
    name: str = typer.Option(None, "--name", help="A label shown in listings."),
    operator: bool = typer.Option(False, "--operator",
                                  help="An operator's key (no tenant): models, workers, "
                                       "every tenant's keys, priority 0."),
    as_json: bool = _JSON,
) -> None:
    """Create a key and print it once: only its digest is stored."""
    from llmos_jobs.client.audit import default_actor, record
    from llmos_jobs.db.session import session_scope
    from llmos_jobs.services.api_keys import issue_key, parse_scopes

    if operator and tenant:
        raise typer.BadParameter("an operator key has no tenant: drop --tenant")
    db = database()
    with session_scope(db) as session:
        owner_tenant = None if operator else tenant or current_tenant()
        issued = issue_key(session=session, tenant=owner_tenant,
                           scopes=parse_scopes(scopes), name=name)
    record(db, actor=default_actor(), tenant=issued.tenant, action="keys.create",
           resource_id=issued.id, exc=None)
    if as_json:
        emit_json(issued)
        return
    console.print(issued.key, markup=False)
    owner = "an operator" if issued.tenant is None else f"tenant {issued.tenant!r}"
    err_console.print(f"key {issued.id} for {owner}, scopes "
                      f"{', '.join(issued.scopes)}: store it now, it is not shown again",
                      markup=False)


@key_app.command("list")
def list_keys(
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    as_json: bool = _JSON,
) -> None:
    """Keys of every tenant (or of one), revoked ones included; never the secrets."""
    from llmos_jobs.db import keys as key_rows
    from llmos_jobs.db.session import session_scope
    from llmos_jobs.db.tables import ApiKeyPublic

    with session_scope(database()) as session:
        keys = [ApiKeyPublic.model_validate(k, from_attributes=True)
                for k in key_rows.list_api_keys(session=session, tenant=tenant)]
    if as_json:
        emit_json(keys)
        return
    grid = table("id", "tenant", "name", "prefix", "scopes", "created", "revoked")
    for k in keys:
        grid.add_row(k.id, k.tenant or "(operator)", k.name or "-", k.prefix + "…",
                     ", ".join(k.scopes), _when(k.created_at), _when(k.revoked_at))
    console.print(grid)


@key_app.command("revoke")
def revoke(key_id: str, as_json: bool = _JSON) -> None:
    """Revoke a key: the API refuses it from the next call on."""
    from llmos_jobs.client.audit import default_actor, record
    from llmos_jobs.db import keys as key_rows
    from llmos_jobs.db.session import session_scope
    from llmos_jobs.db.tables import ApiKeyPublic

    db = database()
    with session_scope(db) as session:
        key = ApiKeyPublic.model_validate(
            key_rows.revoke_api_key(session=session, key_id=key_id), from_attributes=True)
    record(db, actor=default_actor(), tenant=key.tenant, action="keys.revoke",
           resource_id=key.id, exc=None)
    if as_json:
        emit_json(key)
    else:
        console.print(f"revoked {key.id} (tenant {key.tenant or '(operator)'})", markup=False)


@audit_app.command("list")
def audit_list(
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant's calls."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = _JSON,
) -> None:
    """The newest actions first (HTTP calls, and the CLI's and Python client's): who,
    what, on which resource, with which outcome."""
    from llmos_jobs.db import audit as audit_rows
    from llmos_jobs.db.session import session_scope
    from llmos_jobs.db.tables import AuditEventPublic

    with session_scope(database()) as session:
        events = [AuditEventPublic.model_validate(e, from_attributes=True)
                  for e in audit_rows.list_events(session=session, tenant=tenant, limit=limit)]
    if as_json:
        emit_json(events)
        return
    grid = table("time", "tenant", "key or actor", "action", "resource", "outcome", "status")
    for e in events:
        grid.add_row(_when(e.created_at), e.tenant or "-", e.key_id or e.actor or "-", e.action,
                     e.resource_id or "-", e.outcome, str(e.status_code))
    console.print(grid)
