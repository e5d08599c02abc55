"""The in-process ``sglang.Engine`` adapter, and the request building, response parsing
and batching it shares with the HTTP adapter (``workers.sglang_http``).

Shapes are sgl-project/sglang's (python/sglang/srt/...): ``GenerateReqInput`` in
managers/io_struct.py (text | input_ids, sampling_params, rid, and ONE priority per
call), ``Engine`` in entrypoints/engine.py, and the ``meta_info`` built in
managers/tokenizer_manager.py: prompt_tokens, completion_tokens, cached_tokens and
finish_reason ``{"type": "stop"|"length"|"abort", ...}`` (managers/schedule_batch.py)."""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas.common import ChatMessage
from workers.engine import (
    Completion,
    EngineRequest,
    EngineStats,
    FinishReason,
    SamplingParams,
    apply_stop,
)

log = logging.getLogger(__name__)

InputKind = Literal["text", "input_ids"]
_FINISH_TYPES: tuple[FinishReason, ...] = ("stop", "length", "abort")
LOWEST_PRIORITY = 9  # llmos: 0 is the highest priority, 9 the lowest


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


def build_sampling_params(sampling: SamplingParams) -> dict[str, object]:
    """SGLang ``sampling_params`` for one request. Temperature 0 is greedy there too
    (SamplingParams turns it into top_k=1)."""
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


def update_weights_outcome(result: object) -> tuple[bool, str]:
    """``Engine.update_weights_from_disk`` returns ``(success, message, num_paused)``;
    the HTTP route answers ``{"success", "message", "num_paused_requests"}``."""
    if isinstance(result, Mapping):
        return bool(result.get("success")), str(result.get("message", ""))
    if isinstance(result, tuple | list) and len(result) >= 2:
        return bool(result[0]), str(result[1])
    raise ValueError(f"unexpected update_weights_from_disk result {result!r}")


@dataclass(frozen=True)
class GenerateCall:
    """One SGLang generate call: a batch that shares an input kind and a priority."""

    kind: InputKind
    inputs: list[str | list[int]]  # all of ``kind``
    sampling_params: list[dict[str, object]]
    rids: list[str]
    priority: int | None


def token_ids_of(encoded: object) -> list[int]:
    # transformers 5 answers apply_chat_template with a BatchEncoding, 4.x with a list.
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"the chat template did not render to token ids: {encoded!r}")
    return ids


def _input_of(request: EngineRequest,
              render_chat: Callable[[Sequence[ChatMessage]], list[int]]
              ) -> tuple[InputKind, str | list[int]]:
    given = [x is not None for x in (request.prompt, request.messages, request.input_ids)]
    if sum(given) != 1:
        raise ValueError("a request needs exactly one of prompt, messages, input_ids")
    if request.prompt is not None:
        return "text", request.prompt
    if request.messages is not None:
        # Token ids, not rendered text: SGLang would add a second BOS when tokenizing.
        return "input_ids", render_chat(request.messages)
    assert request.input_ids is not None
    return "input_ids", list(request.input_ids)


def _aborted() -> Completion:
    return Completion(text="", finish_reason="abort", prompt_tokens=0, completion_tokens=0)


def record_call(stats: EngineStats, done: list[Completion], busy_s: float) -> None:
    # SGLang's own forward passes are not visible from outside: one call counts as one.
    stats.requests += len(done)
    stats.record_batch(len(done))
    stats.prompt_tokens += sum(c.prompt_tokens for c in done)
    stats.cached_tokens += sum(c.cached_tokens for c in done)
    stats.busy_s += busy_s


def _try_abort(abort: Callable[[str], None], rid: str) -> None:
    try:
        abort(rid)
    except Exception:  # the request then runs to its end; nothing else is lost
        log.exception("could not abort SGLang request %s", rid)


class _StopWatcher:
    """Polls ``should_stop`` while a call runs and aborts the rids that ask to stop."""

    def __init__(self, watched: list[tuple[str, Callable[[], bool]]],
                 abort: Callable[[str], None], poll_s: float) -> None:
        self.stopped: set[str] = set()
        self._watched, self._abort, self._poll_s = watched, abort, poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sglang-stop")

    def _run(self) -> None:
        while not self._done.wait(self._poll_s):
            for rid, should_stop in self._watched:
                if rid not in self.stopped and should_stop():
                    self.stopped.add(rid)
                    _try_abort(self._abort, rid)

    def __enter__(self) -> _StopWatcher:
        if self._watched:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._watched:
            self._thread.join()


def generate_in_batches(
    requests: Sequence[EngineRequest], *,
    submit: Callable[[GenerateCall], Sequence[Mapping[str, object]]],
    abort: Callable[[str], None],
    render_chat: Callable[[Sequence[ChatMessage]], list[int]],
    priority_of: Callable[[int], int | None],
    on_batch: Callable[[list[Completion], float], None] = lambda done, busy_s: None,
    poll_s: float = 0.05,
) -> list[Completion]:
    """Results in request order, with one ``submit`` per (input kind, priority) group,
    most urgent group first: SGLang takes a single priority per call. A stopped request
    ends as "abort"; when an abort fails the whole call (newer SGLang raises instead of
    returning it), the requests that did not ask to stop are sent again."""
    inputs = [_input_of(r, render_chat) for r in requests]
    results: list[Completion | None] = [None] * len(requests)
    groups: dict[tuple[InputKind, int | None], list[int]] = {}
    for i in sorted(range(len(requests)), key=lambda i: requests[i].priority):
        request = requests[i]
        if request.should_stop is not None and request.should_stop():
            results[i] = _aborted()
        else:
            groups.setdefault((inputs[i][0], priority_of(request.priority)), []).append(i)
    for (kind, priority), pending in groups.items():
        while pending:
            rids = {i: uuid.uuid4().hex for i in pending}
            call = GenerateCall(
                kind=kind, inputs=[inputs[i][1] for i in pending],
                sampling_params=[build_sampling_params(requests[i].sampling) for i in pending],
                rids=[rids[i] for i in pending], priority=priority)
            watched = [(rids[i], stop) for i in pending
                       if (stop := requests[i].should_stop) is not None]
            started = time.monotonic()
            with _StopWatcher(watched, abort, poll_s) as watcher:
                try:
                    outputs = submit(call)
                except Exception:
                    if not watcher.stopped:
                        raise
                    for rid in set(call.rids) - watcher.stopped:
                        _try_abort(abort, rid)  # the call is lost; free the GPU first
                    for i in pending:
                        if rids[i] in watcher.stopped:
                            results[i] = _aborted()
                    pending = [i for i in pending if results[i] is None]
                    continue
            if len(outputs) != len(pending):
                raise ValueError(f"SGLang answered {len(outputs)} outputs for {len(pending)}")
            done = [parse_output(out, requests[i].sampling.stop)
                    for i, out in zip(pending, outputs, strict=True)]
            for i, completion in zip(pending, done, strict=True):
                results[i] = completion
            on_batch(done, time.monotonic() - started)
            pending = []
    return [r if r is not None else _aborted() for r in results]


class SGLangEngine:
    """``sglang.Engine`` in this process: its scheduler and detokenizer run as child
    processes on GPU ``gpu``. Calls are serialized: the engine drives one asyncio loop
    with ``run_until_complete``, so concurrent callers batch by sending lists."""

    def __init__(self, name: str, path: str, *, gpu: int = 0,
                 mem_fraction_static: float = 0.85, enable_priority: bool = False) -> None:
        self.name, self.path, self.gpu = name, path, gpu
        self.device = f"cuda:{gpu}"
        self.mem_fraction_static = mem_fraction_static
        self.enable_priority = enable_priority
        self._engine: Any = None  # sglang is untyped and absent on CPU-only hosts
        self._tokenizer: Any = None
        self._stats = EngineStats()
        self._stats_lock = threading.Lock()  # stats() must not wait for a generation
        self._lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def load(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            import sglang

            self._engine = sglang.Engine(
                model_path=self.path, base_gpu_id=self.gpu,
                mem_fraction_static=self.mem_fraction_static,
                enable_priority_scheduling=self.enable_priority,
            )
            self._tokenizer = getattr(self._engine.tokenizer_manager, "tokenizer", None)
            if self._tokenizer is None:  # skip_tokenizer_init servers keep none
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.path)

    def unload(self) -> None:
        with self._lock:
            engine, self._engine, self._tokenizer = self._engine, None, None
            if engine is not None:
                engine.shutdown()

    def warmup(self) -> None:
        self.generate([EngineRequest(sampling=SamplingParams(max_tokens=2), prompt="warm up")])

    def _priority(self, priority: int) -> int | None:
        return to_sglang_priority(priority) if self.enable_priority else None

    def _submit(self, call: GenerateCall) -> Sequence[Mapping[str, object]]:
        kwargs: dict[str, object] = {
            "prompt" if call.kind == "text" else "input_ids": call.inputs,
            "sampling_params": call.sampling_params, "rid": call.rids}
        if call.priority is not None:
            kwargs["priority"] = call.priority
        out = self._engine.generate(**kwargs)
        return [out] if isinstance(out, Mapping) else list(out)

    def _abort(self, rid: str) -> None:
        # The loop runs in whichever thread is inside generate(); this one is not it.
        engine = self._engine
        engine.loop.call_soon_threadsafe(
            functools.partial(engine.tokenizer_manager.abort_request, rid=rid))

    def _render_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        return token_ids_of(self._tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=True))

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self.load()
        with self._lock:
            return generate_in_batches(
                requests, submit=self._submit, abort=self._abort,
                render_chat=self._render_chat, priority_of=self._priority,
                on_batch=self._record)

    def _record(self, done: list[Completion], busy_s: float) -> None:
        with self._stats_lock:
            record_call(self._stats, done, busy_s)

    def tokenize(self, text: str) -> list[int]:
        self.load()
        return list(self._tokenizer.encode(text))

    def flush_cache(self) -> None:
        self.load()
        with self._lock:
            result = self._engine.flush_cache()
        if not getattr(result, "success", True):
            raise RuntimeError(f"SGLang refused to flush the cache of {self.name!r}: "
                               f"{getattr(result, 'message', '') or 'requests are running'}")

    def health(self) -> bool:
        return self._engine is not None and self._engine.tokenizer_manager is not None

    def stats(self) -> EngineStats:
        with self._stats_lock:
            return copy.deepcopy(self._stats)

    def update_weights(self, path: str) -> None:
        self.load()
        with self._lock:
            ok, message = update_weights_outcome(self._engine.update_weights_from_disk(path))
        if not ok:
            raise RuntimeError(f"SGLang could not load weights from {path}: {message}")
        self.path = path
