"""The Python client: submit and inspect work as one tenant. A thin facade over the
services (llmos_jobs.services), which validate, commit and publish; this class adds a
tenant, an audit row per action (llmos_jobs.client_audit) and keyword arguments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlmodel import Session

from llmos_jobs.client_audit import audited, default_actor
from llmos_jobs.db import mindspaces as mindspace_rows
from llmos_jobs.db import registry
from llmos_jobs.db.batch_tables import Batch, StoredFile
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import (
    JobPublic,
    MindspacePublic,
    RegisteredModelPublic,
    SnapshotPublic,
    WorkerPublic,
)
from llmos_jobs.services import batch_files, batches, language, models, presets
from llmos_jobs.services import jobs as job_service
from llmos_jobs.services import mindspaces as mindspace_service
from llmos_jobs.services.language import BulkSubmission
from llmos_jobs.services.mindspaces import KnowledgeDocument
from llmos_jobs.services.submission import Submitter, priority_of, validate
from llmos_jobs.settings import Settings, get_settings
from schemas.common import ChatMessage, JobKind, JobStatus
from schemas.model import ModelOp, ModelOpRequest

__all__ = ["BulkSubmission", "KnowledgeDocument", "LlmosClient"]


class LlmosClient:
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

    def session(self) -> AbstractContextManager[Session]:
        """A database session on this client's database (committed on success)."""
        return self.database.session()

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
    ) -> JobPublic:
        """Queue a language job; ``webhook`` is POSTed its outcome (job.succeeded,
        job.failed or job.cancelled), signed with the tenant's webhook secret. A job
        still running ``timeout_s`` after it started fails with reason "timeout".
        ``response_format`` ({"type": "json_schema", "json_schema": {"schema": ...}})
        asks for JSON valid against a schema (docs/presets.md)."""
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
        return language.submit_generate(self.submitter, self.tenant, data,
                                        priority=priority_of(priority), webhook=webhook)

    @audited("jobs.create_many")
    def generate_many(self, requests: Sequence[dict[str, Any]], *,
                      priority: int | str = "batch", webhook: str | None = None
                      ) -> BulkSubmission:
        """Submit many language jobs at once: one transaction, one broker connection.
        Each invalid request is reported by its index; the valid ones still run.
        ``webhook`` applies to every job (a refused URL refuses the whole call)."""
        return language.submit_many(self.submitter, self.tenant, requests,
                                    priority=priority_of(priority), webhook=webhook)

    # -- task presets (docs/presets.md) -------------------------------------------------------

    @audited("tasks.{kind}")
    def task(self, kind: JobKind | str, request: dict[str, Any], *,
             priority: int | str = "default", webhook: str | None = None) -> JobPublic:
        """Queue a task preset: ``kind`` is summarise, translate, answer, classify or
        extract, ``request`` its fields (schemas.tasks)."""
        return presets.submit_preset(self.submitter, self.tenant,
                                     presets.preset_kind(str(kind)), request,
                                     priority=priority_of(priority), webhook=webhook)

    def summarise(self, *, model: str, text: str, length: str | int = "medium",
                  style: str = "paragraph", temperature: float = 0.0,
                  timeout_s: float | None = None, priority: int | str = "default",
                  webhook: str | None = None) -> JobPublic:
        """Summarise ``text``: ``length`` short, medium, long or a budget in tokens;
        ``style`` paragraph or bullets."""
        return self.task(JobKind.summarise, {
            "model": model, "text": text, "length": length, "style": style,
            "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook)

    def translate(self, *, model: str, text: str, target_language: str,
                  source_language: str | None = None, max_tokens: int = 256,
                  temperature: float = 0.0, timeout_s: float | None = None,
                  priority: int | str = "default", webhook: str | None = None) -> JobPublic:
        """Translate ``text`` into ``target_language``."""
        return self.task(JobKind.translate, {
            "model": model, "text": text, "target_language": target_language,
            "source_language": source_language, "max_tokens": max_tokens,
            "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook)

    def answer(self, *, model: str, question: str, context: Sequence[str],
               max_tokens: int = 128, temperature: float = 0.0,
               timeout_s: float | None = None, priority: int | str = "default",
               webhook: str | None = None) -> JobPublic:
        """Answer ``question`` from the ``context`` passages; the result lists the
        passages the answer cites."""
        return self.task(JobKind.answer, {
            "model": model, "question": question, "context": list(context),
            "max_tokens": max_tokens, "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook)

    def classify(self, *, model: str, text: str, labels: Sequence[str], max_tokens: int = 16,
                 temperature: float = 0.0, timeout_s: float | None = None,
                 priority: int | str = "default", webhook: str | None = None) -> JobPublic:
        """The one of ``labels`` that fits ``text``."""
        return self.task(JobKind.classify, {
            "model": model, "text": text, "labels": list(labels), "max_tokens": max_tokens,
            "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook)

    def extract(self, *, model: str, text: str, json_schema: dict[str, Any],
                max_tokens: int = 256, temperature: float = 0.0,
                timeout_s: float | None = None, priority: int | str = "default",
                webhook: str | None = None) -> JobPublic:
        """The fields ``json_schema`` describes, read from ``text`` and validated."""
        return self.task(JobKind.extract, {
            "model": model, "text": text, "json_schema": json_schema,
            "max_tokens": max_tokens, "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook)

    # -- models ---------------------------------------------------------------------------------

    @audited("models.register")
    def register_model(self, name: str, path: str | Path, engine: str = "transformers"
                       ) -> RegisteredModelPublic:
        return models.register(self.submitter, name=name, path=path, engine=engine)

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

    def mindspaces(self) -> list[MindspacePublic]:
        with self.session() as session:
            return [mindspace_rows.show_mindspace(session=session, tenant=self.tenant,
                                                  mindspace_id=m.id)
                    for m in mindspace_rows.list_mindspaces(session=session,
                                                            tenant=self.tenant)]

    @audited("mindspaces.turn")
    def chat(self, mindspace_id: str, message: str, *, max_tokens: int | None = None,
             temperature: float | None = None, priority: int | str = "interactive",
             timeout_s: float | None = None) -> JobPublic:
        """Submit a turn. Turns of one mindspace run one at a time in the order accepted:
        a turn sent while an earlier one is unfinished is `waiting` until that one ends
        (llmos_jobs.services.turns)."""
        return mindspace_service.submit_turn(
            self.submitter, self.tenant, mindspace_id, message, max_tokens=max_tokens,
            temperature=temperature, priority=priority_of(priority), timeout_s=timeout_s)

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
    def upload_file(self, *, filename: str, content: bytes, purpose: str = "batch"
                    ) -> StoredFile:
        """Store a file (a batch's JSONL input), encrypted at rest."""
        return batch_files.upload(self.submitter, self.tenant, filename=filename,
                                  content=content, purpose=purpose)

    @audited("batches.create")
    def create_batch(self, *, input_file_id: str, endpoint: str = batch_files.ENDPOINT,
                     completion_window: str = "24h", metadata: dict[str, str] | None = None,
                     priority: int | str = "batch", webhook: str | None = None) -> Batch:
        """Accept a batch of an uploaded file; a control process turns each valid line
        into a job, and writes the output and error files once every job has ended."""
        return batches.create(self.submitter, self.tenant, input_file_id=input_file_id,
                              endpoint=endpoint, completion_window=completion_window,
                              metadata=metadata, priority=priority, webhook=webhook)

    @audited("batches.cancel")
    def cancel_batch(self, batch_id: str) -> Batch:
        """Queued requests never run; running ones finish; then the batch is cancelled."""
        return batches.cancel(self.submitter, self.tenant, batch_id)

    # -- jobs -------------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobPublic:
        return job_service.get(self.submitter, self.tenant, job_id)

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

    def workers(self, *, include_gone: bool = False) -> list[WorkerPublic]:
        with self.session() as session:
            return registry.list_workers(session=session, include_gone=include_gone)
