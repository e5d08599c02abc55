"""Every Prometheus metric llmos exports, defined here and nowhere else (docs/metrics.md).

Two kinds:

- Events, counted where they happen, in the process where they happen: jobs ending on
  a worker, their waits and latencies, tokens, engine batch sizes, webhook attempts.
  Their objects live in ``REGISTRY``; creating them connects to nothing and they are
  process-wide by nature (prometheus_client's multiprocess mode keys its files by the
  process id, whoever created the object). A prefork worker exports them through
  ``multiprocess_registry``.
- State, read from the database at scrape time (``DatabaseCollector``): jobs queued and
  running, queue depth and age, worker load, and the workers each model needs (the
  autoscaling signal, llmos_jobs.scaling). Read, not counted, so they cannot drift;
  the same readings (``llmos_jobs.db.observe``, ``llmos_jobs.db.scale_demand``) feed
  `llmos top` and `llmos scale recommend`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from llmos_jobs.db import observe, scale_demand
from llmos_jobs.db.session import Database
from llmos_jobs.db.types import utcnow
from llmos_jobs.scaling import ScalePolicy
from schemas.observe import SystemSnapshot
from schemas.scale import ScaleReport

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds, from a few milliseconds (a cached CPU generation) to the job time limit.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
            1800)

JOBS_ENDED = Counter(
    "llmos_jobs_ended",
    "Jobs that reached a final status on a worker (expired ones: where they expired).",
    ["status", "kind", "model", "tenant", "priority"], registry=REGISTRY)
QUEUE_WAIT = Histogram(
    "llmos_job_queue_wait_seconds",
    "From the job's current message (queued_at) to a worker claiming it, of jobs ended.",
    ["model", "priority"], buckets=_SECONDS, registry=REGISTRY)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmos_generation_time_to_first_token_seconds",
    "From handing a generation to the engine to its first generated token.",
    ["model"], buckets=_SECONDS, registry=REGISTRY)
LATENCY = Histogram(
    "llmos_job_latency_seconds", "From a job's creation to its final status, of jobs ended.",
    ["kind", "model"], buckets=_SECONDS, registry=REGISTRY)
PROMPT_TOKENS = Counter(
    "llmos_prompt_tokens", "Prompt tokens of jobs ended.", ["model", "tenant"],
    registry=REGISTRY)
COMPLETION_TOKENS = Counter(
    "llmos_completion_tokens", "Generated tokens of jobs ended.", ["model", "tenant"],
    registry=REGISTRY)
CACHED_TOKENS = Counter(
    "llmos_cached_tokens", "Prompt tokens of jobs ended that the prefix cache served.",
    ["model", "tenant"], registry=REGISTRY)
BATCH_SIZE = Histogram(
    "llmos_engine_batch_size", "Requests in one forward pass of an engine.",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter(
    "llmos_webhook_delivery_attempts",
    "Webhook delivery attempts by outcome: delivered, retry (another attempt is "
    "scheduled), failed (the schedule ran out), gone (the receiver answered 410).",
    ["outcome"], registry=REGISTRY)
QUOTA_REFUSALS = Counter(
    "llmos_quota_refusals",
    "Submissions refused because the tenant was over a quota, by the quota's name "
    "(max_priority, max_queued, tokens_per_minute).",
    ["tenant", "limit"], registry=REGISTRY)


def job_ended(job: observe.EndedJob, *, now: datetime | None = None) -> None:
    """Count ``job``, read back after its final status was committed. The count of
    ended jobs moves last: a scrape that sees a job ended sees all of its figures."""
    priority = str(job.priority)
    if job.started_at is not None:
        since = job.queued_at or job.created_at
        QUEUE_WAIT.labels(job.model, priority).observe(
            max(0.0, (job.started_at - since).total_seconds()))
    finished = job.finished_at or now or utcnow()
    LATENCY.labels(job.kind, job.model).observe(
        max(0.0, (finished - job.created_at).total_seconds()))
    PROMPT_TOKENS.labels(job.model, job.tenant).inc(job.prompt_tokens)
    COMPLETION_TOKENS.labels(job.model, job.tenant).inc(job.completion_tokens)
    CACHED_TOKENS.labels(job.model, job.tenant).inc(job.cached_tokens)
    JOBS_ENDED.labels(job.status, job.kind, job.model, job.tenant, priority).inc()


class DatabaseCollector(Collector):
    """Jobs queued and running, queue depth and age, worker load: read at each scrape."""

    def __init__(self, database: Database, scale: ScalePolicy | None = None) -> None:
        self.database = database
        self.scale = scale or ScalePolicy()

    def describe(self) -> Iterable[Metric]:
        # Named without reading anything: registering the collector touches no database.
        return _families(None)

    def collect(self) -> Iterable[Metric]:
        with self.database.session() as session:
            now = utcnow()
            seen = observe.snapshot(session=session, now=now)
            needs = scale_demand.scale_report(session=session, now=now, policy=self.scale)
        return _families(seen, needs)


def _families(seen: SystemSnapshot | None, needs: ScaleReport | None = None
              ) -> list[Metric]:
    active = GaugeMetricFamily(
        "llmos_jobs_active", "Jobs queued or running now.",
        labels=["status", "kind", "model", "tenant", "priority"])
    depth = GaugeMetricFamily(
        "llmos_queue_depth", "Jobs queued (waiting for a worker) per model and priority.",
        labels=["model", "priority"])
    age = GaugeMetricFamily(
        "llmos_queue_oldest_age_seconds", "Age of the oldest queued job per model and "
        "priority, from its current message.", labels=["model", "priority"])
    up = GaugeMetricFamily("llmos_worker_up", "1 while the worker's heartbeat row says "
                           "alive, 0 once it stopped or was declared dead.", labels=["worker"])
    running = GaugeMetricFamily("llmos_worker_running_jobs", "Jobs a worker holds running.",
                                labels=["worker"])
    heartbeat = GaugeMetricFamily("llmos_worker_heartbeat_age_seconds",
                                  "Since a worker's last heartbeat.", labels=["worker"])
    needed = GaugeMetricFamily(
        "llmos_model_workers_needed", "Workers each model needs now, from its queued and "
        "running jobs, their deadlines and measured throughput per worker (docs/scale.md): "
        "the autoscaling signal.", labels=["model"])
    for m in needs.models if needs is not None else ():
        needed.add_metric([m.model], m.workers_needed)
    if seen is not None:
        for a in seen.active:
            active.add_metric([a.status, a.kind, a.model, a.tenant, str(a.priority)], a.count)
        for q in seen.queues:
            depth.add_metric([q.model, str(q.priority)], q.depth)
            age.add_metric([q.model, str(q.priority)], q.oldest_age_s)
        for w in seen.workers:
            up.add_metric([w.name], 1.0 if w.state == "alive" else 0.0)
            running.add_metric([w.name], w.running)
            heartbeat.add_metric([w.name], w.heartbeat_age_s)
    return [active, depth, age, up, running, heartbeat, needed]


class GpuCollector(Collector):
    """This process's GPU (memory, utilisation) through NVML, when nvidia-ml-py is
    installed and a driver answers; nothing otherwise."""

    def __init__(self, index: int) -> None:
        self.index = index

    def describe(self) -> Iterable[Metric]:
        return _gpu_families()

    def collect(self) -> Iterable[Metric]:
        families = _gpu_families()
        try:
            # Optional (the gpu extra): a machine without it exports no GPU metrics.
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            # CUDA_VISIBLE_DEVICES renumbers devices for CUDA, not for NVML.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", str(self.index)).split(",")[0]
            handle = nvml.nvmlDeviceGetHandleByIndex(int(visible))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception:  # no nvidia-ml-py, or no driver: export nothing, not an error
            return []
        used, total, busy = families
        used.add_metric([visible], float(memory.used))
        total.add_metric([visible], float(memory.total))
        busy.add_metric([visible], float(util.gpu) / 100.0)
        return families


def _gpu_families() -> list[GaugeMetricFamily]:
    return [
        GaugeMetricFamily("llmos_gpu_memory_used_bytes", "GPU memory in use.",
                          labels=["gpu"]),
        GaugeMetricFamily("llmos_gpu_memory_total_bytes", "GPU memory in all.",
                          labels=["gpu"]),
        GaugeMetricFamily("llmos_gpu_utilization_ratio", "Share of the last sample period "
                          "the GPU was busy (0-1).", labels=["gpu"]),
    ]


def state_registry(database: Database, *, scale: ScalePolicy | None = None
                   ) -> CollectorRegistry:
    """What the API serves: the database's state, its own process's CPU and memory, and
    its quota refusals (the other events are not its own: jobs end on workers, webhooks
    are sent by the control process)."""
    registry = CollectorRegistry()
    # The one event counted where submissions arrive: quota refusals.
    registry.register(QUOTA_REFUSALS)
    _add_common(registry, gpu=None, database=database, scale=scale)
    return registry


def worker_registry(*, gpu: int | None, database: Database | None,
                    scale: ScalePolicy | None = None) -> CollectorRegistry:
    """What a single-process worker (threads or solo pool) serves: its events, its
    process's CPU and memory, its GPU; and the database's state when given one."""
    registry = CollectorRegistry()
    registry.register(_Events())
    _add_common(registry, gpu=gpu, database=database, scale=scale)
    return registry


def multiprocess_registry(*, gpu: int | None, database: Database | None
                          ) -> CollectorRegistry:
    """What a prefork worker serves: the events of all its processes, summed from
    PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode); the CPU and
    memory of the main process only (process collectors do not aggregate)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    _add_common(registry, gpu=gpu, database=database)
    return registry


def _add_common(registry: CollectorRegistry, *, gpu: int | None,
                database: Database | None, scale: ScalePolicy | None = None) -> None:
    ProcessCollector(registry=registry)
    if gpu is not None:
        registry.register(GpuCollector(gpu))
    if database is not None:
        registry.register(DatabaseCollector(database, scale))


class _Events(Collector):
    """REGISTRY's metrics, as a collector another registry can hold."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exported_names() -> set[str]:
    """Every sample name llmos can export (what a dashboard's queries may name)."""
    registry = worker_registry(gpu=0, database=None)
    families: list[Metric] = [*REGISTRY.collect(), *_families(None), *_gpu_families()]
    families += [m for m in registry.collect() if m.name.startswith("process_")]
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                                  "_created")}
    return {family.name + suffix for family in families
            for suffix in suffixes.get(family.type, ("",))}
