"""`llmos scale recommend`: the workers each model needs now, and why.

It reads what the gauge llmos_model_workers_needed reads (llmos_jobs.db.scale_demand)
and applies the same formula (llmos_jobs.scaling), so the two never disagree."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from llmos_jobs.cli.output import console, emit_json, table
from llmos_jobs.cli.state import database
from llmos_jobs.errors import NotFound

if TYPE_CHECKING:
    from schemas.scale import ScaleReport

scale_app = typer.Typer(help="Autoscaling: the workers each model needs (docs/scale.md).",
                        no_args_is_help=True)


@scale_app.command("recommend")
def recommend(
    model: str = typer.Option(None, "--model", help="Only this model."),
    as_json: bool = typer.Option(False, "--json", help="Print the scale_report schema "
                                 "(schemas/json) as JSON."),
) -> None:
    """Per model: jobs queued and running (from the database), live workers, measured
    throughput per worker (jobs per busy worker-second over LLMOS_SCALE_WINDOW_S), the
    workers needed now and which term decided it: running (keep the workers of running
    jobs), backlog (start every queued job within LLMOS_SCALE_TARGET_S) or deadline (a
    queued job's deadline comes sooner). The same figure is exported as the Prometheus
    gauge llmos_model_workers_needed{model}, which a KEDA ScaledObject can scale on."""
    from llmos_jobs.db.scale_demand import scale_report
    from llmos_jobs.db.types import utcnow
    from llmos_jobs.settings import get_settings

    db = database()
    with db.session() as session:
        report = scale_report(session=session, now=utcnow(),
                              policy=get_settings().scale_policy(), model=model)
    if model is not None and not report.models:
        raise NotFound(f"model {model!r} is not registered and has no queued or running "
                       "jobs (llmos model list)")
    if as_json:
        emit_json(report)
        return
    console.print(render(report))


def render(report: ScaleReport) -> object:
    grid = table("model", "queued", "running", "workers", "jobs/s per worker", "needed",
                 "why", title=f"workers needed (start queued jobs within "
                              f"{report.target_s:g} s)", unbroken=("model",))
    for m in report.models:
        rate = f"{m.jobs_per_worker_s:.3g}" + ("" if m.measured else " (default)")
        grid.add_row(m.model, str(m.queued), str(m.running), str(m.live_workers), rate,
                     str(m.workers_needed), f"{m.dominant}: {m.why}")
    return grid
