"""Model family: register (versions), load, unload, warm up."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, model_validator

from schemas.common import Contract


class EngineKind(StrEnum):
    transformers = "transformers"  # CPU, or CUDA where present: the embedded default
    sglang = "sglang"  # in-process sglang.Engine on the worker's GPU (the gpu extra)
    sglang_http = "sglang-http"  # an SGLang server an operator runs (worker --sglang-url)
    noop = "noop"  # answers at once: for measuring the pipeline


KEEP_ALIVE_PATTERN = r"^-?\d+(\.\d+)?[smh]?$"
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
# ``NAME@N``: version N of model NAME; ``NAME`` alone: the version it currently serves.
_MODEL_REF = re.compile(r"^(?P<name>[^@]+)(@(?P<version>[0-9]+))?$")


def keep_alive_seconds(text: str) -> float:
    """Seconds from an Ollama-style duration ("5m", "30s", "0", "-1"); a negative
    number means forever. ValueError names what is wrong."""
    match = re.fullmatch(KEEP_ALIVE_PATTERN, text.strip())
    if match is None:
        raise ValueError(f"keep_alive {text!r} is not a duration: write 5m, 30s, 1h, 0 or -1")
    number = text.strip().rstrip("smh")
    return float(number) * _UNITS[text.strip()[len(number):]]


def split_model_ref(ref: str) -> tuple[str, int | None]:
    """(name, pinned version or None) of ``NAME`` or ``NAME@N``; ValueError otherwise."""
    match = _MODEL_REF.match(ref)
    if match is None:
        raise ValueError(f"model {ref!r} is not NAME or NAME@VERSION")
    version = match.group("version")
    return match.group("name"), (int(version) if version is not None else None)


class ModelRegister(Contract):
    """Registering a model is an administrator's act; models are shared by all tenants."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    path: str = Field(min_length=1, description="local model directory")
    engine: EngineKind = EngineKind.transformers
    keep_alive: str | None = Field(
        default=None, pattern=KEEP_ALIVE_PATTERN,
        description="how long the model stays loaded idle on a worker (Ollama style: 5m, "
                    "30s, 1h, 0 unloads after each job, negative keeps it forever); unset: "
                    "LLMOS_MODEL_KEEP_ALIVE")


class ModelOp(StrEnum):
    load = "load"
    unload = "unload"
    warmup = "warmup"
    # Compute a mindspace's persona prefix into the worker's prefix cache (sent when the
    # mindspace is created, to the worker its first turn will go to).
    prefill = "prefill"


class ModelOpRequest(Contract):
    version: Literal[1] = 1
    model: str = Field(min_length=1)
    op: ModelOp
    worker: str | None = Field(default=None, description="aim at one worker's direct queue")
    mindspace_id: str | None = Field(
        default=None, min_length=1,
        description="prefill: the mindspace whose persona prefix is computed (the worker "
                    "reads the persona from it: the payload carries no mindspace text)")
    replaces: int | None = Field(
        default=None, ge=1,
        description="warmup: the version this replica leaves; the worker loads the new "
                    "weights into its engine in place when it may (an idle engine of the "
                    "same architecture), else loads the new version beside it")

    @model_validator(mode="after")
    def _prefill_names_its_mindspace(self) -> Self:
        if (self.op == ModelOp.prefill) != (self.mindspace_id is not None):
            raise ValueError("mindspace_id is given with the prefill op, and only with it")
        return self


class ModelOpResult(Contract):
    version: Literal[1] = 1
    model: str
    op: ModelOp
    worker: str
    loaded: bool
    seconds: float = Field(ge=0)
    model_version: int | None = Field(default=None, description="the version it acted on")
    warmup_tokens: int | None = Field(
        default=None, description="warmup: tokens the short generation produced")
    warmup_seconds: float | None = Field(
        default=None, ge=0, description="warmup: how long the short generation took")
    prefix_tokens: int | None = Field(
        default=None, ge=0,
        description="prefill: tokens of the persona prefix now in the prefix cache (None: "
                    "the worker no longer held the model, and nothing was computed)")
    in_place: bool = Field(
        default=False, description="warmup replacing a version: the version's engine took "
                                   "the new weights in place")
    reload_reason: str | None = Field(
        default=None, description="warmup replacing a version: why the new version was "
                                  "loaded beside it instead of in place")
