"""The engine protocol every inference engine implements."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from llmos_jobs import metrics
from schemas.common import ChatMessage

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class EngineSampling:
    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    # A JSON Schema (as JSON text) the output must match: engines with constrained
    # decoding (SGLang) decode only what it allows; the others generate freely, and the
    # worker validates the output either way.
    json_schema: str | None = None


@dataclass(frozen=True)
class EngineRequest:
    """One generation from exactly one of: token ids, chat messages (rendered by the
    model's chat template), or a plain prompt."""

    sampling: EngineSampling
    prompt: str | None = None
    messages: Sequence[ChatMessage] | None = None
    input_ids: Sequence[int] | None = None
    priority: int = 5
    # Polled between decoding steps; True stops this request (finish_reason "abort").
    # It must be cheap (read a flag): it runs on the decode loop for every step.
    should_stop: Callable[[], bool] | None = None
    # The prefix-cache namespace (the tenant): a request is served only from cache
    # entries of its own namespace, so no tenant learns from cached_tokens or latency
    # what another sent. "" is the namespace of shared, operator-declared prefixes.
    cache_namespace: str = ""
    # time.monotonic() after which the engine stops the request (finish "abort").
    deadline: float | None = None
    # Called with each new piece of the output text as it is decoded, on the engine's
    # own thread (so it must be cheap: hand the piece on, never block). The pieces,
    # joined, are exactly the Completion's text: a piece is sent only once no stop
    # string can still cut it away, and never splits a character.
    on_text: Callable[[str], None] | None = None
    # ``messages`` rendered with the opening of the assistant's reply (the chat
    # template's add_generation_prompt). False: the messages alone, as the prefix that
    # a later prompt over more messages begins with (a mindspace's persona).
    generation_prompt: bool = True


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens served from the prefix cache (SGLang's meta_info.cached_tokens).
    cached_tokens: int = 0
    # time.monotonic() when its first token was generated; None where the engine does
    # not say (SGLang, the no-op engine) or none was.
    first_token_at: float | None = None


_RECENT = 4096


@dataclass
class EngineStats:
    model: str = ""  # the model's name: the label of its batch sizes
    requests: int = 0
    forward_passes: int = 0
    max_batch: int = 0
    # The most recent forward passes: requests in each, and tokens computed per prefill.
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=_RECENT))
    prefill_inputs: deque[int] = field(default_factory=lambda: deque(maxlen=_RECENT))
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cache_bytes: int = 0
    cache_entries: int = 0
    busy_s: float = 0.0

    def record_batch(self, size: int) -> None:
        self.forward_passes += 1
        self.max_batch = max(self.max_batch, size)
        self.batch_sizes.append(size)
        metrics.BATCH_SIZE.labels(self.model).observe(size)

    def summary(self) -> dict[str, float]:
        """What a heartbeat reports."""
        return {
            "requests": self.requests, "forward_passes": self.forward_passes,
            "max_batch": self.max_batch, "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens, "cache_bytes": self.cache_bytes,
            "cache_entries": self.cache_entries, "busy_s": round(self.busy_s, 3),
        }


class Engine(Protocol):
    """A model that generates text; loaded on demand in the process that runs jobs."""

    name: str
    device: str

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def warmup(self) -> None: ...

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def flush_cache(self) -> None: ...

    def health(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def update_weights(self, path: str) -> None: ...


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; True if one was found."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
