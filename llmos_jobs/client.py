"""The producer API. Every submission is validated against ``schemas/``, committed to
the database, and only then enqueued with the job id as the message's only argument."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from broker_config import TaskName, language_queue, queue_for
from llmos_jobs import dispatch, turn_order
from llmos_jobs.celery_app import get_app
from llmos_jobs.client_audit import audited, default_actor
from llmos_jobs.db import batch_progress, registry
from llmos_jobs.db import jobs as job_crud
from llmos_jobs.db import mindspaces as ms_crud
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.models import (
    Job,
    JobPublic,
    KnowledgeChunk,
    MindspaceBase,
    MindspacePublic,
    MindspaceSettings,
    RegisteredModelBase,
    RegisteredModelPublic,
    SnapshotPublic,
    WorkerPublic,
    new_id,
)
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.dispatch import task_for_kind
from llmos_jobs.errors import InvalidRequest, NoLiveWorkerWarning, NotFound
from llmos_jobs.limits import FieldLimits
from llmos_jobs.settings import Settings, get_settings
from llmos_jobs.ttl_cache import TTLCache
from llmos_jobs.webhooks.events import emit_job_event
from llmos_jobs.webhooks.ssrf import check_destination
from schemas.common import ChatMessage, JobKind, JobStatus, parse_priority
from schemas.language import GenerateRequest
from schemas.mindspace import MindspaceCreate, MindspaceTurnRequest
from schemas.model import EngineKind, ModelOp, ModelOpRequest, ModelRegister

C = TypeVar("C", bound=BaseModel)


@dataclass
class KnowledgeDocument:
    id: str
    title: str
    chunks: int


@dataclass(frozen=True)
class BulkSubmission:
    jobs: list[JobPublic]  # in the order of the valid requests
    errors: dict[int, str]  # index of each rejected request → why


def validate(contract: type[C], data: dict[str, Any]) -> C:
    """``contract`` built from ``data``, or InvalidRequest naming each bad field."""
    try:
        return contract.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "request"
            problems.append(f"{where}: {error['msg']}")
        raise InvalidRequest("; ".join(problems)) from None


def _priority(value: int | str) -> int:
    try:
        return parse_priority(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


class LlmosClient:
    """Submit and inspect work as one tenant."""

    def __init__(self, *, tenant: str | None = None, settings: Settings | None = None,
                 audit: bool = True, actor: str | None = None) -> None:
        """``audit``: write an audit row per action, naming ``actor`` (default: this
        process's user@host); the HTTP API turns it off (its middleware writes them)."""
        self.settings = settings or get_settings()
        self.tenant = tenant or self.settings.tenant
        self.actor = (actor or default_actor()) if audit else None
        # The database, and the key ring its encrypted text is read with: this client's
        # settings decide both.
        self.database = Database.from_settings(self.settings)
        self.database_url = self.database.url
        upgrade(self.database)
        self.limits = FieldLimits.from_settings(self.settings)
        # Read on every submission, changed rarely: kept for a few seconds.
        self._contexts: TTLCache[int] = TTLCache(seconds=5.0)
        self._served: TTLCache[bool] = TTLCache(seconds=5.0)

    def session(self) -> AbstractContextManager[Session]:
        """A database session on this client's database (committed on success)."""
        return session_scope(self.database)

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
    ) -> JobPublic:
        """Queue a language job; ``webhook`` is POSTed its outcome (job.succeeded,
        job.failed or job.cancelled), signed with the tenant's webhook secret. A job
        still running ``timeout_s`` after it started fails with reason "timeout"."""
        data: dict[str, Any] = {"model": model, "max_tokens": max_tokens,
                                "temperature": temperature, "stop": list(stop),
                                "timeout_s": timeout_s}
        if prompt is not None:
            data["prompt"] = prompt
        if messages is not None:
            data["messages"] = [
                m.model_dump() if isinstance(m, ChatMessage) else m for m in messages
            ]
        request = validate(GenerateRequest, data)
        self.limits.generate(request)
        self._check_model(request.model, request.max_tokens)
        return self._submit(JobKind.generate, request.model, request, _priority(priority),
                            webhook=self._webhook(webhook))

    @audited("jobs.create_many")
    def generate_many(self, requests: Sequence[dict[str, Any]], *,
                      priority: int | str = "batch", webhook: str | None = None
                      ) -> BulkSubmission:
        """Submit many language jobs at once: one transaction, one broker connection.
        Each invalid request is reported by its index; the valid ones still run.
        ``webhook`` applies to every job (a refused URL refuses the whole call)."""
        number = _priority(priority)
        webhook_url = self._webhook(webhook)
        accepted: list[job_crud.JobCreate] = []
        errors: dict[int, str] = {}
        for index, data in enumerate(requests):
            try:
                request = validate(GenerateRequest, data)
                self.limits.generate(request)
                self._check_model(request.model, request.max_tokens)
            except InvalidRequest as exc:
                errors[index] = str(exc)
                continue
            accepted.append(job_crud.JobCreate(
                tenant=self.tenant, kind=JobKind.generate, priority=number, model=request.model,
                payload=request.model_dump(mode="json"),
                queue=queue_for(TaskName.generate, model=request.model), webhook_url=webhook_url,
            ))
        jobs = self._enqueue(accepted) if accepted else []
        return BulkSubmission(jobs=jobs, errors=errors)

    # -- models ---------------------------------------------------------------------------------

    @audited("models.register")
    def register_model(self, name: str, path: str | Path, engine: str = "transformers"
                       ) -> RegisteredModelPublic:
        request = validate(ModelRegister, {"name": name, "path": str(path), "engine": engine})
        directory = Path(request.path).expanduser().resolve()
        context = 4096  # what the engine reports when the directory declares nothing
        local = request.engine in (EngineKind.transformers, EngineKind.sglang)
        if local and not directory.is_dir():
            raise InvalidRequest(f"model path {directory} is not a directory")
        if directory.is_dir():
            try:
                context = registry.context_length_of(str(directory))
            except (OSError, ValueError) as exc:
                if local:
                    raise InvalidRequest(f"{directory} is not a model directory: {exc}") from None
        row_in = RegisteredModelBase(name=request.name, path=str(directory),
                                     engine=request.engine.value, context_length=context)
        with self.session() as session:
            row = registry.register_model(session=session, model_in=row_in)
            self._contexts.put(row.name, row.context_length)
            return RegisteredModelPublic(**row.model_dump())

    def models(self) -> list[RegisteredModelPublic]:
        with self.session() as session:
            return registry.list_models(session=session,
                                        dead_after_s=self.settings.worker_dead_after_s)

    @audited("models.{op}")
    def model_op(self, model: str, op: ModelOp | str, *, worker: str | None = None,
                 priority: int | str = "interactive") -> JobPublic:
        request = validate(ModelOpRequest, {"model": model, "op": op, "worker": worker})
        self._check_model(request.model, None)
        return self._submit(JobKind.model_op, request.model, request, _priority(priority),
                            worker=request.worker)

    # -- mindspaces -----------------------------------------------------------------------------

    @audited("mindspaces.create")
    def create_mindspace(self, /, *, model: str, persona: str | None = None,
                         name: str | None = None, **settings: Any) -> MindspacePublic:
        request = validate(MindspaceCreate, {"model": model, "persona": persona, "name": name})
        self.limits.persona(request.persona)
        self._check_model(request.model, None)
        options = validate(MindspaceSettings, settings).model_dump()
        with self.session() as session:
            row = ms_crud.create_mindspace(session=session, mindspace_in=MindspaceBase(
                tenant=self.tenant, settings=options, **request.model_dump()))
            return ms_crud.show_mindspace(session=session, tenant=self.tenant,
                                          mindspace_id=row.id)

    @audited("mindspaces.configure")
    def configure_mindspace(self, /, mindspace_id: str, *, persona: str | None = None,
                            **settings: Any) -> MindspacePublic:
        """Change the persona ('' removes it) and settings; history stays."""
        self.limits.persona(persona)
        known = set(MindspaceSettings.model_fields)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InvalidRequest(f"unknown mindspace setting(s) {', '.join(unknown)}: "
                                 f"choose from {', '.join(sorted(known))}")
        with self.session() as session:
            try:
                ms_crud.configure(session=session, tenant=self.tenant,
                                  mindspace_id=mindspace_id, persona=persona, settings=settings)
            except ValidationError as exc:
                raise InvalidRequest(str(exc.errors()[0]["msg"])) from None
            return ms_crud.show_mindspace(session=session, tenant=self.tenant,
                                          mindspace_id=mindspace_id)

    def mindspace(self, mindspace_id: str) -> MindspacePublic:
        with self.session() as session:
            return ms_crud.show_mindspace(session=session, tenant=self.tenant,
                                          mindspace_id=mindspace_id)

    def mindspaces(self) -> list[MindspacePublic]:
        with self.session() as session:
            return [ms_crud.show_mindspace(session=session, tenant=self.tenant,
                                           mindspace_id=m.id)
                    for m in ms_crud.list_mindspaces(session=session, tenant=self.tenant)]

    @audited("mindspaces.turn")
    def chat(self, mindspace_id: str, message: str, *, max_tokens: int | None = None,
             temperature: float | None = None, priority: int | str = "interactive",
             timeout_s: float | None = None) -> JobPublic:
        """Submit a turn. Turns of one mindspace run one at a time in the order accepted:
        a turn sent while an earlier one is unfinished is `waiting` until that one ends
        (llmos_jobs.turn_order)."""
        self.limits.turn(message)
        with self.session() as session:
            mindspace = ms_crud.get_mindspace(session=session, tenant=self.tenant,
                                              mindspace_id=mindspace_id)
        defaults = MindspaceSettings(**mindspace.settings)
        request = validate(MindspaceTurnRequest, {
            "mindspace_id": mindspace_id, "message": message,
            "max_tokens": defaults.max_tokens if max_tokens is None else max_tokens,
            "temperature": defaults.temperature if temperature is None else temperature,
            "timeout_s": timeout_s,
        })
        self._check_model(mindspace.model, request.max_tokens)
        number = _priority(priority)
        app = get_app(self.settings.resolved_broker_url())
        with self.session() as session:
            mindspace = ms_crud.get_mindspace(session=session, tenant=self.tenant,
                                              mindspace_id=mindspace_id)
            job, released = turn_order.accept(
                session=session, mindspace=mindspace, job_in=job_crud.JobCreate(
                    tenant=self.tenant, kind=JobKind.mindspace_turn, priority=number,
                    model=mindspace.model, mindspace_id=mindspace.id,
                    payload=request.model_dump(mode="json"),
                    queue=language_queue(mindspace.model)),  # routed when released
                dead_after_s=self.settings.worker_dead_after_s)
        self._publish(app, released)
        self._warn_without_worker(job.queue, mindspace.model)
        return JobPublic.from_row(job)

    @audited("mindspaces.snapshot")
    def snapshot(self, mindspace_id: str, *, name: str | None = None) -> SnapshotPublic:
        with self.session() as session:
            snap = ms_crud.snapshot(session=session, tenant=self.tenant,
                                    mindspace_id=mindspace_id, name=name)
            return SnapshotPublic(id=snap.id, mindspace_id=snap.mindspace_id, name=snap.name,
                                  messages=len(snap.data["messages"]),
                                  created_at=snap.created_at)

    def snapshots(self, mindspace_id: str) -> list[SnapshotPublic]:
        with self.session() as session:
            return ms_crud.snapshots(session=session, tenant=self.tenant,
                                     mindspace_id=mindspace_id)

    @audited("mindspaces.restore")
    def restore(self, snapshot_id: str) -> MindspacePublic:
        """A new mindspace from a snapshot; the original is untouched."""
        with self.session() as session:
            row = ms_crud.restore(session=session, tenant=self.tenant, snapshot_id=snapshot_id)
            return ms_crud.show_mindspace(session=session, tenant=self.tenant,
                                          mindspace_id=row.id)

    @audited("mindspaces.fork")
    def fork(self, mindspace_id: str) -> MindspacePublic:
        with self.session() as session:
            row = ms_crud.fork(session=session, tenant=self.tenant, mindspace_id=mindspace_id)
            return ms_crud.show_mindspace(session=session, tenant=self.tenant,
                                          mindspace_id=row.id)

    @audited("mindspaces.delete")
    def destroy_mindspace(self, mindspace_id: str) -> None:
        with self.session() as session:
            ms_crud.destroy_mindspace(session=session, tenant=self.tenant,
                                      mindspace_id=mindspace_id)

    @audited("mindspaces.knowledge.add")
    def kb_add(self, mindspace_id: str, text: str, *, title: str) -> KnowledgeDocument:
        """Add a text or Markdown document: chunked, embedded, stored encrypted."""
        from llmos_jobs.knowledge import chunk_text, embedder

        self.limits.knowledge(title, text)
        if not text.strip():
            raise InvalidRequest(f"document {title!r} is empty")
        with self.session() as session:
            ms_crud.get_mindspace(session=session, tenant=self.tenant, mindspace_id=mindspace_id)
        pieces = chunk_text(text)
        vectors = embedder().embed(pieces)
        document = new_id()
        with self.session() as session:
            ms_crud.add_chunks(session=session, chunks=[
                KnowledgeChunk(mindspace_id=mindspace_id, tenant=self.tenant, document=document,
                               title=title, position=i, text=piece, embedding=vector.tobytes())
                for i, (piece, vector) in enumerate(zip(pieces, vectors, strict=True))])
        return KnowledgeDocument(id=document, title=title, chunks=len(pieces))

    def kb_list(self, mindspace_id: str) -> list[KnowledgeDocument]:
        with self.session() as session:
            ms_crud.get_mindspace(session=session, tenant=self.tenant, mindspace_id=mindspace_id)
            chunks = ms_crud.chunks_of(session=session, tenant=self.tenant,
                                       mindspace_id=mindspace_id)
        documents: dict[str, KnowledgeDocument] = {}
        for c in chunks:
            doc = documents.setdefault(c.document, KnowledgeDocument(id=c.document,
                                                                     title=c.title, chunks=0))
            doc.chunks += 1
        return list(documents.values())

    @audited("mindspaces.knowledge.remove")
    def kb_remove(self, mindspace_id: str, document_id: str) -> int:
        with self.session() as session:
            return ms_crud.remove_document(session=session, tenant=self.tenant,
                                           mindspace_id=mindspace_id, document=document_id)

    # -- jobs -------------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobPublic:
        with self.session() as session:
            return JobPublic.from_row(
                job_crud.get_job(session=session, tenant=self.tenant, job_id=job_id)
            )

    def jobs(self, *, status: JobStatus | None = None, limit: int = 50) -> list[JobPublic]:
        with self.session() as session:
            rows = job_crud.list_jobs(session=session, tenant=self.tenant, status=status,
                                      limit=limit)
            return [JobPublic.from_row(r) for r in rows]

    @audited("jobs.cancel")
    def cancel(self, job_id: str) -> JobPublic:
        """Cancel a job that has not ended; a cancelled turn lets the next one run."""
        with self.session() as session:
            job = job_crud.get_job(session=session, tenant=self.tenant, job_id=job_id)

        def publish(released: Sequence[Job]) -> None:
            self._publish(get_app(self.settings.resolved_broker_url()), released)

        with turn_order.ending(job, publish=publish,
                               dead_after_s=self.settings.worker_dead_after_s,
                               database_url=self.database) as session:
            job = job_crud.cancel_job(session=session, tenant=self.tenant, job_id=job_id)
            if job.webhook_url:  # enqueued once the cancellation commits
                emit_job_event(session=session, job_id=job.id, settings=self.settings)
            cancelled = JobPublic.from_row(job)
        if job.batch_id is not None:
            self._batch_job_ended(job.batch_id)
        return cancelled

    def _batch_job_ended(self, batch_id: str) -> None:
        """A job of a batch was cancelled by its id: it counts toward the batch, which
        the control process finalises when it was the last one."""
        with self.session() as session:
            done = batch_progress.job_finished(session, batch_id)
        if done:
            dispatch.send_batch_finalization(get_app(self.settings.resolved_broker_url()),
                                             batch_id)

    def wait(self, job_ids: Sequence[str], *, timeout_s: float = 300.0,
             poll_s: float = 0.1) -> list[JobPublic]:
        """The jobs once all are final; TimeoutError naming those that are not."""
        deadline = time.monotonic() + timeout_s
        final: dict[str, JobPublic] = {}
        while True:
            pending = [j for j in job_ids if j not in final]
            with self.session() as session:
                rows = job_crud.get_jobs(session=session, tenant=self.tenant, job_ids=pending)
            missing = [j for j in pending if j not in rows]
            if missing:
                raise NotFound(f"job {missing[0]} not found")
            final.update((r.id, JobPublic.from_row(r)) for r in rows.values()
                         if r.status.is_final)
            pending = [j for j in job_ids if j not in final]
            if not pending:
                return [final[j] for j in job_ids]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} job(s) not finished: {', '.join(pending)}")
            time.sleep(poll_s)

    def workers(self, *, include_gone: bool = False) -> list[WorkerPublic]:
        with self.session() as session:
            return registry.list_workers(session=session, include_gone=include_gone)

    # -- internals -----------------------------------------------------------------------

    def _check_model(self, name: str, max_tokens: int | None) -> None:
        context = self._contexts.get(name)
        if context is None:
            with self.session() as session:
                try:
                    context = registry.get_model(session=session, name=name).context_length
                except NotFound as exc:
                    raise InvalidRequest(str(exc)) from None
            self._contexts.put(name, context)
        if max_tokens is not None and max_tokens >= context:
            raise InvalidRequest(
                f"max_tokens {max_tokens} does not fit the context of model {name!r} "
                f"({context} tokens)"
            )

    def _webhook(self, url: str | None) -> str | None:
        """``url`` once it is a destination webhooks may go to (SSRF rules)."""
        if url is not None:
            check_destination(url, self.settings.webhook_allowed())
        return url

    def _submit(self, kind: JobKind, model: str, payload: BaseModel, priority: int, *,
                worker: str | None = None, mindspace_id: str | None = None,
                webhook: str | None = None) -> JobPublic:
        queue = queue_for(task_for_kind(kind), model=model, worker=worker)
        job_in = job_crud.JobCreate(
            tenant=self.tenant, kind=kind, priority=priority, model=model,
            mindspace_id=mindspace_id, payload=payload.model_dump(mode="json"), queue=queue,
            webhook_url=webhook,
        )
        [job] = self._enqueue([job_in])
        return job

    def _enqueue(self, jobs_in: Sequence[job_crud.JobCreate]) -> list[JobPublic]:
        """Commit the rows in one transaction, then publish one message per job."""
        app = get_app(self.settings.resolved_broker_url())
        with self.session() as session:
            jobs = [job_crud.create_job(session=session, job_in=j) for j in jobs_in]
        self._publish(app, jobs)
        for queue, model in sorted({(j.queue, j.model) for j in jobs}):
            self._warn_without_worker(queue, model)
        return [JobPublic.from_row(j) for j in jobs]

    def _publish(self, app: Celery, jobs: Sequence[Job]) -> None:
        """One message per committed job; jobs whose message never left are failed."""
        if jobs:
            dispatch.publish(app, jobs, dead_after_s=self.settings.worker_dead_after_s,
                             database_url=self.database)

    def _warn_without_worker(self, queue: str, model: str) -> None:
        serves = self._served.get(queue)
        if serves is None:
            with self.session() as session:
                live = registry.live_workers(session=session,
                                             dead_after_s=self.settings.worker_dead_after_s)
            serves = any(
                queue in w.queues or (w.models is None and queue == language_queue(model))
                for w in live
            )
            if serves:  # a missing worker is looked for again on the next submission
                self._served.put(queue, serves)
        if not serves:
            warnings.warn(
                f"no live worker consumes {queue} yet; the job waits in the queue until one "
                f"does (start one with `llmos worker --model {model}`)",
                NoLiveWorkerWarning, stacklevel=3,
            )
