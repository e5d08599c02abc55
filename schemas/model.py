"""Model family: register, load, unload, warm up."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas.common import Contract


class EngineKind(StrEnum):
    transformers = "transformers"  # CPU, or CUDA where present: the embedded default
    sglang = "sglang"  # in-process sglang.Engine on the worker's GPU (the gpu extra)
    sglang_http = "sglang-http"  # an SGLang server an operator runs (worker --sglang-url)
    noop = "noop"  # answers at once: for measuring the pipeline


class ModelRegister(Contract):
    """Registering a model is an administrator's act; models are shared by all tenants."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    path: str = Field(min_length=1, description="local model directory")
    engine: EngineKind = EngineKind.transformers


class ModelOp(StrEnum):
    load = "load"
    unload = "unload"
    warmup = "warmup"


class ModelOpRequest(Contract):
    version: Literal[1] = 1
    model: str = Field(min_length=1)
    op: ModelOp
    worker: str | None = Field(default=None, description="aim at one worker's direct queue")


class ModelOpResult(Contract):
    version: Literal[1] = 1
    model: str
    op: ModelOp
    worker: str
    loaded: bool
    seconds: float = Field(ge=0)
