"""Registered models (shared by all tenants) and their versions. Registering a name
again with other content adds version N+1; ``registered_model.current_version`` says
which one ``NAME`` serves, and ``NAME@N`` pins one. A version row is never changed: a
job that recorded version N is served by exactly that content."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field as PField
from sqlmodel import Field, SQLModel

from llmos_jobs.db.types import UTCDateTime, utcnow


class RegisteredModelBase(SQLModel):
    """A model name. ``path``, ``engine`` and ``context_length`` are those of its
    current version (ModelVersion below), copied by the same
    compare-and-set that moves ``current_version``."""

    name: str = Field(primary_key=True)
    path: str
    engine: str
    context_length: int = Field(gt=0)
    # How long a worker keeps it loaded while idle (Ollama style: "5m", "0", "-1");
    # None: the worker's LLMOS_MODEL_KEEP_ALIVE.
    keep_alive: str | None = None


class RegisteredModel(RegisteredModelBase, table=True):
    __tablename__ = "registered_model"
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # The version that jobs naming NAME alone get; a rollout moves it in one statement.
    current_version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class RegisteredModelPublic(RegisteredModelBase):
    created_at: datetime
    current_version: int = 1
    loaded_on: list[str] = Field(default_factory=list, description="live workers holding it")
    registered: str | None = PField(
        default=None, description="in a registration's answer, what it did: new (a new "
                                  "version), unchanged (the current version has this content)")


class ModelVersionBase(SQLModel):
    name: str = Field(primary_key=True, foreign_key="registered_model.name",
                      ondelete="CASCADE")
    version: int = Field(primary_key=True, ge=1)
    path: str
    engine: str
    context_length: int = Field(gt=0)
    # sha256 of what makes the model (llmos_jobs.model_content): the same content twice
    # is the same version.
    content_hash: str = Field(max_length=64)
    # Bytes of its weight files (what a worker's model pool counts); 0 when the
    # directory has none here (a remote server's model).
    size_bytes: int = Field(default=0, ge=0, sa_column_kwargs={"server_default": "0"})


class ModelVersion(ModelVersionBase, table=True):
    __tablename__ = "model_version"

    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ModelVersionPublic(ModelVersionBase):
    created_at: datetime
    current: bool = Field(default=False, description="the version NAME alone serves")
