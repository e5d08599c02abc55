"""The metrics' contract with what reads them: the Grafana dashboard and docs/metrics.md
name only metrics the code exports; /metrics keeps to its token; optional collectors
stay silent where their library is missing."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from llmos_jobs import metrics
from llmos_jobs.api.app import create_app
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookDelivery
from llmos_jobs.errors import LlmosError
from llmos_jobs.services.webhooks.delivery import attempt_delivery
from llmos_jobs.services.webhooks.signing import tenant_secret
from llmos_jobs.settings import Settings
from tests.support.api_server import free_port
from tests.support.webhook_receiver import Receiver
from workers.metrics_endpoint import MetricsEndpoint, prefork_registry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "llmos.json"
DOCS = ROOT / "docs" / "metrics.md"
PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "rate", "increase", "histogram_quantile"}


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _names_in(query: str) -> tuple[set[str], set[str]]:
    """(metric names, function names) of a PromQL query: what is left once label
    groupings, selectors, ranges and numbers are taken out."""
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", query)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b\d+(\.\d+)?\b", " ", bare)
    words = re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", bare)
    found = [(m.group(0).rstrip("( "), m.group(0).endswith("(")) for m in words]
    return {w for w, call in found if not call}, {w for w, call in found if call}


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = metrics.exported_names()
    queries = _queries()
    assert len(queries) >= 15
    for query in queries:
        names, functions = _names_in(query)
        assert names, query
        assert names <= exported, (query, names - exported)
        assert functions <= PROMQL_FUNCTIONS, (query, functions - PROMQL_FUNCTIONS)


def test_the_dashboard_shows_every_llmos_metric() -> None:
    queried = set().union(*(_names_in(q)[0] for q in _queries()))
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in queried}
    exported = {re.sub(r"_(total|bucket|count|sum|created)$", "", n)
                for n in metrics.exported_names() if n.startswith("llmos_")}
    assert exported <= families, exported - families


def test_the_docs_list_every_metric_and_no_other() -> None:
    documented = set(re.findall(r"`(llmos_[a-z0-9_]+)`", DOCS.read_text()))
    samples = {n for n in metrics.exported_names()
               if n.startswith("llmos_") and not n.endswith("_created")}
    # Histograms are documented by their base name; counters by their _total sample.
    expected = {re.sub(r"_(bucket|count|sum)$", "", n) for n in samples}
    assert documented == expected, documented ^ expected


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'llmos.db'}", data_dir=tmp_path)
    # The schema made here: the client below does not run the app's lifespan.
    upgrade(Database.from_settings(settings))
    return settings


@pytest.fixture
def guarded(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr("scrape-me")}))
    yield TestClient(app)


def test_metrics_answer_only_their_token_when_one_is_set(guarded: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me"}):
        refused = guarded.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"]["code"] == "invalid_metrics_token"
    answered = guarded.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert answered.status_code == 200
    families = {f.name for f in text_string_to_metric_families(answered.text)}
    assert {"llmos_queue_depth", "llmos_jobs_active", "process_resident_memory_bytes"
            } <= families


def test_metrics_are_open_without_a_token_and_stay_out_of_the_api_schema(
        settings: Settings) -> None:
    http = TestClient(create_app(settings))
    assert http.get("/metrics").status_code == 200
    assert "/metrics" not in http.get("/openapi.json").json()["paths"]


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None,
                    reason="nvidia-ml-py is installed here")
def test_the_gpu_collector_is_silent_without_nvidia_ml_py() -> None:
    assert list(metrics.GpuCollector(0).collect()) == []


def test_a_prefork_worker_with_metrics_needs_a_multiprocess_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    with pytest.raises(LlmosError, match=metrics.MULTIPROC_ENV):
        prefork_registry(gpu=None)


def test_webhook_attempts_are_counted_by_outcome(settings: Settings) -> None:
    """Three deliveries to a real receiver on 127.0.0.1, each attempt made by hand: the
    counter moves by the outcomes the delivery rows end with."""
    settings = settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1",
                                           "webhook_retry_delays": "0"})
    database = Database.from_settings(settings)
    with database.session() as session:
        secret = tenant_secret(session=session, tenant="hooked").secret
    before = {o: _attempts(o) for o in ("delivered", "retry", "failed", "gone")}
    scripts = {"recovers": [(500, {})], "gone": [(410, {})], "fails": [(500, {}), (500, {})]}
    ended = {}
    for name, script in scripts.items():
        receiver = Receiver(secret=secret, script=list(script)).start()
        try:
            with database.session() as session:
                row = WebhookDelivery(tenant="hooked", event_type="batch.completed",
                                      url=receiver.url, payload={"name": name})
                session.add(row)
                session.flush()
                delivery_id = row.id
            while attempt_delivery(delivery_id=delivery_id, settings=settings,
                                   database=database) is not None:
                pass
        finally:
            receiver.stop()
        with database.session() as session:
            delivered = session.get(WebhookDelivery, delivery_id)
            assert delivered is not None
            ended[name] = (delivered.status, delivered.attempts)
    assert ended == {"recovers": (DeliveryStatus.delivered, 2),
                     "gone": (DeliveryStatus.gone, 1), "fails": (DeliveryStatus.failed, 2)}
    moved = {o: _attempts(o) - before[o] for o in before}
    assert moved == {"delivered": 1, "retry": 2, "failed": 1, "gone": 1}


def _attempts(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("llmos_webhook_delivery_attempts_total",
                                             {"outcome": outcome}) or 0.0


def test_the_control_endpoint_serves_state_and_webhooks_over_http(settings: Settings) -> None:
    endpoint = MetricsEndpoint.for_control(port=free_port(),
                                           database=Database.from_settings(settings))
    endpoint.start()
    try:
        answered = httpx.get(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=30)
    finally:
        endpoint.stop()
    assert answered.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(answered.text)}
    assert {"llmos_queue_depth", "llmos_worker_up", "llmos_webhook_delivery_attempts",
            "process_resident_memory_bytes"} <= set(families)
    with pytest.raises(httpx.TransportError):  # stopped: the port is closed
        httpx.get(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5)
