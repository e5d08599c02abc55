"""The app factory. Building the app connects to nothing; the first start brings the
database schema up to date (in the lifespan), and each route opens what it needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute

from llmos_jobs.api.audit import AuditMiddleware
from llmos_jobs.api.bodies import Health
from llmos_jobs.api.errors import ERROR_RESPONSES, install_error_handlers
from llmos_jobs.api.gate import BodyLimits, Gate
from llmos_jobs.api.idempotency import IdempotencyMiddleware
from llmos_jobs.api.metrics import install_metrics
from llmos_jobs.api.routes import (
    batches,
    chat,
    completions,
    deployments,
    embeddings,
    files,
    jobs,
    keys,
    mindspace_state,
    mindspaces,
    models,
    retention,
    tasks,
    tenants,
    webhooks,
    workers,
)
from llmos_jobs.api.state import ApiState
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.settings import Settings

DESCRIPTION = """\
Submit and follow language jobs, task presets (`/v1/tasks/{kind}`: summarise, translate,
answer, classify, extract), mindspace turns and model operations, and call the
OpenAI-compatible `/v1/chat/completions`, `/v1/completions` (both with `stream`),
`/v1/embeddings` and `/v1/models`. `GET /v1/jobs/{id}/events` streams any job's
status and tokens.

Every route but `/healthz`, `/metrics` (Prometheus; LLMOS_METRICS_TOKEN guards it when
set) and these docs needs `Authorization: Bearer <key>`; an
operator creates keys with `llmos key create --tenant T --scopes ...` (a tenant's) or
`llmos key create --operator` (models, workers, every tenant's keys, priority 0; acts
for the tenant named in `X-Llmos-Tenant`). Errors are OpenAI-style:
`{"error": {"message", "type", "param", "code"}}`.

Every POST takes an `Idempotency-Key` header: sent again with the same body within 24 h
(LLMOS_IDEMPOTENCY_TTL_S) it answers what the first request answered and creates
nothing (`Idempotent-Replayed: true`); the same key with another body answers 422.
"""

ROUTERS = (jobs, tasks, mindspaces, mindspace_state, models, deployments, workers, chat,
           completions, keys, files, batches, webhooks, tenants, retention, embeddings)


def create_app(settings: Settings) -> FastAPI:
    state = ApiState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(upgrade, state.database)
        yield

    app = FastAPI(title="llmos", version="1", description=DESCRIPTION, lifespan=lifespan,
                  responses=ERROR_RESPONSES)
    app.state.llmos = state
    install_error_handlers(app)
    # Added first, so it runs inside the audit middleware: its refusals are audited.
    routes = [route for module in ROUTERS for route in module.router.routes
              if isinstance(route, APIRoute)]
    # Innermost: it sees the caller's key (from the gate) and the route's own answer.
    app.add_middleware(IdempotencyMiddleware, routes=routes, idempotency=state.idempotency,
                       default_tenant=settings.tenant)
    app.add_middleware(Gate, routes=routes, database=state.database,
                       limits=BodyLimits(json_bytes=settings.api_max_body_bytes,
                                         upload_bytes=settings.batch_max_bytes,
                                         json_depth=settings.limit_json_depth))
    app.add_middleware(AuditMiddleware, database=state.database,
                       denied_per_minute=settings.audit_denied_per_minute)
    for module in ROUTERS:
        app.include_router(module.router)

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """Liveness: the process answers. Needs no key."""
        return Health()

    install_metrics(app, settings=settings, database=state.database)
    return app
