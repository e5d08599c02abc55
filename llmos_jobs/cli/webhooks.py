"""`llmos webhook ...`: the tenant's signing secret and its deliveries."""

from __future__ import annotations

import typer
from rich.table import Table

from llmos_jobs.cli.output import console, emit_json, err_console
from llmos_jobs.cli.state import current_tenant
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import session_scope
from llmos_jobs.settings import get_settings
from llmos_jobs.webhooks.delivery import list_deliveries
from llmos_jobs.webhooks.signing import rotate_secret, tenant_secret

webhook_app = typer.Typer(help="Webhook callbacks: signing secret and deliveries.",
                          no_args_is_help=True)
_JSON = typer.Option(False, "--json")


def _database() -> str:
    url = get_settings().resolved_database_url()
    upgrade(url)
    return url


@webhook_app.command("secret")
def secret(as_json: bool = _JSON) -> None:
    """Show the tenant's signing secret (created on first use)."""
    with session_scope(_database()) as session:
        row = tenant_secret(session=session, tenant=current_tenant())
    emit_json(row) if as_json else console.print(row.secret, markup=False)


@webhook_app.command("rotate")
def rotate(as_json: bool = _JSON) -> None:
    """Replace the signing secret; the old one signs nothing from now on."""
    with session_scope(_database()) as session:
        row = rotate_secret(session=session, tenant=current_tenant())
    if as_json:
        emit_json(row)
        return
    console.print(row.secret, markup=False)
    err_console.print(f"rotated the webhook secret of tenant {row.tenant!r}: receivers "
                      "must verify with the new one now", markup=False)


@webhook_app.command("deliveries")
def deliveries(
    job: str = typer.Option(None, "--job", help="Only the deliveries of this job."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = _JSON,
) -> None:
    """The newest deliveries with their attempts."""
    with session_scope(_database()) as session:
        rows = list_deliveries(session=session, tenant=current_tenant(), job_id=job,
                               limit=limit)
    if as_json:
        emit_json(rows)
        return
    table = Table()
    for column in ("id", "event", "job", "status", "attempts", "last", "url"):
        table.add_column(column)
    for d in rows:
        last = "-" if not d.attempt_log else (
            str(d.attempt_log[-1].status_code or d.attempt_log[-1].error))
        table.add_row(d.id, d.event_type, d.job_id or "-", d.status.value, str(d.attempts),
                      last[:40], d.url)
    console.print(table)
