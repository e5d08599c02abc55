"""The engine protocol every inference engine implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from schemas.common import ChatMessage


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineRequest:
    """One generation: a chat (rendered by the model's template) or a plain prompt."""

    sampling: SamplingParams
    prompt: str | None = None
    messages: Sequence[ChatMessage] | None = None
    priority: int = 5


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass
class EngineStats:
    requests: int = 0
    batches: list[int] = field(default_factory=list)


class Engine(Protocol):
    """A loaded-on-demand model that generates text."""

    name: str
    device: str

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def warmup(self) -> None: ...

    @property
    def loaded(self) -> bool: ...

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]: ...


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; True if one was found."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
