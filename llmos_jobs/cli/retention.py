"""`llmos prune` and `llmos retention ...`: the operator's side of retention."""

from __future__ import annotations

import typer

from llmos_jobs.cli.output import console, emit_json, table
from llmos_jobs.cli.state import current_tenant, database

retention_app = typer.Typer(
    help="How long each tenant's content is kept (defaults: LLMOS_RETENTION_*_DAYS).",
    no_args_is_help=True)
_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def prune(
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Count what would be removed now; remove nothing."),
    tenant: str = typer.Option(None, "--tenant",
                               help="Only this tenant's content (default: every tenant's)."),
    as_json: bool = _JSON,
) -> None:
    """Remove content past its tenant's retention: finished jobs' prompts and results
    (their id, status, timestamps, model and usage stay), files and batch outputs,
    audit rows, finished webhook deliveries, expired idempotency keys. The control
    process does this every LLMOS_RETENTION_CHECK_S; this runs it now."""
    from llmos_jobs.client.audit import default_actor, record
    from llmos_jobs.services import retention
    from llmos_jobs.settings import get_settings

    db = database()
    report = retention.prune(db, get_settings(), dry_run=dry_run, tenant=tenant)
    if not dry_run:
        record(db, actor=default_actor(), tenant=tenant, action="retention.prune",
               resource_id=None, exc=None)
    if as_json:
        emit_json(report)
        return
    grid = table("kind", "would remove" if dry_run else "removed",
                 title=f"prune{' (dry run)' if dry_run else ''}"
                       f"{f' of tenant {tenant}' if tenant else ''}")
    for kind, number in report.counts.model_dump().items():
        grid.add_row(kind, str(number))
    console.print(grid)


@retention_app.command("show")
def show(
    tenant: str = typer.Option(None, "--tenant", help="The tenant (default: the global "
                                                      "--tenant)."),
    as_json: bool = _JSON,
) -> None:
    """A tenant's retention in days per kind, its own where it set them."""
    from llmos_jobs.services import retention
    from llmos_jobs.settings import get_settings

    policy = retention.policy_of(database(), get_settings(), tenant or current_tenant())
    if as_json:
        emit_json(policy)
        return
    grid = table("kind", "days", "from", title=f"retention of tenant {policy.tenant}")
    for kind in retention.KINDS:
        grid.add_row(kind, f"{getattr(policy, f'{kind}_days'):g}",
                     "tenant" if kind in policy.overridden else "default")
    console.print(grid)


def _days(value: str | None, kind: str) -> float | None:
    if value is None or value == "default":
        return None
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"--{kind}-days takes a number of days or 'default' "
                                 f"(got {value!r})") from None


@retention_app.command("set")
def set_(
    tenant: str = typer.Option(None, "--tenant", help="The tenant (default: the global "
                                                      "--tenant)."),
    jobs_days: str = typer.Option(None, "--jobs-days", help="Days a finished job keeps "
                                  "its prompt and result, or 'default'."),
    files_days: str = typer.Option(None, "--files-days", help="Days files and batch "
                                   "outputs are kept, or 'default'."),
    audit_days: str = typer.Option(None, "--audit-days", help="Days audit rows are kept, "
                                   "or 'default'."),
    webhooks_days: str = typer.Option(None, "--webhooks-days", help="Days finished webhook "
                                      "deliveries are kept, or 'default'."),
    as_json: bool = _JSON,
) -> None:
    """Set a tenant's own retention; kinds not named keep what they had."""
    from llmos_jobs.client.audit import default_actor, record
    from llmos_jobs.services import retention
    from llmos_jobs.settings import get_settings

    given = {"jobs": jobs_days, "files": files_days, "audit": audit_days,
             "webhooks": webhooks_days}
    days = {kind: _days(value, kind) for kind, value in given.items() if value is not None}
    if not days:
        raise typer.BadParameter("name at least one of --jobs-days, --files-days, "
                                 "--audit-days, --webhooks-days")
    who = tenant or current_tenant()
    db = database()
    policy = retention.set_policy(db, get_settings(), who, days)
    record(db, actor=default_actor(), tenant=who, action="retention.set", resource_id=who,
           exc=None)
    if as_json:
        emit_json(policy)
        return
    console.print(f"retention of {who}: " + ", ".join(
        f"{kind} {getattr(policy, f'{kind}_days'):g} d" for kind in retention.KINDS))
