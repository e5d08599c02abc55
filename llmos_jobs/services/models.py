"""Registering a model: a name, the directory (or server) it is loaded from, the engine
that serves it, and the context length its config declares. Each content registered
under a name is a version of it (llmos_jobs.db.versions)."""

from __future__ import annotations

from pathlib import Path

from llmos_jobs.db import deployments, registry, versions
from llmos_jobs.db.model_tables import ModelVersionPublic
from llmos_jobs.db.tables import RegisteredModelPublic
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.model_content import content_of
from llmos_jobs.services.submission import Submitter, validate
from schemas.model import EngineKind, ModelRegister

# What the engine reports when the directory declares nothing.
DEFAULT_CONTEXT = 4096


def register(submitter: Submitter, *, name: str, path: str | Path, engine: str,
             keep_alive: str | None = None, make_current: bool = True
             ) -> RegisteredModelPublic:
    """Version 1 of a new name, or version N+1 of a known one when the content differs
    from every version it has; the current version's content again is a no-op
    (``registered`` says ``unchanged``), an older version's is refused."""
    request = validate(ModelRegister, {"name": name, "path": str(path), "engine": engine,
                                       "keep_alive": keep_alive})
    directory = Path(request.path).expanduser().resolve()
    context = DEFAULT_CONTEXT
    local = request.engine in (EngineKind.transformers, EngineKind.sglang)
    if local and not directory.is_dir():
        raise InvalidRequest(f"model path {directory} is not a directory")
    if directory.is_dir():
        try:
            context = registry.context_length_of(str(directory))
        except (OSError, ValueError) as exc:
            if local:
                raise InvalidRequest(f"{directory} is not a model directory: {exc}") from None
    content = content_of(str(directory), request.engine.value)
    with submitter.database.session() as session:
        # A deployed name switches versions only through a rollout
        # (llmos_jobs.services.rollouts), never by a registration.
        if deployments.find_deployment(session=session, model=request.name) is not None:
            make_current = False
        done = versions.register_version(
            session=session, name=request.name, path=str(directory),
            engine=request.engine.value, context_length=context,
            content_hash=content.content_hash, size_bytes=content.size_bytes,
            keep_alive=request.keep_alive, make_current=make_current)
        model = done.model
        if done.new:
            submitter.model_registered(model.name, model.context_length)
        return RegisteredModelPublic(**model.model_dump(),
                                     registered="new" if done.new else "unchanged")


def list_versions(submitter: Submitter, name: str) -> list[ModelVersionPublic]:
    with submitter.database.session() as session:
        return versions.list_versions(session=session, name=name)
