"""`GET /metrics`: the Prometheus exposition of the database's state (jobs queued and
running, queue depth and age, workers) and of the API process itself.

Outside the tenant keys (a scraper is no tenant, and an operator key in a Prometheus
configuration would be a key to everything): open by default, as Prometheus targets
usually are, or guarded by a token of its own, LLMOS_METRICS_TOKEN, sent as
`Authorization: Bearer <token>` (Prometheus's `authorization` scrape setting). Its
labels name tenants and models: put the API behind the token, or keep /metrics off the
public network, where tenants must not learn of each other (docs/metrics.md)."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmos_jobs import metrics
from llmos_jobs.api.errors import ApiError
from llmos_jobs.db.session import Database
from llmos_jobs.settings import Settings

PATH = "/metrics"


def install_metrics(app: FastAPI, *, settings: Settings, database: Database) -> None:
    registry = metrics.state_registry(database, scale=settings.scale_policy())
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    # Not in the OpenAPI schema: it is the Prometheus text format for scrapers, not
    # part of the JSON API that SDKs are generated from.
    @app.get(PATH, include_in_schema=False)
    def prometheus_metrics(authorization: str = Header(default="")) -> Response:
        """Prometheus metrics (docs/metrics.md). Needs no API key; when
        LLMOS_METRICS_TOKEN is set, `Authorization: Bearer <that token>`."""
        if token is not None:
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    presented.strip().encode(), token.encode()):
                raise ApiError(401, "missing or wrong metrics token: send 'Authorization: "
                                    "Bearer <LLMOS_METRICS_TOKEN>'",
                               type_="authentication_error", code="invalid_metrics_token")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
