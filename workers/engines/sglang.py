"""The in-process ``sglang.Engine`` adapter.

Every request is its own ``Engine.async_generate`` on the engine's event loop, which
runs for the engine's lifetime in one thread of its own: the worker's job threads hand
SGLang as many sequences as they hold jobs, and its scheduler batches them
continuously. No lock is held across a generation. Each request carries its own rid,
priority and cache salt (the tenant), so cancelling or timing out one job aborts
exactly its rid.

API matched against sgl-project/sglang 001067fffe33427bee0ed2f007fb7551a1d76b44:
``Engine.async_generate(prompt | input_ids, sampling_params, rid, priority, *,
cache_salt)``, ``Engine.loop``, ``Engine.get_all_child_pids()``,
``tokenizer_manager.abort_request(rid)`` (sync, on the loop), the coroutines
``tokenizer_manager.flush_cache()`` and ``update_weights_from_disk(obj, request)``
that Engine's blocking wrappers drive with ``loop.run_until_complete`` (which cannot
be used while the loop runs in its own thread), and ServerArgs
``enable_priority_scheduling`` / ``schedule_low_priority_values_first``."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import copy
import dataclasses
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import psutil

from schemas.common import ChatMessage
from workers.engines.base import Completion, EngineRequest, EngineSampling, EngineStats
from workers.engines.sglang_io import (
    EngineUnloaded,
    StreamedText,
    aborted,
    build_sampling_params,
    check_namespaces_isolated,
    input_of,
    parse_output,
    record_completions,
    should_end,
    to_sglang_priority,
    token_ids_of,
    update_weights_outcome,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ABORT_RESEND_S = 1.0  # an abort sent before SGLang registered the rid is a no-op there
UNLOAD_GRACE_S = 5.0  # in-flight requests get this long to return their abort
HEALTHY_IF_ANSWERED_WITHIN_S = 5.0


class EngineSlotTaken(RuntimeError):
    """A second SGLang engine was asked for in a process that runs one."""


class _EngineLoop:
    """``sglang.Engine``'s own asyncio loop, run forever in one thread. SGLang binds its
    tokenizer manager's receive task to this loop on first use, so every coroutine of
    the engine must run here."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.loop = loop
        self._thread = threading.Thread(target=self._run, name=f"sglang-loop-{name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return self.submit(coro).result(timeout_s)

    def call(self, fn: Callable[..., object], *args: object) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)


def _server_arg_names() -> set[str] | None:
    """The fields of the installed ServerArgs, or None when it cannot be told."""
    try:
        from sglang.srt.server_args import ServerArgs

        return {f.name for f in dataclasses.fields(ServerArgs)}
    except Exception:
        return None


def _kill_trees(pids: Sequence[int], timeout_s: float = 30.0) -> None:
    """SIGKILL these processes and their descendants, and nothing else (as SGLang's own
    shutdown does to every child of the process, which would take other engines too)."""
    victims: list[psutil.Process] = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            victims += [*process.children(recursive=True), process]
        except psutil.NoSuchProcess:
            continue
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, alive = psutil.wait_procs(victims, timeout=timeout_s)
    if alive:
        log.error("SGLang processes %s did not exit", [p.pid for p in alive])


def _child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


class SGLangEngine:
    """``sglang.Engine`` in this process: its scheduler and detokenizer run as child
    processes on GPU ``gpu``. One per process: SGLang publishes its server args as
    process-wide state, so a second engine is refused until the first is unloaded."""

    _slot_lock: ClassVar[threading.Lock] = threading.Lock()
    _slot_owner: ClassVar[SGLangEngine | None] = None

    def __init__(self, name: str, path: str, *, gpu: int = 0,
                 mem_fraction_static: float = 0.85, enable_priority: bool = True,
                 poll_s: float = 0.05, health_timeout_s: float = 10.0) -> None:
        self.name, self.path, self.gpu = name, path, gpu
        self.device = f"cuda:{gpu}"
        self.mem_fraction_static = mem_fraction_static
        self.enable_priority = enable_priority
        self.poll_s, self.health_timeout_s = poll_s, health_timeout_s
        self._engine: Any = None  # sglang is untyped and absent on CPU-only hosts
        self._tokenizer: Any = None
        self._loop: _EngineLoop | None = None
        self._children: list[int] = []
        self._priority_on = self._low_values_first = self._salted = False
        self._unloaded = False
        self._stats = EngineStats(model=self.name)
        self._lock = threading.Lock()  # load/unload only; never held while generating
        self._inflight: dict[str, concurrent.futures.Future[Any]] = {}
        self._inflight_lock = threading.Lock()  # also guards _stats
        self._busy_since = 0.0
        self._last_answer = 0.0

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    # -- life cycle ----------------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            self._claim_slot()
            self._unloaded = False
            before = _child_pids()
            try:
                self._start()
            except BaseException:
                if self._engine is None:  # a half-started engine: what its start spawned
                    self._children = sorted(_child_pids() - before)
                self._stop_engine()
                self._release_slot()
                raise

    def _claim_slot(self) -> None:
        with SGLangEngine._slot_lock:
            owner = SGLangEngine._slot_owner
            if owner is not None:
                raise EngineSlotTaken(
                    f"cannot load {self.name!r}: this worker process already runs the SGLang "
                    f"engine of {owner.name!r}, and SGLang allows one engine per process. "
                    f"Unload {owner.name!r} here first, or serve {self.name!r} from another "
                    "worker")
            SGLangEngine._slot_owner = self

    def _release_slot(self) -> None:
        with SGLangEngine._slot_lock:
            if SGLangEngine._slot_owner is self:
                SGLangEngine._slot_owner = None

    def _server_kwargs(self, sglang: Any) -> dict[str, object]:
        fields = _server_arg_names()

        def has(name: str) -> bool:
            return fields is None or name in fields

        kwargs: dict[str, object] = {
            "model_path": self.path, "base_gpu_id": self.gpu,
            "mem_fraction_static": self.mem_fraction_static}
        if self.enable_priority and has("enable_priority_scheduling"):
            kwargs["enable_priority_scheduling"] = self._priority_on = True
            if has("schedule_low_priority_values_first"):
                kwargs["schedule_low_priority_values_first"] = self._low_values_first = True
        if fields is not None and "incremental_streaming_output" in fields:
            # Streamed outputs carry the whole text so far (sglang_io.StreamedText).
            kwargs["incremental_streaming_output"] = False
        self._salted = "cache_salt" in inspect.signature(sglang.Engine.async_generate).parameters
        if not self._salted:
            log.warning("this SGLang's Engine.async_generate takes no cache_salt: the radix "
                        "cache is disabled so that tenants do not share it")
            kwargs["disable_radix_cache"] = True
        return kwargs

    def _start(self) -> None:
        import sglang

        kwargs = self._server_kwargs(sglang)
        before = _child_pids()
        self._engine = engine = sglang.Engine(**kwargs)
        own = getattr(engine, "get_all_child_pids", None)
        self._children = list(own()) if callable(own) else sorted(_child_pids() - before)
        self._tokenizer = getattr(engine.tokenizer_manager, "tokenizer", None)
        if self._tokenizer is None:  # skip_tokenizer_init engines keep none
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._loop = _EngineLoop(engine.loop, self.name)
        if self._salted:
            check_namespaces_isolated(self._probe_cached, f"SGLang engine {self.name!r}")

    def _probe_cached(self, ids: list[int], namespace: str) -> int:
        [done] = self.generate([EngineRequest(
            sampling=EngineSampling(max_tokens=1), input_ids=ids, cache_namespace=namespace)])
        return done.cached_tokens

    def unload(self) -> None:
        """Abort what is in flight, stop the loop, and end this engine's own processes;
        later requests fail at once with EngineUnloaded."""
        with self._lock:
            self._unloaded = True
            if self._engine is None:
                return
            with self._inflight_lock:
                inflight = dict(self._inflight)
            for rid in inflight:
                self._abort(rid)
            concurrent.futures.wait(inflight.values(), timeout=UNLOAD_GRACE_S)
            self._stop_engine()
            self._release_slot()

    def _stop_engine(self) -> None:
        engine, loop = self._engine, self._loop
        self._engine = self._tokenizer = self._loop = None
        if loop is not None:
            loop.stop()
        with self._inflight_lock:
            for future in self._inflight.values():
                future.cancel()
        if engine is None:
            return
        # Not engine.shutdown(): it SIGKILLs every child of this process.
        watchdog = getattr(engine.tokenizer_manager, "_subprocess_watchdog", None)
        if watchdog is not None:  # it would SIGQUIT this process once its children die
            watchdog.stop()
        _kill_trees(self._children)
        self._children = []
        atexit.unregister(engine.shutdown)

    def warmup(self) -> None:
        self.generate([EngineRequest(sampling=EngineSampling(max_tokens=2), prompt="warm up")])

    # -- generation ----------------------------------------------------------------------

    def _running(self) -> tuple[Any, _EngineLoop]:
        if self._unloaded:
            raise EngineUnloaded(f"model {self.name!r} was unloaded from this worker")
        if self._engine is None:
            self.load()
        engine, loop = self._engine, self._loop
        if engine is None or loop is None:
            raise EngineUnloaded(f"model {self.name!r} was unloaded from this worker")
        return engine, loop

    def _render_chat(self, messages: Sequence[ChatMessage], generation_prompt: bool
                     ) -> list[int]:
        return token_ids_of(self._tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=generation_prompt,
            tokenize=True))

    def _call_args(self, request: EngineRequest, rid: str) -> dict[str, object]:
        kind, value = input_of(request, self._render_chat)
        kwargs: dict[str, object] = {
            "prompt" if kind == "text" else "input_ids": value,
            "sampling_params": build_sampling_params(request.sampling), "rid": rid}
        if self._priority_on:
            kwargs["priority"] = to_sglang_priority(
                request.priority, low_values_first=self._low_values_first)
        if self._salted and request.cache_namespace:
            kwargs["cache_salt"] = request.cache_namespace
        return kwargs

    def _abort(self, rid: str) -> None:
        loop, engine = self._loop, self._engine
        if loop is None or engine is None:
            return
        # abort_request writes to the scheduler's socket, which only the loop may use.
        loop.call(engine.tokenizer_manager.abort_request, rid)

    def _submit(self, loop: _EngineLoop, coro: Coroutine[Any, Any, Any],
                rid: str) -> concurrent.futures.Future[Any]:
        # Under the lock, so that a request finishing meanwhile counts this one in flight.
        with self._inflight_lock:
            if not self._inflight:
                self._busy_since = time.monotonic()
            future = self._inflight[rid] = loop.submit(coro)
            return future

    def _untrack(self, rid: str) -> None:
        with self._inflight_lock:
            if self._inflight.pop(rid, None) is not None and not self._inflight:
                self._stats.busy_s += time.monotonic() - self._busy_since

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        engine, loop = self._running()
        results: list[Completion | None] = [None] * len(requests)
        pending: dict[str, int] = {}
        futures: dict[str, concurrent.futures.Future[Any]] = {}
        try:
            for i, request in enumerate(requests):
                rid = uuid.uuid4().hex
                kwargs = self._call_args(request, rid)
                if should_end(request, time.monotonic()):
                    results[i] = aborted()
                    continue
                call = (engine.async_generate(**kwargs) if request.on_text is None
                        else _streamed(engine, kwargs, request))
                futures[rid] = self._submit(loop, call, rid)
                pending[rid] = i
            self._wait(requests, pending, futures, results)
        finally:
            for rid in futures:
                if rid in pending and not self._unloaded:  # unload() aborts its own
                    self._abort(rid)  # an error ended the wait: free the GPU of the rest
                self._untrack(rid)
        return [r if r is not None else aborted() for r in results]

    def _wait(self, requests: Sequence[EngineRequest], pending: dict[str, int],
              futures: dict[str, concurrent.futures.Future[Any]],
              results: list[Completion | None]) -> None:
        aborted_at: dict[str, float] = {}
        while pending:
            concurrent.futures.wait([futures[r] for r in pending], timeout=self.poll_s,
                                    return_when=concurrent.futures.FIRST_COMPLETED)
            for rid in [r for r in pending if futures[r].done()]:
                i = pending.pop(rid)
                results[i] = self._outcome(futures[rid], requests[i], rid in aborted_at)
            if pending and self._unloaded:
                raise EngineUnloaded(f"model {self.name!r} was unloaded while this ran")
            now = time.monotonic()
            for rid, i in pending.items():
                if rid in aborted_at:
                    if now - aborted_at[rid] >= ABORT_RESEND_S:
                        aborted_at[rid] = now
                        self._abort(rid)
                elif should_end(requests[i], now):
                    aborted_at[rid] = now
                    self._abort(rid)

    def _outcome(self, future: concurrent.futures.Future[Any], request: EngineRequest,
                 stopped: bool) -> Completion:
        try:
            out = future.result()
        except concurrent.futures.CancelledError as e:
            if stopped:
                return aborted()
            raise EngineUnloaded(f"model {self.name!r} was unloaded while this ran") from e
        except Exception:
            if stopped:  # newer SGLang raises for some aborted non-streaming requests
                return aborted()
            raise
        done = parse_output(out, request.sampling.stop)
        if done.finish_reason == "abort" and not stopped and self._unloaded:
            raise EngineUnloaded(f"model {self.name!r} was unloaded while this ran")
        with self._inflight_lock:
            record_completions(self._stats, [done], batch=len(self._inflight))
            self._last_answer = time.monotonic()
        return done

    # -- operations ----------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        self._running()
        return list(self._tokenizer.encode(text))

    def flush_cache(self) -> None:
        engine, loop = self._running()
        result = loop.run(engine.tokenizer_manager.flush_cache())
        if not getattr(result, "success", True):
            raise RuntimeError(f"SGLang refused to flush the cache of {self.name!r}: "
                               f"{getattr(result, 'message', '') or 'requests are running'}")

    def health(self) -> bool:
        """The loop runs and the engine answers: a recent answer, or a one-token request
        that must finish within health_timeout_s."""
        loop = self._loop
        if self._engine is None or loop is None or not loop.alive:
            return False
        if time.monotonic() - self._last_answer < HEALTHY_IF_ANSWERED_WITHIN_S:
            return True
        try:
            [done] = self.generate([EngineRequest(
                sampling=EngineSampling(max_tokens=1), input_ids=[3, 4, 5], priority=0,
                deadline=time.monotonic() + self.health_timeout_s)])
        except Exception:
            log.exception("SGLang engine %s failed its health probe", self.name)
            return False
        return done.finish_reason != "abort"

    def stats(self) -> EngineStats:
        with self._inflight_lock:
            return copy.deepcopy(self._stats)

    def update_weights(self, path: str) -> None:
        engine, loop = self._running()
        from sglang.srt.managers.io_struct import UpdateWeightFromDiskReqInput

        result = loop.run(engine.tokenizer_manager.update_weights_from_disk(
            UpdateWeightFromDiskReqInput(model_path=path), None))
        ok, message = update_weights_outcome(result)
        if not ok:
            raise RuntimeError(f"SGLang could not load weights from {path}: {message}")
        self.path = path


async def _streamed(engine: Any, kwargs: dict[str, object], request: EngineRequest) -> Any:
    """``async_generate`` with ``stream=True``: the text goes to ``request.on_text`` as
    SGLang decodes it; the last output (whose meta_info has the counts and the finish
    reason) is the answer, as a non-streamed call's would be."""
    assert request.on_text is not None
    text = StreamedText(request.on_text, request.sampling.stop)
    last: Any = None
    async for out in await engine.async_generate(**kwargs, stream=True):
        last = out
        meta = out.get("meta_info") or {}
        # The last output's text has the stop string trimmed, so it may be shorter than
        # the one before: it goes through finish, which knows that.
        if isinstance(out.get("text"), str) and meta.get("finish_reason") is None:
            text.update(out["text"])
    if last is not None:
        text.finish(parse_output(last, request.sampling.stop).text)
    return last
