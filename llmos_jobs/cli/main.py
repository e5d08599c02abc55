"""The `llmos` command."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer

from llmos_jobs.cli import (
    access,
    batch,
    deployments,
    encryption,
    health,
    jobs,
    mindspaces,
    models,
    retention,
    scale,
    serve,
    stack,
    tasks,
    tenants,
    top,
    webhooks,
)
from llmos_jobs.cli.output import err_console
from llmos_jobs.cli.state import set_tenant
from llmos_jobs.errors import LlmosError, NoLiveWorkerWarning

app = typer.Typer(
    help="llmos: run large language models as shared infrastructure.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
app.command("submit")(jobs.submit)
app.add_typer(jobs.job_app, name="job")
app.command("summarise")(tasks.summarise)
app.command("translate")(tasks.translate)
app.command("answer")(tasks.answer)
app.command("classify")(tasks.classify)
app.command("extract")(tasks.extract)
deployments.register_commands(models.model_app)
app.add_typer(models.model_app, name="model")
app.add_typer(mindspaces.mindspace_app, name="mindspace")
app.command("worker")(stack.worker)
app.command("control")(stack.control)
app.command("workers")(stack.workers)
app.command("up")(stack.up)
app.command("demo")(stack.demo)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
db_app.command("upgrade")(stack.db_upgrade)
app.add_typer(db_app, name="db")
app.add_typer(encryption.encryption_app, name="encryption")
app.add_typer(health.health_app, name="health")
app.add_typer(batch.batch_app, name="batch")
app.command("api")(serve.api)
app.command("flower")(serve.flower)
app.add_typer(access.key_app, name="key")
app.add_typer(access.audit_app, name="audit")
app.add_typer(webhooks.webhook_app, name="webhook")
app.add_typer(tenants.tenant_app, name="tenant")
app.command("prune")(retention.prune)
app.add_typer(retention.retention_app, name="retention")
app.command("top")(top.top)
app.add_typer(scale.scale_app, name="scale")


@app.callback()
def _global(
    tenant: str = typer.Option(None, "--tenant", envvar="LLMOS_TENANT",
                               help="Act as this tenant (default: 'default')."),
) -> None:
    set_tenant(tenant)


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    err_console.print(f"warning: {message}", markup=False, style="yellow")


def _for_the_user(exc: Exception) -> str | None:
    """The one line to print for a mistake the user can fix; None for a bug, which
    keeps its traceback."""
    if isinstance(exc, LlmosError | TimeoutError):
        return str(exc)
    # Looked up, not imported: a command that never loaded them cannot raise them.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError) \
            and exc.title == "Settings":
        problems = "; ".join(f"LLMOS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in exc.errors())
        return f"invalid setting: {problems}"
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.OperationalError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"the database cannot be used: {reason}"
    return None


def main() -> None:
    warnings.simplefilter("always", NoLiveWorkerWarning)
    warnings.showwarning = _show_warning
    try:
        app()
    except Exception as exc:
        message = _for_the_user(exc)
        if message is None:
            raise
        err_console.print(f"error: {message}", markup=False, style="red")
        sys.exit(1)


if __name__ == "__main__":
    main()
