"""`llmos api` (the HTTP API under uvicorn) and `llmos flower` (monitoring)."""

from __future__ import annotations

import typer

from llmos_jobs.cli.output import err_console


def api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs). Callers need an API key."""
    import uvicorn

    from llmos_jobs.api import create_app
    from llmos_jobs.crypto import require_key_ring
    from llmos_jobs.settings import get_settings

    require_key_ring(get_settings())
    uvicorn.run(create_app(get_settings()), host=host, port=port, log_level=log_level)


def _refuse(message: str) -> typer.Exit:
    err_console.print(f"error: {message}", markup=False, style="red")
    return typer.Exit(1)


def flower(
    port: int = typer.Option(5555, "--port", min=1, max=65535),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to listen on."),
) -> None:
    """Run Flower against the configured broker, behind basic auth."""
    from llmos_jobs.settings import get_settings

    settings = get_settings()
    user = settings.flower_user
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    # Flower shows every task and can revoke them and shut workers down: never open.
    if not user or not password:
        raise _refuse("Flower needs basic auth: set LLMOS_FLOWER_USER and "
                      "LLMOS_FLOWER_PASSWORD")
    # Flower keeps credentials as "user:password" entries separated by commas.
    if ":" in user or "," in user or "," in password:
        raise _refuse("LLMOS_FLOWER_USER must not contain ':' or ',', nor "
                      "LLMOS_FLOWER_PASSWORD ','")
    from llmos_jobs.broker import create_app

    app = create_app(settings.resolved_broker_url())
    # The credentials go in-process, never onto a command line that `ps` shows.
    app.start(["flower", f"--port={port}", f"--address={address}",
               f"--basic-auth={user}:{password}"])
