"""Tables, in the SQLModel family style: XBase → X(table=True) / XPublic."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import Field as PField
from pydantic import field_validator
from sqlalchemy import JSON, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

from llmos_jobs.crypto import EncryptedJSON, EncryptedText
from llmos_jobs.db.types import UTCDateTime, utcnow
from llmos_jobs.errors import ContentExpired, ResultUnavailable
from llmos_jobs.states import WorkerState
from schemas.common import JobKind, JobStatus, Usage
from schemas.language import GenerateResult
from schemas.mindspace import MindspaceTurnResult
from schemas.model import ModelOpResult
from schemas.tasks import (
    AnswerResult,
    ClassifyResult,
    ExtractResult,
    SummariseResult,
    TranslateResult,
)


def new_id() -> str:
    return uuid.uuid4().hex


def _utc(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable)


# -- jobs ---------------------------------------------------------------------------


class GraphRole(StrEnum):
    """A job's part in a job graph (llmos_jobs.services.graphs)."""

    parent = "parent"  # what the producer submitted; never sent, it ends with its reduce
    part = "part"  # one chunk of a level: the document's, or the partial results'
    reduce = "reduce"  # the last child: its result is the parent's


ResultContract = TypeVar("ResultContract", GenerateResult, MindspaceTurnResult, ModelOpResult,
                         SummariseResult, TranslateResult, AnswerResult, ClassifyResult,
                         ExtractResult)


class JobBase(SQLModel):
    tenant: str = Field(index=True, min_length=1)
    kind: JobKind
    priority: int = Field(ge=0, le=9)
    model: str = Field(index=True)
    # The version of ``model`` that serves the job, resolved when it is submitted (the
    # name's current version, or the one ``NAME@N`` pinned); None only for rows older
    # than versions. One job, one version: a later update changes what new jobs get.
    model_version: int | None = None
    mindspace_id: str | None = Field(default=None, index=True)
    batch_id: str | None = Field(default=None, index=True)
    custom_id: str | None = Field(default=None, description="the batch line's custom_id")
    # Where the job's outcome is POSTed (checked against SSRF at submission).
    webhook_url: str | None = Field(default=None, max_length=2048)
    # Job graphs: a child names its parent; its level (0: chunks of the input; n: chunks
    # of level n-1's joined results) and place in that level. A parent's level is the
    # last one it created: creating the next is a compare-and-set on it.
    parent_id: str | None = Field(default=None, index=True)
    # One of GraphRole, stored (and read back) as its string, as the migration makes it:
    # no database enum type to extend when a role is added.
    graph_role: str | None = None
    graph_level: int | None = None
    graph_index: int | None = None


class Job(JobBase, table=True):
    __table_args__ = (Index("ix_job_tenant_status", "tenant", "status"),
                      Index("ix_job_batch_status", "batch_id", "status"),
                      # The dispatcher counts each language queue's held and in-flight
                      # jobs, and reads the usage of jobs ended since its last pass.
                      Index("ix_job_queue_status", "queue", "status"),
                      Index("ix_job_finished_at", "finished_at"))

    id: str = Field(default_factory=new_id, primary_key=True)
    status: JobStatus = Field(default=JobStatus.queued, index=True)
    # Encrypted at rest: prompts and outputs are tenant text.
    payload: dict[str, Any] = Field(sa_column=Column(EncryptedJSON, nullable=False))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(EncryptedJSON))
    mindspace_seq: int | None = Field(default=None, description="turn order in its mindspace")
    error_type: str | None = None
    # Encrypted at rest: an error can quote the prompt.
    error_message: str | None = Field(default=None, sa_type=EncryptedText)
    # The name of the content filter rule that ended the job `filtered` (never the text
    # it matched).
    filter_rule: str | None = None
    # The redaction rules that changed its input or output (names only), so that no
    # text is changed silently.
    redacted_by: list[str] | None = Field(default=None, sa_column=Column(JSON))
    queue: str
    # The id of the Celery message that may run this attempt; a message with any
    # other id is a stale redelivery and is dropped.
    task_id: str = Field(default_factory=new_id)
    attempts: int = 0
    worker: str | None = Field(default=None, index=True)
    worker_pid: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    started_at: datetime | None = _utc()
    finished_at: datetime | None = _utc()
    # When its current message was made (None before 0009: created_at stands in). A job
    # queued longer than the reconciler's grace whose message the broker lacks gets a
    # new one (llmos_jobs.services.reconcile).
    queued_at: datetime | None = _utc()
    # Set when retention pruned the prompt, result and error text (the metadata stays).
    content_expired_at: datetime | None = _utc()
    # The latest moment the job may start (its SLA); None: no deadline.
    deadline: datetime | None = _utc()
    # Set while a queued job waits in the database for the fair-share dispatcher
    # (llmos_jobs.services.dispatcher), which releases it to the broker by compare-and-set
    # (back to None); None: its message was sent (or is being sent). Its status stays
    # `queued` either way.
    held_since: datetime | None = _utc()


@dataclass(frozen=True)
class JobHeader:
    """A job's identity and hooks, read without its (encrypted) payload and result:
    what ending it needs (its turn, batch, graph, webhook)."""

    id: str
    kind: JobKind
    mindspace_id: str | None
    batch_id: str | None
    webhook_url: str | None
    parent_id: str | None


class GraphProgress(SQLModel):
    """How far a job graph has come: its children so far (a level's children exist once
    the level before it has ended) and how many of them have ended."""

    level: int = PField(description="the level running now (0: the input's chunks)")
    stage: GraphRole = PField(description="part: chunks still being mapped; reduce: the last job")
    total: int = PField(description="children created so far")
    done: int = PField(description="children that ended (succeeded, failed or cancelled)")
    succeeded: int


class JobPublic(JobBase):
    """What producers see of a job (``--json`` field names)."""

    id: str
    status: JobStatus
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error_type: str | None
    error_message: str | None
    filter_rule: str | None = None
    redacted_by: list[str] | None = None
    deadline: datetime | None = PField(
        default=None, description="the latest moment the job may start; past it, a job "
                                  "not yet started ends expired")
    queue: str
    task_id: str = PField(description="Celery message id of the current attempt (for Flower)")
    attempts: int
    worker: str | None
    worker_pid: int | None
    usage: Usage | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    latency_s: float | None
    content_expired_at: datetime | None = PField(
        default=None, description="set when retention removed the job's prompt, result and "
                                  "error text; status, timestamps, model and usage remain")
    graph_role: GraphRole | None = None
    graph: GraphProgress | None = PField(
        default=None, description="a graph parent's children: how many have ended")

    @classmethod
    def from_row(cls, job: Job, graph: GraphProgress | None = None) -> JobPublic:
        usage = None
        if job.prompt_tokens is not None:
            usage = Usage(
                prompt_tokens=job.prompt_tokens,
                completion_tokens=job.completion_tokens or 0,
                cached_tokens=job.cached_tokens or 0,
            )
        latency = None
        if job.finished_at is not None:
            latency = (job.finished_at - job.created_at).total_seconds()
        return cls(
            **job.model_dump(exclude={"prompt_tokens", "completion_tokens", "cached_tokens"}),
            usage=usage,
            latency_s=latency,
            graph=graph,
        )

    # The row keeps a result as the JSON its worker wrote (``result`` stays that JSON, so
    # the API and ``--json`` show it unchanged); readers parse it into its contract here
    # instead of indexing a dict, so a renamed or missing field fails where it is read.

    def generate_result(self) -> GenerateResult:
        """The result of a succeeded ``generate`` job."""
        return self._result(JobKind.generate, GenerateResult)

    def turn_result(self) -> MindspaceTurnResult:
        """The result of a succeeded mindspace turn."""
        return self._result(JobKind.mindspace_turn, MindspaceTurnResult)

    def model_op_result(self) -> ModelOpResult:
        """The result of a succeeded model operation (load, unload, warmup)."""
        return self._result(JobKind.model_op, ModelOpResult)

    def summarise_result(self) -> SummariseResult:
        return self._result(JobKind.summarise, SummariseResult)

    def translate_result(self) -> TranslateResult:
        return self._result(JobKind.translate, TranslateResult)

    def answer_result(self) -> AnswerResult:
        return self._result(JobKind.answer, AnswerResult)

    def classify_result(self) -> ClassifyResult:
        return self._result(JobKind.classify, ClassifyResult)

    def extract_result(self) -> ExtractResult:
        return self._result(JobKind.extract, ExtractResult)

    def _result(self, kind: JobKind, contract: type[ResultContract]) -> ResultContract:
        if self.kind != kind:
            raise ResultUnavailable(f"job {self.id} is a {self.kind.value} job, not "
                                    f"{kind.value}: it has no {contract.__name__}")
        if self.content_expired_at is not None:
            raise ContentExpired(f"job {self.id}'s content expired: its prompt and result "
                                 f"were removed at {self.content_expired_at.isoformat()} "
                                 "under the tenant's retention policy")
        if self.result is None:
            raise ResultUnavailable(f"job {self.id} is {self.status.value} and has no result")
        return contract.model_validate(self.result)


# -- mindspaces ---------------------------------------------------------------------------


class MindspaceSettings(SQLModel):
    # The history budget: older turns are compacted past it (llmos_jobs.services.turns).
    context_budget: int = Field(default=1024, ge=64, description="history tokens kept in a turn")
    max_tokens: int = Field(default=64, gt=0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    knowledge_top_k: int = Field(default=3, ge=0, le=20)
    # The mindspace's own limits (None, or 0 where given: none). A turn asking more new
    # tokens, or a document that would take the knowledge base past its bytes, is
    # refused at submission (llmos_jobs.services.mindspace_limits).
    max_tokens_per_turn: int | None = Field(
        default=None, ge=0, description="new tokens a turn may ask for")
    knowledge_max_bytes: int | None = Field(
        default=None, ge=0, description="UTF-8 bytes of documents the knowledge base holds")

    @field_validator("max_tokens_per_turn", "knowledge_max_bytes")
    @classmethod
    def _zero_is_no_limit(cls, value: int | None) -> int | None:
        return value or None

    def default_max_tokens(self) -> int:
        """A turn's reply length when it asks for none: the limit caps the default."""
        if self.max_tokens_per_turn is None:
            return self.max_tokens
        return min(self.max_tokens, self.max_tokens_per_turn)


class MindspaceBase(SQLModel):
    tenant: str = Field(index=True, min_length=1)
    name: str | None = None
    model: str
    persona: str | None = Field(default=None, sa_type=EncryptedText)
    settings: dict[str, Any] = Field(
        default_factory=lambda: MindspaceSettings().model_dump(),
        sa_column=Column(JSON, nullable=False, server_default="{}"))


class Mindspace(MindspaceBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    # The worker whose prefix cache holds this mindspace (cache-affinity routing).
    worker: str | None = None
    # The model version that served its last turn (None before its first).
    model_version: int | None = None
    next_seq: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    forked_from: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class MindspaceMessage(SQLModel, table=True):
    __tablename__ = "mindspace_message"

    id: int | None = Field(default=None, primary_key=True)
    mindspace_id: str = Field(index=True, foreign_key="mindspace.id", ondelete="CASCADE")
    tenant: str = Field(index=True)
    role: str
    content: str = Field(sa_type=EncryptedText)
    job_id: str | None = None
    # Compacted messages stay out of prompts; a system marker stands in for them.
    compacted: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class KnowledgeChunk(SQLModel, table=True):
    __tablename__ = "mindspace_chunk"

    id: int | None = Field(default=None, primary_key=True)
    mindspace_id: str = Field(index=True, foreign_key="mindspace.id", ondelete="CASCADE")
    tenant: str = Field(index=True)
    document: str = Field(index=True)
    title: str = Field(sa_type=EncryptedText)
    position: int
    text: str = Field(sa_type=EncryptedText)
    embedding: bytes = Field(sa_type=LargeBinary)  # float32, normalised
    # UTF-8 bytes of the whole document as uploaded, on each of its chunks (chunks
    # overlap and lose whitespace, so their texts do not add up to it); None before 0020.
    document_bytes: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class MindspaceSnapshot(SQLModel, table=True):
    __tablename__ = "mindspace_snapshot"

    id: str = Field(default_factory=new_id, primary_key=True)
    mindspace_id: str = Field(index=True, foreign_key="mindspace.id", ondelete="CASCADE")
    tenant: str = Field(index=True)
    name: str | None = None
    data: dict[str, Any] = Field(sa_column=Column(EncryptedJSON, nullable=False))
    # The model version of the mindspace when it was taken (that of its last turn).
    model_version: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class MindspaceCompaction(SQLModel, table=True):
    __tablename__ = "mindspace_compaction"

    id: int | None = Field(default=None, primary_key=True)
    mindspace_id: str = Field(index=True, foreign_key="mindspace.id", ondelete="CASCADE")
    tenant: str = Field(index=True)
    messages: int
    through_message: int
    method: str  # "truncate": replaced by a marker
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class MessagePublic(SQLModel):
    role: str
    content: str
    job_id: str | None
    compacted: bool = False
    created_at: datetime


class MindspacePublic(SQLModel):
    id: str
    tenant: str
    name: str | None
    model: str
    persona: str | None
    settings: MindspaceSettings
    worker: str | None
    model_version: int | None = None
    forked_from: str | None
    created_at: datetime
    updated_at: datetime
    messages: list[MessagePublic] = Field(default_factory=list)
    documents: list[str] = Field(default_factory=list)


class SnapshotPublic(SQLModel):
    id: str
    mindspace_id: str
    name: str | None
    messages: int
    created_at: datetime
    model_version: int | None = None


# -- workers ------------------------------------------------------------------------------


class WorkerRecord(SQLModel, table=True):
    """A worker's heartbeat row. ``models`` None means it serves every registered model."""

    __tablename__ = "worker"

    name: str = Field(primary_key=True)
    host: str
    pid: int
    # One of llmos_jobs.states.WorkerState, stored (and read back) as its string.
    state: str = Field(default=WorkerState.alive.value, index=True)
    pool: str
    concurrency: int
    engine_device: str
    models: list[str] | None = Field(default=None, sa_column=Column(JSON))
    queues: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    loaded: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Per loaded model: engine statistics (batches, prefix cache); and the machine's load.
    engines: dict[str, dict[str, float]] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}"))
    resources: dict[str, float] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}"))
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_heartbeat: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False
    )
    # The job ids this worker's process was running when it last beat (taken before
    # `last_heartbeat`); None for a prefork pool (see `pool_pids`).
    # A job it claimed before that beat and does not name is no longer held by anyone.
    holding: list[str] | None = Field(default=None, sa_column=Column(JSON))
    # A prefork pool runs jobs in child processes, whose attempts it cannot see: its
    # heartbeat names instead the pool's live processes (taken after `last_heartbeat`).
    # A job running on it, claimed before that beat by a process not named, has lost
    # its process (a child killed mid-job, whose message the pool may never hand back).
    pool_pids: list[int] | None = Field(default=None, sa_column=Column(JSON))


class WorkerPublic(SQLModel):
    name: str
    host: str
    pid: int
    state: WorkerState
    pool: str
    concurrency: int
    engine_device: str
    models: list[str] | None
    queues: list[str]
    loaded: list[str]
    engines: dict[str, dict[str, float]]
    resources: dict[str, float]
    running_jobs: int
    started_at: datetime
    last_heartbeat: datetime
    seconds_since_heartbeat: float


# Tables in modules of their own; importing them here registers them on the metadata.
from llmos_jobs.db import (  # noqa: E402, F401
    batch_tables,
    deployment_tables,
    filter_tables,
    retention_tables,
    tenant_tables,
)

# API keys and the audit log, named from here too.
from llmos_jobs.db.access_tables import ApiKey as ApiKey  # noqa: E402
from llmos_jobs.db.access_tables import ApiKeyBase as ApiKeyBase  # noqa: E402
from llmos_jobs.db.access_tables import ApiKeyCreate as ApiKeyCreate  # noqa: E402
from llmos_jobs.db.access_tables import ApiKeyIssued as ApiKeyIssued  # noqa: E402
from llmos_jobs.db.access_tables import ApiKeyPublic as ApiKeyPublic  # noqa: E402
from llmos_jobs.db.access_tables import AuditEvent as AuditEvent  # noqa: E402
from llmos_jobs.db.access_tables import AuditEventBase as AuditEventBase  # noqa: E402
from llmos_jobs.db.access_tables import AuditEventPublic as AuditEventPublic  # noqa: E402

# The model tables, named from here too (where they lived before versions).
from llmos_jobs.db.model_tables import ModelVersion as ModelVersion  # noqa: E402
from llmos_jobs.db.model_tables import RegisteredModel as RegisteredModel  # noqa: E402
from llmos_jobs.db.model_tables import RegisteredModelBase as RegisteredModelBase  # noqa: E402
from llmos_jobs.db.model_tables import (  # noqa: E402
    RegisteredModelPublic as RegisteredModelPublic,
)
from llmos_jobs.db.webhook_tables import (  # noqa: E402, F401
    WebhookAttempt,
    WebhookDelivery,
    WebhookSecret,
)
