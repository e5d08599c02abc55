"""Mindspaces as a tenant sees them: create, configure, read, snapshot, fork, restore,
destroy, their knowledge base, and submitting a turn (whose order and routing are
llmos_jobs.services.turns's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from broker_config import language_queue
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import mindspaces as mindspace_rows
from llmos_jobs.db.tables import (
    JobPublic,
    KnowledgeChunk,
    MindspaceBase,
    MindspacePublic,
    MindspaceSettings,
    SnapshotPublic,
    new_id,
)
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services import turns
from llmos_jobs.services.knowledge import chunk_text, embedder
from llmos_jobs.services.routing import RoutingPolicy
from llmos_jobs.services.submission import Submitter, validate
from schemas.common import JobKind
from schemas.mindspace import MindspaceCreate, MindspaceTurnRequest


@dataclass
class KnowledgeDocument:
    id: str
    title: str
    chunks: int


def create(submitter: Submitter, tenant: str, *, model: str, persona: str | None,
           name: str | None, settings: dict[str, Any]) -> MindspacePublic:
    request = validate(MindspaceCreate, {"model": model, "persona": persona, "name": name})
    submitter.limits.persona(request.persona)
    submitter.check_model(request.model, None)
    options = validate(MindspaceSettings, settings).model_dump()
    with submitter.database.session() as session:
        row = mindspace_rows.create_mindspace(session=session, mindspace_in=MindspaceBase(
            tenant=tenant, settings=options, **request.model_dump()))
        return mindspace_rows.show_mindspace(session=session, tenant=tenant,
                                             mindspace_id=row.id)


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
            mindspace_rows.configure(session=session, tenant=tenant, mindspace_id=mindspace_id,
                                     persona=persona, settings=settings)
        except ValidationError as exc:
            raise InvalidRequest(str(exc.errors()[0]["msg"])) from None
        return mindspace_rows.show_mindspace(session=session, tenant=tenant,
                                             mindspace_id=mindspace_id)


def submit_turn(submitter: Submitter, tenant: str, mindspace_id: str, message: str, *,
                max_tokens: int | None, temperature: float | None, priority: int,
                timeout_s: float | None) -> JobPublic:
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
            "max_tokens": defaults.max_tokens if max_tokens is None else max_tokens,
            "temperature": defaults.temperature if temperature is None else temperature,
            "timeout_s": timeout_s,
        })
        submitter.check_model(mindspace.model, request.max_tokens)
        job, released = turns.accept(
            session=session, mindspace=mindspace, job_in=job_rows.JobCreate(
                tenant=tenant, kind=JobKind.mindspace_turn, priority=priority,
                model=mindspace.model, mindspace_id=mindspace.id,
                payload=request.model_dump(mode="json"),
                queue=language_queue(mindspace.model)),  # routed when released
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
                              messages=len(snap.data["messages"]), created_at=snap.created_at)


def add_knowledge(submitter: Submitter, tenant: str, mindspace_id: str, text: str, *,
                  title: str) -> KnowledgeDocument:
    """Add a text or Markdown document: chunked, embedded, stored encrypted."""
    submitter.limits.knowledge(title, text)
    if not text.strip():
        raise InvalidRequest(f"document {title!r} is empty")
    with submitter.database.session() as session:
        mindspace_rows.get_mindspace(session=session, tenant=tenant, mindspace_id=mindspace_id)
    pieces = chunk_text(text)
    vectors = embedder().embed(pieces)
    document = new_id()
    with submitter.database.session() as session:
        mindspace_rows.add_chunks(session=session, chunks=[
            KnowledgeChunk(mindspace_id=mindspace_id, tenant=tenant, document=document,
                           title=title, position=i, text=piece, embedding=vector.tobytes())
            for i, (piece, vector) in enumerate(zip(pieces, vectors, strict=True))])
    return KnowledgeDocument(id=document, title=title, chunks=len(pieces))


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
