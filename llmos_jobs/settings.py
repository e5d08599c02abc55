"""The one settings class. Every variable is flat: ``LLMOS_<FIELD>``."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker_config import transport_of
from llmos_jobs.errors import BrokerUnavailable
from llmos_jobs.scaling import ScalePolicy

STACK_STATE_FILE = "stack.json"
# Comma-separated non-negative seconds, e.g. "1,2,4.5".
_DELAYS = r"^\s*\d+(\.\d+)?(\s*,\s*\d+(\.\d+)?)*\s*$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOS_", extra="ignore")

    # repr=False: the URLs may hold passwords; print them through db.session.masked.
    broker_url: str | None = Field(
        default=None, repr=False,
        description="redis://… or amqp://… (RabbitMQ, docs/brokers.md); unset: the stack "
                    "started by `llmos up`"
    )
    stream_url: str | None = Field(
        default=None, repr=False,
        description="the Redis that holds jobs' live events (streamed tokens); unset: the "
                    "broker's Redis (a RabbitMQ broker then streams nothing)")
    database_url: str | None = Field(
        default=None, repr=False,
        description="SQLAlchemy URL; unset: a SQLite file in the data directory"
    )
    database_pool_size: int = Field(
        default=5, ge=1, description="PostgreSQL connections each process keeps open per "
                                     "database (up to 10 more while busy)")
    tenant: str = Field(default="default", min_length=1)
    data_dir: Path = Field(default=Path.home() / ".llmos")
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    worker_dead_after_s: float = Field(
        default=15.0, gt=0, description="a worker silent this long is dead; its jobs are re-run"
    )
    max_attempts: int = Field(default=3, ge=1, description="deliveries before a job is poison")
    batch_expiry_check_s: float = Field(
        default=10.0, gt=0, description="control: how often batches are checked for expiry")
    reconcile_grace_s: float = Field(
        default=30.0, gt=0, description="work queued (or pending) this long whose message the "
                                        "broker lacks is sent again")
    broker_sentinel_master: str | None = Field(
        default=None, description="the master's name when LLMOS_BROKER_URL names Redis "
                                  "Sentinels (sentinel://HOST:26379;sentinel://HOST2:26379)")
    job_time_limit_s: int = Field(default=600, ge=1)
    noop_delay_ms: int = Field(default=0, ge=0, description="no-op engine: time per request")
    noop_echo: bool = Field(
        default=False, description="no-op engine: reply with the request's last message")
    noop_log: Path | None = Field(
        default=None, description="no-op engine: a file it appends one line to per request "
                                  "it computes (what ran, how often, independent of the "
                                  "database)")
    noop_gate: Path | None = Field(
        default=None, description="no-op engine: each request, once its time is up, also "
                                  "waits until this file exists (a test decides when the "
                                  "work ends)")
    encryption_keys: SecretStr | None = Field(
        default=None, description="Fernet keys, comma-separated, newest first"
    )
    turn_routing: Literal["affinity", "round_robin"] = Field(
        default="affinity", description="where mindspace turns go (round_robin: for comparison)"
    )
    batch_max_lines: int = Field(default=50_000, ge=1, description="requests per batch file")
    batch_max_bytes: int = Field(default=200 * 2**20, ge=1, description="bytes per uploaded file")
    prefix_cache_mb: int = Field(default=1024, ge=1, description="prefix KV cache per model")
    model_pool_gb: float | None = Field(
        default=None, gt=0, description="per worker process: the most gigabytes of model "
                                        "weights loaded at once (least recently used idle "
                                        "model unloaded first); unset: no bound")
    model_keep_alive: str = Field(
        default="-1", pattern=r"^-?\d+(\.\d+)?[smh]?$",
        description="how long a model stays loaded idle when its registration names no "
                    "keep_alive (Ollama style: 5m, 30s, 0 unloads after each job, negative "
                    "keeps it forever)")
    max_batch: int = Field(default=32, ge=1, description="requests per engine batch")
    batch_window_ms: float = Field(default=5.0, ge=0, description="wait for a batch to fill")
    api_wait_timeout_s: float = Field(
        default=120.0, gt=0,
        description="HTTP API: how long a waiting call (chat completions, turns) waits",
    )
    api_max_body_bytes: int = Field(
        default=2 * 2**20, ge=1024, description="HTTP API: bytes of a JSON request body "
                                                "(uploads: batch_max_bytes)")
    audit_denied_per_minute: int = Field(
        default=20, ge=1, description="HTTP API: audit rows of denied calls per source "
                                      "(key, else address) and minute; more are not written")
    # Sizes of the fields producers send (llmos_jobs/limits.py names them in refusals).
    limit_prompt_bytes: int = Field(default=512 * 1024, ge=1, description="a prompt")
    limit_message_bytes: int = Field(default=512 * 1024, ge=1,
                                     description="one chat message or mindspace turn")
    limit_messages: int = Field(default=1000, ge=1, description="messages per request")
    limit_persona_bytes: int = Field(default=64 * 1024, ge=1, description="a persona")
    limit_knowledge_bytes: int = Field(default=1024 * 1024, ge=1,
                                       description="one knowledge document")
    limit_title_chars: int = Field(default=256, ge=1, description="a knowledge title")
    limit_stop_strings: int = Field(default=8, ge=0, description="stop strings per request")
    limit_stop_bytes: int = Field(default=256, ge=1, description="one stop string")
    limit_metadata_keys: int = Field(default=16, ge=0, description="batch metadata keys")
    limit_metadata_key_chars: int = Field(default=64, ge=1)
    limit_metadata_value_chars: int = Field(default=512, ge=1)
    limit_filename_chars: int = Field(default=255, ge=1, description="an uploaded file's name")
    limit_json_depth: int = Field(default=32, ge=2, description="nesting of a JSON body")
    model_roots: str = Field(
        default="", description="HTTP API: directories (comma-separated) that registered "
                                "model paths must lie under; unset: DATA_DIR/models",
    )
    flower_user: str | None = Field(default=None, description="`llmos flower` basic auth user")
    flower_password: SecretStr | None = Field(
        default=None, description="`llmos flower` basic auth password"
    )
    sglang_api_key: SecretStr | None = Field(
        default=None, description="sglang-http: the server's --api-key (sent as a Bearer token)"
    )
    sglang_admin_api_key: SecretStr | None = Field(
        default=None, description="sglang-http: the server's --admin-api-key, for its admin "
                                  "routes (abort, flush, weights); unset: sglang_api_key",
    )
    webhook_retry_delays: str = Field(
        default="1,2,4,8,16,32,64,128,256,512", pattern=_DELAYS,
        description="webhooks: seconds before each retry, comma-separated; one attempt "
                    "more than there are delays",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0,
                                     description="webhooks: one whole attempt, connect to answer")
    idempotency_ttl_s: float = Field(
        default=86_400.0, gt=0, description="how long an Idempotency-Key is remembered "
                                            "(its request's answer is replayed)")
    retention_jobs_days: float = Field(
        default=30.0, gt=0, description="retention: days a finished job keeps its prompt "
                                        "and result (metadata stays); per tenant: "
                                        "`llmos retention set`")
    retention_files_days: float = Field(
        default=30.0, gt=0, description="retention: days uploaded files and batch output "
                                        "files are kept")
    retention_audit_days: float = Field(
        default=365.0, gt=0, description="retention: days audit rows are kept")
    retention_webhooks_days: float = Field(
        default=30.0, gt=0, description="retention: days finished webhook deliveries "
                                        "(and their attempts) are kept")
    retention_check_s: float = Field(
        default=3600.0, gt=0, description="control: how often expired content is pruned")
    # Deadlines (docs/deadlines.md): an SLA class is a number of seconds from submission
    # by which a job must have started. The names users type stay flat: LLMOS_SLA_<CLASS>_S.
    sla_interactive_s: float = Field(
        default=30.0, gt=0, description="deadlines: seconds the 'interactive' SLA class allows "
                                        "a job to start")
    sla_standard_s: float = Field(
        default=300.0, gt=0, description="deadlines: seconds of the 'standard' SLA class")
    sla_batch_s: float = Field(
        default=86_400.0, gt=0, description="deadlines: seconds of the 'batch' SLA class")
    deadline_max_s: float = Field(
        default=7 * 86_400.0, gt=0,
        description="deadlines: the furthest a deadline may be from its submission")
    expire_check_s: float = Field(
        default=5.0, gt=0, description="control: how often jobs past their deadline are "
                                       "expired")
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="metrics: the port of `llmos worker`'s Prometheus endpoint (0: none); "
                    "a prefork worker also needs PROMETHEUS_MULTIPROC_DIR (docs/metrics.md)")
    control_metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="metrics: the port of `llmos control`'s Prometheus endpoint (0: none)")
    metrics_token: SecretStr | None = Field(
        default=None, description="metrics: when set, the API's /metrics answers only "
                                  "'Authorization: Bearer <this token>'; unset: it is open")
    quota_key_prefix: str = Field(
        default="llmos:quota", min_length=1,
        description="quotas: the prefix of the tokens-per-minute windows' keys in the "
                    "broker's Redis (docs/quotas.md)")
    quota_retry_after_s: float = Field(
        default=5.0, gt=0,
        description="quotas: the Retry-After (seconds) of a refusal by max_queued, whose "
                    "end no clock tells")
    scale_target_s: float = Field(
        default=60.0, ge=0, description="scaling: every queued job should start within this "
                                        "many seconds (llmos_model_workers_needed, docs/scale.md)")
    scale_window_s: float = Field(
        default=300.0, gt=0, description="scaling: workers' throughput is measured over the "
                                         "jobs finished in this many seconds")
    scale_default_jobs_per_worker_s: float = Field(
        default=0.1, gt=0, description="scaling: a worker's throughput (jobs per busy "
                                       "second) assumed before any was measured")
    dispatch: Literal["on", "off"] = Field(
        default="on", description="fair share: language jobs wait in the database and the "
                                  "control process releases them by priority, deadline and "
                                  "each tenant's service (docs/scheduling.md); off: every "
                                  "job is published at once")
    dispatch_aging_s: float = Field(
        default=60.0, gt=0, description="fair share: a held job gains one priority level "
                                        "per this many seconds waited")
    dispatch_depth: float = Field(
        default=2.0, ge=1, description="fair share: jobs of a queue released and not ended, "
                                       "per slot of the live workers serving it")
    dispatch_idle_bound: int = Field(
        default=4, ge=1, description="fair share: jobs released on a queue no live worker "
                                     "serves yet")
    dispatch_poll_s: float = Field(
        default=0.5, gt=0, description="fair share: the dispatcher's pass when nothing wakes "
                                       "it (a job ending or a held submission wakes it at "
                                       "once through Redis)")
    dispatch_input_weight: float = Field(
        default=1.0, ge=0, description="fair share: cost of one prompt token (VTC w_in)")
    dispatch_output_weight: float = Field(
        default=2.0, ge=0, description="fair share: cost of one completion token (VTC w_out)")
    webhook_allowed_hosts: str = Field(
        default="", description="webhooks: hosts (or host:port) allowed although they resolve "
                                "to private, loopback or other internal addresses",
    )

    def scale_policy(self) -> ScalePolicy:
        return ScalePolicy(target_s=self.scale_target_s, window_s=self.scale_window_s,
                           default_jobs_per_worker_s=self.scale_default_jobs_per_worker_s)

    def webhook_delays(self) -> list[float]:
        return [float(d) for d in self.webhook_retry_delays.split(",")]

    def sla_classes(self) -> dict[str, float]:
        """Each SLA class and its seconds from submission."""
        return {"interactive": self.sla_interactive_s, "standard": self.sla_standard_s,
                "batch": self.sla_batch_s}

    def webhook_allowed(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.webhook_allowed_hosts.split(",")
                         if h.strip())

    def model_root_paths(self) -> list[Path]:
        named = [Path(p.strip()) for p in self.model_roots.split(",") if p.strip()]
        return named or [self.data_dir / "models"]

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'llmos.db'}"

    @field_validator("broker_url")
    @classmethod
    def _known_transport(cls, url: str | None) -> str | None:
        """A broker whose priority order llmos knows (broker_config.priority), or none."""
        if url:
            transport_of(url)
        return url

    def resolved_broker_url(self) -> str:
        """LLMOS_BROKER_URL, else the embedded broker of a running `llmos up`."""
        if self.broker_url:
            return self.broker_url
        state = read_stack_state(self.data_dir)
        if state is not None:
            return state["broker_url"]
        raise BrokerUnavailable(
            "no broker is configured: start the embedded stack with `llmos up` "
            "(in another shell), or set LLMOS_BROKER_URL=redis://HOST:6379/0 (or "
            "amqp://USER:PASSWORD@HOST:5672/VHOST for RabbitMQ)"
        )


def read_stack_state(data_dir: Path) -> dict[str, str] | None:
    """The state file of a running `llmos up`, or None when none runs."""
    path = data_dir / STACK_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(state.get("pid", 0))
    if pid <= 0 or not psutil.pid_exists(pid):
        return None
    return {str(k): str(v) for k, v in state.items()}


def write_stack_state(data_dir: Path, *, broker_url: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / STACK_STATE_FILE
    path.write_text(json.dumps({"broker_url": broker_url, "pid": os.getpid()}))
    return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
