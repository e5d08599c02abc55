"""`llmos webhook ...`: the tenant's signing secret and its deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from llmos_jobs.cli.output import console, emit_json, err_console, table
from llmos_jobs.cli.state import current_tenant

if TYPE_CHECKING:
    from sqlmodel import Session

webhook_app = typer.Typer(help="Webhook callbacks: signing secret and deliveries.",
                          no_args_is_help=True)
_JSON = typer.Option(False, "--json")


@contextmanager
def _session() -> Iterator[Session]:
    from llmos_jobs.cli.state import database
    from llmos_jobs.db.session import session_scope

    with session_scope(database()) as session:
        yield session


@webhook_app.command("secret")
def secret(as_json: bool = _JSON) -> None:
    """Show the tenant's signing secret (created on first use)."""
    from llmos_jobs.services.webhooks.signing import tenant_secret

    with _session() as session:
        row = tenant_secret(session=session, tenant=current_tenant())
    emit_json(row) if as_json else console.print(row.secret, markup=False)


@webhook_app.command("rotate")
def rotate(as_json: bool = _JSON) -> None:
    """Replace the signing secret; the old one signs nothing from now on."""
    from llmos_jobs.services.webhooks.signing import rotate_secret

    with _session() as session:
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
    from llmos_jobs.services.webhooks.delivery import list_deliveries

    with _session() as session:
        rows = list_deliveries(session=session, tenant=current_tenant(), job_id=job,
                               limit=limit)
    if as_json:
        emit_json(rows)
        return
    grid = table("id", "event", "job", "status", "attempts", "last", "url")
    for d in rows:
        last = "-" if not d.attempt_log else (
            str(d.attempt_log[-1].status_code or d.attempt_log[-1].error))
        grid.add_row(d.id, d.event_type, d.job_id or "-", d.status.value, str(d.attempts),
                     last[:40], d.url)
    console.print(grid)
