"""Prometheus metrics as a scraper sees them: the API's /metrics and a real worker's
endpoint, over HTTP, parsed by prometheus_client's own parser; compared with the jobs
as the database stores them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen

import httpx
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmos_jobs.errors import NoLiveWorkerWarning
from schemas.common import JobStatus
from schemas.export import JSON_DIR
from tests.support.api_server import ApiServer, free_port, tenant
from tests.support.cli import llmos
from tests.support.stack import Stack
from tests.support.waiting import until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(url, headers=headers or {}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the scrape has none (a label set never seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered_worker(stack: Stack, demo_model_dir: Path) -> Iterator[tuple[str, str]]:
    """A worker of its own model (the transformers engine on the demo model) with a
    metrics port: (its metrics URL, the model)."""
    model = f"metered-{uuid.uuid4().hex[:8]}"
    stack.client().register_model(model, demo_model_dir)
    port = free_port()
    process: Popen[bytes] = stack.start_worker(
        f"{model}-{stack.name}@test", "--model", model, "--concurrency", "4",
        env={"LLMOS_WORKER_METRICS_PORT": str(port)})
    url = f"http://127.0.0.1:{port}/metrics"
    until(lambda: _answers(url), f"worker metrics at {url}", 60, poll_s=0.2)
    yield url, model
    stack.stop_worker(process)


def test_queue_depth_and_active_jobs_are_read_from_the_database(api: ApiServer,
                                                                stack: Stack) -> None:
    owner = tenant()
    model = f"unserved-{uuid.uuid4().hex[:8]}"
    client = stack.client(owner)
    client.register_model(model, stack.data_dir / model, engine="noop")
    url = f"{api.url}/metrics"
    before = scrape(url)
    assert value(before, "llmos_queue_depth", model=model, priority="5") == 0
    n = 3
    with pytest.warns(NoLiveWorkerWarning):  # nobody serves it: the jobs stay queued
        jobs = [client.generate(model=model, prompt=f"wait {i}", max_tokens=2)
                for i in range(n)]
    queued = scrape(url)
    scraped = datetime.now(UTC)
    assert value(queued, "llmos_queue_depth", model=model, priority="5") == n
    assert value(queued, "llmos_jobs_active", status="queued", kind="generate", model=model,
                 tenant=owner, priority="5") == n
    assert value(queued, "llmos_jobs_active", status="running", kind="generate", model=model,
                 tenant=owner, priority="5") == 0
    # A bound, not a threshold: the oldest job was queued once the first was created,
    # and its age was read before the scrape returned.
    age = value(queued, "llmos_queue_oldest_age_seconds", model=model, priority="5")
    first_created = min(client.job(j.id).created_at for j in jobs)
    assert 0 <= age <= (scraped - first_created).total_seconds()

    # `llmos top` reads what the collectors read: the same depth, in JSON that keeps to
    # its published schema, and in the table people read.
    out = llmos("top", "--json", env=stack.env)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    jsonschema.validate(seen, json.loads((JSON_DIR / "system_snapshot.json").read_text()))
    assert [(q["model"], q["priority"], q["depth"]) for q in seen["queues"]
            if q["model"] == model] == [(model, 5, n)]
    assert [a["count"] for a in seen["active"] if a["model"] == model] == [n]
    shown = llmos("top", "--once", env={**stack.env, "COLUMNS": "300"})
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if model in line]
    assert [cell.strip() for cell in row.split("│")[1:4]] == [model, "5", str(n)], row

    # Ended elsewhere than on a worker (cancelled through the client): read, not
    # counted, the gauges follow.
    for job in jobs:
        client.cancel(job.id)
    after = scrape(url)
    assert value(after, "llmos_queue_depth", model=model, priority="5") == 0
    assert value(after, "llmos_jobs_active", status="queued", kind="generate", model=model,
                 tenant=owner, priority="5") == 0


def test_the_worker_counts_each_ended_job_once(stack: Stack,
                                               metered_worker: tuple[str, str]) -> None:
    url, model = metered_worker
    owner = tenant()
    client = stack.client(owner)
    # The model loads with a first job: the figures below are those of the next n.
    [warm] = client.wait([client.generate(model=model, prompt="warm up", max_tokens=2).id],
                         timeout_s=300)
    assert warm.status == JobStatus.succeeded
    ended = {"status": "succeeded", "kind": "generate", "model": model, "tenant": owner,
             "priority": "5"}
    # The worker counts a job just after its row says it ended: the scrapes wait for the
    # count (which moves after the job's other figures), not for the row.
    before = _scrape_once_ended(url, ended, 1)
    n = 4
    jobs = [client.generate(model=model, prompt=f"metered prompt number {i}",
                            max_tokens=3 + i) for i in range(n)]
    done = client.wait([j.id for j in jobs], timeout_s=300)
    assert all(j.status == JobStatus.succeeded for j in done), done
    after = _scrape_once_ended(url, ended, 1 + n)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("llmos_jobs_ended_total", status="succeeded", kind="generate", model=model,
                 tenant=owner, priority="5") == n
    assert moved("llmos_job_queue_wait_seconds_count", model=model, priority="5") == n
    assert moved("llmos_job_latency_seconds_count", kind="generate", model=model) == n
    # One generation per job: one first token each.
    assert moved("llmos_generation_time_to_first_token_seconds_count", model=model) == n
    # The independent reference: the usage each job's row holds.
    usages = [j.usage for j in done]
    assert all(u is not None for u in usages)
    prompt = sum(u.prompt_tokens for u in usages if u is not None)
    completion = sum(u.completion_tokens for u in usages if u is not None)
    cached = sum(u.cached_tokens for u in usages if u is not None)
    assert moved("llmos_prompt_tokens_total", model=model, tenant=owner) == prompt
    assert moved("llmos_completion_tokens_total", model=model, tenant=owner) == completion
    assert moved("llmos_cached_tokens_total", model=model, tenant=owner) == cached
    # Each forward pass gives every request in it one token: the batch sizes of all
    # passes add up to the tokens generated, however the jobs were batched.
    assert moved("llmos_engine_batch_size_sum", model=model) == completion
    # The worker's own process, from prometheus_client's process collector.
    assert value(after, "process_resident_memory_bytes") > 0


def test_a_prefork_worker_sums_its_children(stack: Stack, tmp_path: Path) -> None:
    """Jobs run in the pool's child processes; the main process's endpoint adds up
    their counts (prometheus_client's multiprocess mode), and a previous run's files in
    the directory are wiped rather than added in."""
    owner, model = tenant(), f"prefork-metered-{uuid.uuid4().hex[:8]}"
    client = stack.client(owner)
    client.register_model(model, stack.data_dir / model, engine="noop")
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    # A previous run's count of the very series this test reads.
    stale = subprocess.run(
        [sys.executable, "-c", "import sys; from llmos_jobs import metrics; "
         "metrics.JOBS_ENDED.labels('succeeded', 'generate', *sys.argv[1:]).inc(100)",
         model, owner, "5"], env={**os.environ, **env}, capture_output=True, text=True)
    assert stale.returncode == 0, stale.stderr
    assert list(directory.glob("counter_*.db"))
    port = free_port()
    process = stack.start_worker(
        f"{model}-{stack.name}@test", "--model", model, "--pool", "prefork",
        "--concurrency", "2", env={**env, "LLMOS_WORKER_METRICS_PORT": str(port)})
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        until(lambda: _answers(url), f"worker metrics at {url}", 60, poll_s=0.2)
        n = 5
        done = client.wait([client.generate(model=model, prompt=f"one two {'x ' * i}",
                                            max_tokens=2 + i).id for i in range(n)],
                           timeout_s=300)
        assert all(j.status == JobStatus.succeeded for j in done), done
        # The count moves just after the row ends (and after the job's other figures).
        after = _scrape_once_ended(url, {"status": "succeeded", "kind": "generate",
                                         "model": model, "tenant": owner, "priority": "5"}, n)
    finally:
        stack.stop_worker(process)
    assert value(after, "llmos_jobs_ended_total", status="succeeded", kind="generate",
                 model=model, tenant=owner, priority="5") == n
    completion = sum(j.usage.completion_tokens for j in done if j.usage is not None)
    prompt = sum(j.usage.prompt_tokens for j in done if j.usage is not None)
    assert value(after, "llmos_completion_tokens_total", model=model, tenant=owner) == completion
    assert value(after, "llmos_prompt_tokens_total", model=model, tenant=owner) == prompt
    assert value(after, "llmos_job_latency_seconds_count", kind="generate", model=model) == n


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _scrape_once_ended(url: str, labels: dict[str, str], count: int) -> Samples:
    """The worker's metrics once it has counted at least ``count`` jobs ended with
    ``labels`` (more would show in the assertions)."""
    def counted() -> Samples | None:
        samples = scrape(url)
        return samples if value(samples, "llmos_jobs_ended_total", **labels) >= count \
            else None

    return until(counted, f"the worker counted {count} ended job(s)", 60, poll_s=0.1)
