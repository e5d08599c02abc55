"""Mindspaces as a tenant sees them: create, configure, read, snapshot, fork, restore,
destroy, their knowledge base, and submitting a turn (whose order and routing are
llmos_jobs.services.turns's)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from broker_config import language_queue, worker_queue
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import mindspaces as mindspace_rows
from llmos_jobs.db import versions
from llmos_jobs.db.tables import (
    Job,
    JobPublic,
    KnowledgeChunk,
    MindspaceBase,
    MindspacePublic,
    MindspaceSettings,
    SnapshotPublic,
    new_id,
)
from llmos_jobs.errors import BrokerUnavailable, InvalidRequest
from llmos_jobs.services import mindspace_limits as limits
from llmos_jobs.services import turns
from llmos_jobs.services.knowledge import chunk_text, embedder
from llmos_jobs.services.routing import RoutingPolicy, place_new
from llmos_jobs.services.submission import Submitter, validate
from llmos_jobs.services.tokenizers import model_text
from schemas.common import PRIORITY_CLASSES, JobKind
from schemas.mindspace import MindspaceCreate, MindspaceTurnRequest
from schemas.model import ModelOp, ModelOpRequest

log = logging.getLogger(__name__)


@dataclass
class KnowledgeDocument:
    id: str
    title: str
    chunks: int


def create(submitter: Submitter, tenant: str, *, model: str, persona: str | None,
           name: str | None, settings: dict[str, Any]) -> MindspacePublic:
    """Create a mindspace. With a persona, and a live worker holding the model's version
    (routing by affinity), it is placed on the worker its first turn would go to, and
    that worker is sent a prefill of the persona prefix (best effort: see
    ``_send_prefill``); otherwise nothing is sent."""
    request = validate(MindspaceCreate, {"model": model, "persona": persona, "name": name})
    submitter.limits.persona(request.persona)
    submitter.check_model(request.model, None)
    chosen = validate(MindspaceSettings, settings)
    options = chosen.model_dump()
    prefill: Job | None = None
    with submitter.database.session() as session:
        limits.within_tenant_quota(session=session, tenant=tenant, settings=chosen)
        home = None
        if request.persona:
            version = versions.resolve(session=session, model=request.model)
            ref = f"{version.name}@{version.version}"
            home = place_new(session=session, model=request.model, version=ref,
                             policy=RoutingPolicy.of(submitter.settings))
        row = mindspace_rows.create_mindspace(session=session, mindspace_in=MindspaceBase(
            tenant=tenant, settings=options, **request.model_dump()), worker=home)
        if home is not None:
            # Under the mindspace's tenant, at the priority its first turn would likely
            # have; no quota is charged (a model operation's, like a warm-up's).
            priority = submitter.quotas.allowed_priority(tenant,
                                                         PRIORITY_CLASSES["interactive"])
            op = ModelOpRequest(model=ref, op=ModelOp.prefill, worker=home,
                                mindspace_id=row.id)
            prefill = job_rows.create_job(session=session, job_in=job_rows.JobCreate(
                tenant=tenant, kind=JobKind.model_op, priority=priority, model=ref,
                payload=op.model_dump(mode="json"), queue=worker_queue(home)))
        shown = mindspace_rows.show_mindspace(session=session, tenant=tenant,
                                              mindspace_id=row.id)
    if prefill is not None:
        _send_prefill(submitter, prefill)
    return shown


def _send_prefill(submitter: Submitter, job: Job) -> None:
    """Publish the committed prefill op. Only a warm cache is at stake, not the
    mindspace: when the broker cannot take it, the op is failed with the reason (as any
    job whose message did not leave) and the creation stands."""
    try:
        submitter.publish([job])
    except BrokerUnavailable as exc:
        log.warning("mindspace %s: its persona prefill was not sent: %s", job.payload.get(
            "mindspace_id"), exc)


def configure(submitter: Submitter, tenant: str, mindspace_id: str, *, persona: str | None,
              settings: dict[str, Any]) -> MindspacePublic:
    """Change the persona ('' removes it) and settings; history stays."""
    submitter.limits.persona(persona)
    known = set(MindspaceSettings.model_fields)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidRequest(f"unknown mindspace setting(s) {', '.join(unknown)}: "
                             f"choose from {', '.join(sorted(known))}")
    with submitter.database.session() as session:
        try:
            row = mindspace_rows.configure(session=session, tenant=tenant,
                                           mindspace_id=mindspace_id, persona=persona,
                                           settings=settings)
        except ValidationError as exc:
            raise InvalidRequest(str(exc.errors()[0]["msg"])) from None
        limits.within_tenant_quota(session=session, tenant=tenant,
                                   settings=MindspaceSettings(**row.settings))
        return mindspace_rows.show_mindspace(session=session, tenant=tenant,
                                             mindspace_id=mindspace_id)


def submit_turn(submitter: Submitter, tenant: str, mindspace_id: str, message: str, *,
                max_tokens: int | None, temperature: float | None, priority: int,
                timeout_s: float | None, deadline: datetime | None = None) -> JobPublic:
    """Accept a turn: `waiting` behind the mindspace's unfinished turns, or released at
    once (routed, queued, published) when there are none. The mindspace is read once,
    under its turn lock."""
    submitter.limits.turn(message)
    with submitter.database.session() as session:
        mindspace = mindspace_rows.get_mindspace(session=session, tenant=tenant,
                                                 mindspace_id=mindspace_id)
        defaults = MindspaceSettings(**mindspace.settings)
        request = validate(MindspaceTurnRequest, {
            "mindspace_id": mindspace_id, "message": message,
            "max_tokens": defaults.default_max_tokens() if max_tokens is None else max_tokens,
            "temperature": defaults.temperature if temperature is None else temperature,
            "timeout_s": timeout_s,
        })
        limits.check_turn(mindspace, request.max_tokens)
        submitter.check_model(mindspace.model, request.max_tokens)
        job_in = job_rows.JobCreate(
            tenant=tenant, kind=JobKind.mindspace_turn, priority=priority,
            model=mindspace.model, mindspace_id=mindspace.id,
            payload=request.model_dump(mode="json"), deadline=deadline,
            queue=language_queue(mindspace.model))  # routed when released
        submitter.quotas.admit([job_in], session=session)
        job, released = turns.accept(session=session, mindspace=mindspace, job_in=job_in,
                                     routing=RoutingPolicy.of(submitter.settings))
    submitter.publish(released)
    submitter.warn_without_worker(job.queue, mindspace.model)
    return JobPublic.from_row(job)


def snapshot(submitter: Submitter, tenant: str, mindspace_id: str, *, name: str | None
             ) -> SnapshotPublic:
    with submitter.database.session() as session:
        snap = mindspace_rows.snapshot(session=session, tenant=tenant,
                                       mindspace_id=mindspace_id, name=name)
        return SnapshotPublic(id=snap.id, mindspace_id=snap.mindspace_id, name=snap.name,
                              messages=len(snap.data["messages"]), created_at=snap.created_at,
                              model_version=snap.model_version)


def add_knowledge(submitter: Submitter, tenant: str, mindspace_id: str, text: str, *,
                  title: str) -> KnowledgeDocument:
    """Add a text or Markdown document: chunked, embedded, stored encrypted."""
    submitter.limits.knowledge(title, text)
    if not text.strip():
        raise InvalidRequest(f"document {title!r} is empty")
    size = len(text.encode())
    with submitter.database.session() as session:
        _knowledge_fits(session, tenant, mindspace_id, title=title, size=size)
    pieces = chunk_text(text)
    vectors = embedder().embed(pieces)  # slow: outside any transaction
    document = new_id()
    with submitter.database.session() as session:
        # Again under the mindspace's lock: two uploads at once must not both fit.
        mindspace_rows.lock_turns(session=session, mindspace_id=mindspace_id)
        _knowledge_fits(session, tenant, mindspace_id, title=title, size=size)
        mindspace_rows.add_chunks(session=session, chunks=[
            KnowledgeChunk(mindspace_id=mindspace_id, tenant=tenant, document=document,
                           title=title, position=i, text=piece, embedding=vector.tobytes(),
                           document_bytes=size)
            for i, (piece, vector) in enumerate(zip(pieces, vectors, strict=True))])
    return KnowledgeDocument(id=document, title=title, chunks=len(pieces))


def _knowledge_fits(session: Session, tenant: str, mindspace_id: str, *, title: str,
                    size: int) -> None:
    mindspace = mindspace_rows.get_mindspace(session=session, tenant=tenant,
                                             mindspace_id=mindspace_id)
    limits.check_knowledge(mindspace, mindspace_rows.chunks_of(
        session=session, tenant=tenant, mindspace_id=mindspace_id), title=title, size=size)


def usage(submitter: Submitter, tenant: str, mindspace_id: str) -> limits.MindspaceUsage:
    """What the mindspace holds and used, against its limits; its history's tokens as
    its model's tokenizer counts them (None when the model has none here)."""
    with submitter.database.session() as session:
        model = mindspace_rows.get_mindspace(session=session, tenant=tenant,
                                             mindspace_id=mindspace_id).model
    try:
        count: Callable[[str], int] | None = model_text(submitter.database, model).count
    except InvalidRequest:
        count = None
    with submitter.database.session() as session:
        return limits.usage(session=session, tenant=tenant, mindspace_id=mindspace_id,
                            count_tokens=count)


def knowledge(submitter: Submitter, tenant: str, mindspace_id: str) -> list[KnowledgeDocument]:
    with submitter.database.session() as session:
        mindspace_rows.get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
        chunks = mindspace_rows.chunks_of(session=session, tenant=tenant,
                                          mindspace_id=mindspace_id)
    documents: dict[str, KnowledgeDocument] = {}
    for chunk in chunks:
        document = documents.setdefault(chunk.document, KnowledgeDocument(
            id=chunk.document, title=chunk.title, chunks=0))
        document.chunks += 1
    return list(documents.values())
