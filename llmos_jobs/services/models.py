"""Registering a model: a name, the directory (or server) it is loaded from, the engine
that serves it, and the context length its config declares."""

from __future__ import annotations

from pathlib import Path

from llmos_jobs.db import registry
from llmos_jobs.db.tables import RegisteredModelBase, RegisteredModelPublic
from llmos_jobs.errors import InvalidRequest
from llmos_jobs.services.submission import Submitter, validate
from schemas.model import EngineKind, ModelRegister

# What the engine reports when the directory declares nothing.
DEFAULT_CONTEXT = 4096


def register(submitter: Submitter, *, name: str, path: str | Path, engine: str
             ) -> RegisteredModelPublic:
    request = validate(ModelRegister, {"name": name, "path": str(path), "engine": engine})
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
    row_in = RegisteredModelBase(name=request.name, path=str(directory),
                                 engine=request.engine.value, context_length=context)
    with submitter.database.session() as session:
        row = registry.register_model(session=session, model_in=row_in)
        submitter.model_registered(row.name, row.context_length)
        return RegisteredModelPublic(**row.model_dump())
