"""The Python client: submit and inspect work as one tenant. A thin facade over the
services (llmos_jobs.services), which validate, commit and publish; this class adds a
tenant, an audit row per action (llmos_jobs.client.audit) and keyword arguments."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session

from llmos_jobs import sla as sla_rules
from llmos_jobs.client.audit import audited, default_actor
from llmos_jobs.client.deployments import DeploymentCalls
from llmos_jobs.client.presets import PresetCalls
from llmos_jobs.db import mindspaces as mindspace_rows
from llmos_jobs.db import registry
from llmos_jobs.db.batch_tables import Batch, StoredFile
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.model_tables import ModelVersionPublic
from llmos_jobs.db.retention_tables import RetentionPolicyPublic
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import (
    JobPublic,
    MindspacePublic,
    RegisteredModelPublic,
    SnapshotPublic,
    WorkerPublic,
)
from llmos_jobs.db.tenant_tables import TenantPolicyPublic
from llmos_jobs.job_events import JobEnding, require_events_url
from llmos_jobs.services import (
    batch_files,
    batches,
    embeddings,
    idempotency,
    language,
    models,
    presets,
    retention,
    streaming,
    tenant_policies,
)
from llmos_jobs.services import filters as filter_service
from llmos_jobs.services import jobs as job_service
from llmos_jobs.services import mindspaces as mindspace_service
from llmos_jobs.services.embeddings import Embeddings
from llmos_jobs.services.idempotency import Idempotency
from llmos_jobs.services.language import BulkSubmission
from llmos_jobs.services.mindspace_limits import MindspaceUsage
from llmos_jobs.services.mindspaces import KnowledgeDocument
from llmos_jobs.services.submission import Submitter, priority_of, validate
from llmos_jobs.settings import Settings, get_settings
from schemas.common import ChatMessage, JobKind, JobStatus
from schemas.events import JobEvent
from schemas.filters import Direction, FilterVerdict, TenantFilters
from schemas.model import ModelOp, ModelOpRequest

__all__ = ["BulkSubmission", "KnowledgeDocument", "LlmosClient"]


def _moment_text(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


class LlmosClient(PresetCalls, DeploymentCalls):
    """Submit and inspect work as one tenant."""

    def __init__(self, *, settings: Settings | None = None, tenant: str | None = None,
                 database: Database | None = None, submitter: Submitter | None = None,
                 audit: bool = True, actor: str | None = None) -> None:
        """``settings`` (default: this process's, for a program using the client as
        its entry point) decide the database, its key ring and the broker. A caller that
        built the ``database`` (or a ``submitter`` holding it) from them already passes
        it, and has brought its schema to the newest revision; otherwise this client
        does (one read when it is there already). ``audit``: write an audit row per
        action, naming ``actor`` (default: this process's user@host); the HTTP API turns
        it off (its middleware writes them)."""
        settings = settings or get_settings()
        self.settings = settings
        self.tenant = tenant or settings.tenant
        self.actor = (actor or default_actor()) if audit else None
        if submitter is None:
            if database is None:
                database = Database.from_settings(settings)
                upgrade(database)
            submitter = Submitter(settings, database)
        self.submitter = submitter
        self.database = submitter.database
        self.limits = submitter.limits
        self.idempotency = Idempotency.of(settings, self.database)

    def _deadline(self, deadline: datetime | str | None, sla: str | None) -> datetime | None:
        """The deadline asked for, from now; InvalidRequest naming what is wrong."""
        return sla_rules.resolve(self.settings, deadline=deadline, sla=sla)

    def session(self) -> AbstractContextManager[Session]:
        """A database session on this client's database (committed on success)."""
        return self.database.session()

    def _once(self, key: str, request: str, create: Callable[[], str],
              arguments: dict[str, object]) -> str:
        """``create()`` once per idempotency key: the id it made, or the id the key's
        first call made."""
        return idempotency.once(self.idempotency, tenant=self.tenant, key=key,
                                request=request, create=create,
                                body=json.dumps(arguments, sort_keys=True).encode())

    # -- language -----------------------------------------------------------------------------

    @audited("jobs.create")
    def generate(
        self,
        *,
        model: str,
        prompt: str | None = None,
        messages: Sequence[ChatMessage | dict[str, Any]] | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        stop: Iterable[str] = (),
        priority: int | str = "default",
        webhook: str | None = None,
        timeout_s: float | None = None,
        response_format: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        deadline: datetime | str | None = None,
        sla: str | None = None,
    ) -> JobPublic:
        """Queue a language job; ``webhook`` is POSTed its outcome (job.succeeded,
        job.failed or job.cancelled), signed with the tenant's webhook secret. A job
        still running ``timeout_s`` after it started fails with reason "timeout".
        ``response_format`` ({"type": "json_schema", "json_schema": {"schema": ...}})
        asks for JSON valid against a schema (docs/presets.md).
        ``idempotency_key``: the same call again with this key (within 24 h) returns the
        job the first one queued instead of queueing another; the key with different
        arguments raises IdempotencyMismatch. ``deadline`` (an aware datetime or ISO 8601
        with a zone) or ``sla`` (a class: interactive, standard, batch; seconds from now
        set by LLMOS_SLA_<CLASS>_S) is the latest moment the job may start: a job not
        started by then ends `expired` without running (docs/deadlines.md)."""
        when = self._deadline(deadline, sla)
        data: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                                "temperature": temperature, "stop": list(stop),
                                "timeout_s": timeout_s}
        if response_format is not None:
            data["response_format"] = response_format
        if prompt is not None:
            data["prompt"] = prompt
        if messages is not None:
            data["messages"] = [
                m.model_dump() if isinstance(m, ChatMessage) else m for m in messages
            ]
        def submit() -> JobPublic:
            return language.submit_generate(self.submitter, self.tenant, data,
                                            priority=priority_of(priority), webhook=webhook,
                                            deadline=when)

        if idempotency_key is None:
            return submit()
        # The deadline asked for, not the moment it resolved to: a retry is the same call.
        return self.job(self._once(idempotency_key, "client generate", lambda: submit().id,
                                   {**data, "priority": priority, "webhook": webhook,
                                    "deadline": _moment_text(deadline), "sla": sla}))

    @audited("jobs.create_many")
    def generate_many(self, requests: Sequence[dict[str, Any]], *,
                      priority: int | str = "batch", webhook: str | None = None,
                      deadline: datetime | str | None = None, sla: str | None = None
                      ) -> BulkSubmission:
        """Submit many language jobs at once: one transaction, one broker connection.
        Each invalid request is reported by its index; the valid ones still run.
        ``webhook``, ``deadline`` and ``sla`` apply to every job (a refused one refuses
        the whole call)."""
        return language.submit_many(self.submitter, self.tenant, requests,
                                    priority=priority_of(priority), webhook=webhook,
                                    deadline=self._deadline(deadline, sla))

    # -- task presets (docs/presets.md) -------------------------------------------------------

    @audited("tasks.{kind}")
    def task(self, kind: JobKind | str, request: dict[str, Any], *,
             priority: int | str = "default", webhook: str | None = None,
             deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        """Queue a task preset: ``kind`` is summarise, translate, answer, classify or
        extract, ``request`` its fields (schemas.tasks). ``deadline`` or ``sla``: as
        for ``generate``."""
        return presets.submit_preset(self.submitter, self.tenant,
                                     presets.preset_kind(str(kind)), request,
                                     priority=priority_of(priority), webhook=webhook,
                                     deadline=self._deadline(deadline, sla))

    # -- models ---------------------------------------------------------------------------------

    @audited("models.register")
    def register_model(self, name: str, path: str | Path, engine: str = "transformers",
                       keep_alive: str | None = None) -> RegisteredModelPublic:
        """Version 1 of ``name``, or its next version when ``path`` holds other content
        than its versions; the current version's content again changes nothing."""
        return models.register(self.submitter, name=name, path=path, engine=engine,
                               keep_alive=keep_alive)

    def model_versions(self, name: str) -> list[ModelVersionPublic]:
        return models.list_versions(self.submitter, name)

    def models(self) -> list[RegisteredModelPublic]:
        with self.session() as session:
            return registry.list_models(session=session,
                                        dead_after_s=self.settings.worker_dead_after_s)

    @audited("models.{op}")
    def model_op(self, model: str, op: ModelOp | str, *, worker: str | None = None,
                 priority: int | str = "interactive") -> JobPublic:
        request = validate(ModelOpRequest, {"model": model, "op": op, "worker": worker})
        self.submitter.check_model(request.model, None)
        return self.submitter.job(tenant=self.tenant, kind=JobKind.model_op,
                                  model=request.model, payload=request,
                                  priority=priority_of(priority), worker=request.worker)

    # -- mindspaces -----------------------------------------------------------------------------

    @audited("mindspaces.create")
    def create_mindspace(self, /, *, model: str, persona: str | None = None,
                         name: str | None = None, **settings: Any) -> MindspacePublic:
        return mindspace_service.create(self.submitter, self.tenant, model=model,
                                        persona=persona, name=name, settings=settings)

    @audited("mindspaces.configure")
    def configure_mindspace(self, /, mindspace_id: str, *, persona: str | None = None,
                            **settings: Any) -> MindspacePublic:
        """Change the persona ('' removes it) and settings; history stays."""
        return mindspace_service.configure(self.submitter, self.tenant, mindspace_id,
                                           persona=persona, settings=settings)

    def mindspace(self, mindspace_id: str) -> MindspacePublic:
        with self.session() as session:
            return mindspace_rows.show_mindspace(session=session, tenant=self.tenant,
                                                 mindspace_id=mindspace_id)

    def mindspace_usage(self, mindspace_id: str) -> MindspaceUsage:
        """What the mindspace holds and used so far (history, knowledge, turns, tokens),
        beside its limits."""
        return mindspace_service.usage(self.submitter, self.tenant, mindspace_id)

    def mindspaces(self) -> list[MindspacePublic]:
        with self.session() as session:
            return [mindspace_rows.show_mindspace(session=session, tenant=self.tenant,
                                                  mindspace_id=m.id)
                    for m in mindspace_rows.list_mindspaces(session=session,
                                                            tenant=self.tenant)]

    @audited("mindspaces.turn")
    def chat(self, mindspace_id: str, message: str, *, max_tokens: int | None = None,
             temperature: float | None = None, priority: int | str = "interactive",
             timeout_s: float | None = None, idempotency_key: str | None = None,
             deadline: datetime | str | None = None, sla: str | None = None
             ) -> JobPublic:
        """Submit a turn. Turns of one mindspace run one at a time in the order accepted:
        a turn sent while an earlier one is unfinished is `waiting` until that one ends
        (llmos_jobs.services.turns). ``idempotency_key``, ``deadline``, ``sla``: as for
        ``generate``; a turn that expires lets the next one run."""
        when = self._deadline(deadline, sla)

        def submit() -> JobPublic:
            return mindspace_service.submit_turn(
                self.submitter, self.tenant, mindspace_id, message, max_tokens=max_tokens,
                temperature=temperature, priority=priority_of(priority), timeout_s=timeout_s,
                deadline=when)

        if idempotency_key is None:
            return submit()
        return self.job(self._once(idempotency_key, "client chat", lambda: submit().id, {
            "mindspace": mindspace_id, "message": message, "max_tokens": max_tokens,
            "temperature": temperature, "priority": priority, "timeout_s": timeout_s,
            "deadline": _moment_text(deadline), "sla": sla}))

    @audited("mindspaces.snapshot")
    def snapshot(self, mindspace_id: str, *, name: str | None = None) -> SnapshotPublic:
        return mindspace_service.snapshot(self.submitter, self.tenant, mindspace_id, name=name)

    def snapshots(self, mindspace_id: str) -> list[SnapshotPublic]:
        with self.session() as session:
            return mindspace_rows.snapshots(session=session, tenant=self.tenant,
                                            mindspace_id=mindspace_id)

    @audited("mindspaces.restore")
    def restore(self, snapshot_id: str) -> MindspacePublic:
        """A new mindspace from a snapshot; the original is untouched."""
        with self.session() as session:
            row = mindspace_rows.restore(session=session, tenant=self.tenant,
                                         snapshot_id=snapshot_id)
            return mindspace_rows.show_mindspace(session=session, tenant=self.tenant,
                                                 mindspace_id=row.id)

    @audited("mindspaces.fork")
    def fork(self, mindspace_id: str) -> MindspacePublic:
        with self.session() as session:
            row = mindspace_rows.fork(session=session, tenant=self.tenant,
                                      mindspace_id=mindspace_id)
            return mindspace_rows.show_mindspace(session=session, tenant=self.tenant,
                                                 mindspace_id=row.id)

    @audited("mindspaces.delete")
    def destroy_mindspace(self, mindspace_id: str) -> None:
        with self.session() as session:
            mindspace_rows.destroy_mindspace(session=session, tenant=self.tenant,
                                             mindspace_id=mindspace_id)

    @audited("mindspaces.knowledge.add")
    def add_knowledge(self, mindspace_id: str, text: str, *, title: str) -> KnowledgeDocument:
        """Add a text or Markdown document: chunked, embedded, stored encrypted."""
        return mindspace_service.add_knowledge(self.submitter, self.tenant, mindspace_id,
                                               text, title=title)

    def knowledge(self, mindspace_id: str) -> list[KnowledgeDocument]:
        return mindspace_service.knowledge(self.submitter, self.tenant, mindspace_id)

    @audited("mindspaces.knowledge.remove")
    def remove_knowledge(self, mindspace_id: str, document_id: str) -> int:
        with self.session() as session:
            return mindspace_rows.remove_document(session=session, tenant=self.tenant,
                                                  mindspace_id=mindspace_id,
                                                  document=document_id)

    # -- batches ----------------------------------------------------------------------------------

    @audited("files.create")
    def upload_file(self, *, filename: str, content: bytes, purpose: str = "batch",
                    idempotency_key: str | None = None) -> StoredFile:
        """Store a file (a batch's JSONL input), encrypted at rest. ``idempotency_key``:
        the same upload again with this key returns the file the first one stored."""
        def upload() -> StoredFile:
            return batch_files.upload(self.submitter, self.tenant, filename=filename,
                                      content=content, purpose=purpose)

        if idempotency_key is None:
            return upload()
        file_id = self._once(idempotency_key, "client upload_file", lambda: upload().id,
                             {"filename": filename, "purpose": purpose,
                              "sha256": hashlib.sha256(content).hexdigest()})
        with self.session() as session:
            return batch_files.get_file(session, self.tenant, file_id)

    @audited("batches.create")
    def create_batch(self, *, input_file_id: str, endpoint: str = batch_files.ENDPOINT,
                     completion_window: str = "24h", metadata: dict[str, str] | None = None,
                     priority: int | str = "batch", webhook: str | None = None,
                     idempotency_key: str | None = None) -> Batch:
        """Accept a batch of an uploaded file; a control process turns each valid line
        into a job, and writes the output and error files once every job has ended.
        ``idempotency_key``: the same call again returns the batch the first one made."""
        def create() -> Batch:
            return batches.create(self.submitter, self.tenant, input_file_id=input_file_id,
                                  endpoint=endpoint, completion_window=completion_window,
                                  metadata=metadata, priority=priority, webhook=webhook)

        if idempotency_key is None:
            return create()
        batch_id = self._once(idempotency_key, "client create_batch", lambda: create().id, {
            "input_file_id": input_file_id, "endpoint": endpoint, "metadata": metadata,
            "completion_window": completion_window, "priority": priority,
            "webhook": webhook})
        with self.session() as session:
            return batches.get_batch(session, self.tenant, batch_id)

    @audited("batches.cancel")
    def cancel_batch(self, batch_id: str) -> Batch:
        """Queued requests never run; running ones finish; then the batch is cancelled."""
        return batches.cancel(self.submitter, self.tenant, batch_id)

    # -- jobs -------------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobPublic:
        return job_service.get(self.submitter, self.tenant, job_id)

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's live events from its first (status changes, its text piece by
        piece as it is decoded) until its final status; a job that ended replays them.
        NotFound for another tenant's job."""
        return streaming.follow(self.submitter, self.tenant, job_id)

    def final_state(self, job_id: str) -> JobEnding:
        """The job's final status and text; None while it runs."""
        return streaming.final(self.submitter, self.tenant, job_id)

    def events_url(self) -> str:
        """The Redis of live events (StreamingUnavailable when there is none)."""
        return require_events_url(self.settings)

    def jobs(self, *, status: JobStatus | None = None, limit: int = 50) -> list[JobPublic]:
        return job_service.listing(self.submitter, self.tenant, status=status, limit=limit)

    @audited("jobs.cancel")
    def cancel(self, job_id: str) -> JobPublic:
        """Cancel a job that has not ended; a cancelled turn lets the next one run."""
        return job_service.cancel(self.submitter, self.tenant, job_id)

    def wait(self, job_ids: Sequence[str], *, timeout_s: float = 300.0,
             poll_s: float = 0.1) -> list[JobPublic]:
        """The jobs once all are final; TimeoutError naming those that are not."""
        return job_service.wait(self.submitter, self.tenant, job_ids, timeout_s=timeout_s,
                                poll_s=poll_s)

    # -- embeddings -----------------------------------------------------------------------------

    @audited("embeddings.create")
    def embed(self, texts: Sequence[str], *, model: str = embeddings.MODEL) -> Embeddings:
        """Unit vectors of ``texts`` (in this process: llmos_jobs.services.embeddings)."""
        return embeddings.embed(texts, model=model)

    # -- retention ------------------------------------------------------------------------------

    def retention(self) -> RetentionPolicyPublic:
        """This tenant's retention in days per kind (its own, else the defaults)."""
        return retention.policy_of(self.database, self.settings, self.tenant)

    @audited("retention.set")
    def set_retention(self, /, **days: float | None) -> RetentionPolicyPublic:
        """Set this tenant's days per kind (jobs, files, audit, webhooks; None: the
        default again). An operator's action: the HTTP API allows it to operator keys."""
        return retention.set_policy(self.database, self.settings, self.tenant, days)

    def workers(self, *, include_gone: bool = False) -> list[WorkerPublic]:
        with self.session() as session:
            return registry.list_workers(session=session, include_gone=include_gone)

    # -- content filters (operators set them; docs/filters.md) --------------------------------

    def filters(self) -> TenantFilters:
        """This tenant's content filters (the defaults when none were set)."""
        return filter_service.get(self.database, self.tenant)

    @audited("filters.set")
    def set_filters(self, rules: TenantFilters | dict[str, Any]) -> TenantFilters:
        """Replace this tenant's content filters; InvalidRequest names what is wrong."""
        data = rules.model_dump(mode="json") if isinstance(rules, TenantFilters) else rules
        return filter_service.put(self.database, self.tenant, data)

    def try_filters(self, text: str, *, side: Direction | str = Direction.input
                    ) -> FilterVerdict:
        """What this tenant's rules make of ``text`` (all but the moderation step)."""
        return filter_service.try_text(self.filters(), text, Direction(side))

    # -- scheduling policy (operators set it; docs/quotas.md) ----------------------------------

    def policy(self) -> TenantPolicyPublic:
        """This tenant's weight and quotas (the default, ``updated_at`` None, when unset)."""
        return tenant_policies.show(self.submitter, self.tenant)

    def implicit_priority(self) -> int:
        """The priority of a request that names none where the default is interactive
        (OpenAI's chat and text completions): interactive, or this tenant's
        max_priority when that allows no higher."""
        return self.submitter.quotas.allowed_priority(self.tenant, priority_of("interactive"))

    def policies(self) -> list[TenantPolicyPublic]:
        """The policy of every tenant that has one (an operator's view)."""
        return tenant_policies.listing(self.submitter)

    @audited("tenants.policy.set")
    def set_policy(self, /, **changes: float | int | str | None) -> TenantPolicyPublic:
        """Change this tenant's weight, max_queued, max_running, tokens_per_minute or
        max_priority (a number or a class name); None removes one (weight: back to 1).
        Fields not named keep their value. An operator's action: the HTTP API allows it
        to operator keys."""
        return tenant_policies.update(self.submitter, self.tenant, dict(changes))

    @audited("tenants.policy.delete")
    def delete_policy(self) -> TenantPolicyPublic:
        """Remove this tenant's policy: weight 1 and no quota again."""
        return tenant_policies.remove(self.submitter, self.tenant)
