"""`llmos health ...`: the checks that container health checks and Kubernetes probes run.
Each exits 0 when what it names answers and 1 (with the reason on stderr) when not."""

from __future__ import annotations

import typer

from llmos_jobs.cli.output import console, err_console

health_app = typer.Typer(
    help="Health checks for containers and probes: exit 0 when healthy, 1 when not.",
    no_args_is_help=True,
)


def _unhealthy(message: str) -> typer.Exit:
    err_console.print(f"unhealthy: {message}", markup=False, style="red")
    return typer.Exit(1)


def _answers(target: str, timeout_s: float) -> None:
    import httpx

    try:
        response = httpx.get(target, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise _unhealthy(f"{target}: {exc}") from None
    if response.status_code != 200:
        raise _unhealthy(f"{target} answered {response.status_code}")
    console.print(f"healthy: {target}")


_TIMEOUT = typer.Option(5.0, "--timeout", min=0.1, help="Seconds to wait.")


@health_app.command("api")
def api(
    url: str = typer.Option("http://127.0.0.1:8000", "--url",
                            help="Where `llmos api` listens (inside its container: the "
                                 "default)."),
    timeout_s: float = _TIMEOUT,
) -> None:
    """The HTTP API answers GET /healthz with 200."""
    _answers(f"{url.rstrip('/')}/healthz", timeout_s)


@health_app.command("flower")
def flower(
    url: str = typer.Option("http://127.0.0.1:5555", "--url",
                            help="Where `llmos flower` listens."),
    timeout_s: float = _TIMEOUT,
) -> None:
    """Flower answers GET /healthcheck (which needs no login) with 200."""
    _answers(f"{url.rstrip('/')}/healthcheck", timeout_s)


@health_app.command("worker")
def worker(
    name: str = typer.Argument(..., help="The --name it runs under: a worker's, or "
                                         "`llmos control`'s."),
    timeout_s: float = _TIMEOUT,
) -> None:
    """The Celery worker NAME (an inference worker or the control process) answers a
    ping through the broker: its process runs, reaches the broker and consumes."""
    from kombu.exceptions import OperationalError

    from llmos_jobs.broker import create_app
    from llmos_jobs.settings import get_settings

    app = create_app(get_settings().resolved_broker_url())
    try:
        replies = app.control.ping(destination=[name], timeout=timeout_s)
    except OperationalError as exc:
        raise _unhealthy(f"the broker cannot be reached: {exc}") from None
    finally:
        app.close()
    if not any(name in reply for reply in replies):
        raise _unhealthy(f"{name} did not answer a ping within {timeout_s:g}s")
    console.print(f"healthy: {name}")
