"""SGLang's request and response shapes, shared by the in-process adapter
(``workers.engines.sglang``) and the HTTP one (``workers.engines.sglang_http``).

Matched against sgl-project/sglang at commit 001067fffe33427bee0ed2f007fb7551a1d76b44
(the 0.5.2x line): ``GenerateReqInput`` in python/sglang/srt/managers/io_struct.py
(text | input_ids, sampling_params, rid, priority, extra_key, cache_salt; "" in
extra_key/cache_salt means none), ``Engine.async_generate`` in entrypoints/engine.py
(which takes ``cache_salt`` but not ``extra_key``), and the ``meta_info`` built in
managers/tokenizer_manager.py: prompt_tokens, completion_tokens, cached_tokens and
finish_reason ``{"type": "stop"|"length"|"abort", ...}``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from schemas.common import ChatMessage
from workers.engines.base import (
    Completion,
    EngineRequest,
    EngineSampling,
    EngineStats,
    FinishReason,
    apply_stop,
)

InputKind = Literal["text", "input_ids"]
_FINISH_TYPES: tuple[FinishReason, ...] = ("stop", "length", "abort")
LOWEST_PRIORITY = 9  # llmos: 0 is the highest priority, 9 the lowest


class EngineUnloaded(RuntimeError):
    """The engine was unloaded: a request that still holds it fails at once instead of
    loading the model again behind the pool's back."""


class NamespaceLeak(RuntimeError):
    """The SGLang runtime serves one cache namespace from another's prefix cache."""


def to_sglang_priority(priority: int, *, low_values_first: bool = False) -> int:
    """llmos priority (0 highest) → SGLang's number for the same rank.

    SGLang python/sglang/srt/managers/schedule_policy.py sorts the waiting queue by
    ``req.priority * priority_sign`` ascending, with ``priority_sign = 1 if
    schedule_low_priority_values_first else -1``: by default LARGER values run first,
    so the scale is flipped; only ``--schedule-low-priority-values-first`` matches ours.
    """
    if not 0 <= priority <= LOWEST_PRIORITY:
        raise ValueError(f"priority {priority} is outside 0-{LOWEST_PRIORITY}")
    return priority if low_values_first else LOWEST_PRIORITY - priority


def build_sampling_params(sampling: EngineSampling) -> dict[str, object]:
    """SGLang ``sampling_params`` for one request. Temperature 0 is greedy there too
    (EngineSampling turns it into top_k=1)."""
    if sampling.max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {sampling.max_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {sampling.temperature}")
    params: dict[str, object] = {
        "max_new_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
    }
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.json_schema is not None:
        # SGLang's constrained decoding (its grammar backend) takes the schema as JSON text.
        params["json_schema"] = sampling.json_schema
    return params


def parse_finish_reason(raw: object) -> FinishReason:
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    for known in _FINISH_TYPES:
        if kind == known:
            return known
    raise ValueError(f"unexpected SGLang finish_reason {raw!r}")


def _count(meta: Mapping[str, object], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"SGLang meta_info.{key} is {value!r}, not a token count")
    return value


def parse_output(out: Mapping[str, object], stop: Sequence[str] = ()) -> Completion:
    """One element of SGLang's generate result: ``{"text": ..., "meta_info": {...}}``."""
    meta, text = out.get("meta_info"), out.get("text")
    if not isinstance(meta, Mapping) or not isinstance(text, str):
        raise ValueError(f"SGLang output lacks text or meta_info: {out!r}")
    reason = parse_finish_reason(meta.get("finish_reason"))
    # SGLang trims stop strings unless the server runs with no_stop_trim; cut anyway so
    # the protocol's "text ends before the stop string" holds for every server.
    text, hit_stop = apply_stop(text, stop)
    return Completion(
        text=text, finish_reason="stop" if hit_stop and reason == "length" else reason,
        prompt_tokens=_count(meta, "prompt_tokens"),
        completion_tokens=_count(meta, "completion_tokens"),
        cached_tokens=_count(meta, "cached_tokens", 0),  # absent on embedding outputs
    )


class StreamedText:
    """SGLang's streamed outputs of one request, handed on as the pieces of
    ``EngineRequest.on_text``. Each output's ``text`` is the whole text so far (SGLang's
    default, which the engine asks for: ``incremental_streaming_output=False``).
    SGLang's own detokeniser already holds back incomplete characters; what a stop
    string could still claim is held here, as the transformers engine does. A text that
    no longer extends what was sent sends nothing more until one does."""

    def __init__(self, on_text: Callable[[str], None], stop: Sequence[str]) -> None:
        self._on_text = on_text
        self.stop = tuple(stop)
        self._keep = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self._sent = 0
        self._sent_text = ""

    def update(self, text: str) -> None:
        self.text = text
        self._send_to(len(text) - self._keep)

    def finish(self, final: str) -> None:
        """The request ended with ``final`` (stop strings cut): send the rest of it."""
        self.text = final
        self._send_to(len(final))

    def _send_to(self, end: int) -> None:
        if end > self._sent and self.text.startswith(self._sent_text):
            piece, self._sent = self.text[self._sent:end], end
            self._sent_text += piece
            self._on_text(piece)


def update_weights_outcome(result: object) -> tuple[bool, str]:
    """``update_weights_from_disk`` answers ``(success, message, num_paused)`` in
    process; the HTTP route answers ``{"success", "message", "num_paused_requests"}``."""
    if isinstance(result, Mapping):
        return bool(result.get("success")), str(result.get("message", ""))
    if isinstance(result, tuple | list) and len(result) >= 2:
        return bool(result[0]), str(result[1])
    raise ValueError(f"unexpected update_weights_from_disk result {result!r}")


def token_ids_of(encoded: object) -> list[int]:
    # transformers 5 answers apply_chat_template with a BatchEncoding, 4.x with a list.
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"the chat template did not render to token ids: {encoded!r}")
    return ids


def input_of(request: EngineRequest,
             render_chat: Callable[[Sequence[ChatMessage], bool], list[int]]
             ) -> tuple[InputKind, str | list[int]]:
    given = [x is not None for x in (request.prompt, request.messages, request.input_ids)]
    if sum(given) != 1:
        raise ValueError("a request needs exactly one of prompt, messages, input_ids")
    if request.prompt is not None:
        return "text", request.prompt
    if request.messages is not None:
        # Token ids, not rendered text: SGLang would add a second BOS when tokenizing.
        return "input_ids", render_chat(request.messages, request.generation_prompt)
    assert request.input_ids is not None
    return "input_ids", list(request.input_ids)


def aborted() -> Completion:
    return Completion(text="", finish_reason="abort", prompt_tokens=0, completion_tokens=0)


def should_end(request: EngineRequest, now: float) -> bool:
    """The request was cancelled or its deadline passed: abort it in SGLang."""
    if request.deadline is not None and now >= request.deadline:
        return True
    return request.should_stop is not None and request.should_stop()


def record_completions(stats: EngineStats, done: Sequence[Completion], *, batch: int,
                       busy_s: float = 0.0) -> None:
    """SGLang's own forward passes are not visible from outside: ``batch`` is how many
    sequences it held at once as far as this adapter can see."""
    stats.requests += len(done)
    stats.record_batch(batch)
    stats.prompt_tokens += sum(c.prompt_tokens for c in done)
    stats.cached_tokens += sum(c.cached_tokens for c in done)
    stats.busy_s += busy_s


# -- cache namespaces ----------------------------------------------------------------

PROBE_TOKENS = 128  # whole pages for every page size SGLang offers (1 … 64)


def probe_ids() -> list[int]:
    """A prompt nobody sent before (its head is random), of small token ids that every
    vocabulary has."""
    head = [3 + b % 97 for b in uuid.uuid4().bytes]
    return head + [3 + (7 * i) % 97 for i in range(PROBE_TOKENS - len(head))]


def check_namespaces_isolated(cached_tokens: Callable[[list[int], str], int],
                              where: str) -> None:
    """Send one new prompt under two fresh namespaces: the second must find nothing in
    the prefix cache. A runtime that ignores the salt (SGLang before cache_salt, or
    one where extra_key never reached the scheduler, sgl-project/sglang#23300) would
    let tenants learn from cached_tokens and latency what others sent; it is refused.
    ``cached_tokens(ids, namespace)`` generates one token and answers its count."""
    ids = probe_ids()
    cached_tokens(ids, f"llmos-probe-{uuid.uuid4().hex}")
    leaked = cached_tokens(ids, f"llmos-probe-{uuid.uuid4().hex}")
    if leaked:
        raise NamespaceLeak(
            f"{where} served {leaked} cached tokens across two cache namespaces: it ignores "
            "cache_salt/extra_key, so tenants would share its prefix cache. Run an SGLang "
            "that isolates cache_salt, or start it with --disable-radix-cache")

