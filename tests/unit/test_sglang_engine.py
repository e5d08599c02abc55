"""The in-process SGLang adapter, with ``sglang.Engine`` replaced by a stand-in of its
call shapes (tests/sglang_shapes.py names the commit they were read from): requests
run as coroutines on the stand-in's own event loop, aborts arrive by rid, the radix
cache is keyed by cache_salt, and the engine's scheduler is a real child process. One
GPU test runs the real engine."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
from transformers import AutoTokenizer

from schemas.common import ChatMessage
from tests.support.sglang_shapes import (
    ABORTED,
    EOS,
    RadixCache,
    check_generate_fields,
    check_sampling_params,
    output,
    req,
)
from tests.support.waiting import until
from workers.engines.base import Completion
from workers.engines.sglang import EngineSlotTaken, SGLangEngine
from workers.engines.sglang_io import EngineUnloaded, NamespaceLeak, StreamedText

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@dataclasses.dataclass
class ServerArgs:
    """The ServerArgs fields the adapter sets (server_args.py); unknown ones raise
    TypeError, as the real dataclass does."""

    model_path: str
    base_gpu_id: int = 0
    mem_fraction_static: float | None = None
    enable_priority_scheduling: bool = False
    abort_on_priority_when_disabled: bool = False
    schedule_low_priority_values_first: bool = False
    priority_scheduling_preemption_threshold: int = 10
    disable_radix_cache: bool = False
    log_level: str = "error"


@dataclasses.dataclass
class UpdateWeightFromDiskReqInput:  # io_struct.py
    model_path: str
    load_format: str | None = None


class TokenizerManager:
    """The parts of tokenizer_manager.py the adapter uses: the tokenizer, the sync
    ``abort_request(rid)`` and the flush / weights coroutines."""

    def __init__(self, engine: StandInEngine) -> None:
        self.engine = engine
        self.tokenizer = AutoTokenizer.from_pretrained(engine.server_args.model_path)
        self.aborted: list[str] = []
        self.abort_threads: set[str] = set()
        self._subprocess_watchdog = types.SimpleNamespace(stopped=False)
        self._subprocess_watchdog.stop = lambda: setattr(
            self._subprocess_watchdog, "stopped", True)

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.abort_threads.add(threading.current_thread().name)
        self.aborted.append(rid)
        event = self.engine.running.get(rid)
        if event is not None:
            event.set()

    async def flush_cache(self) -> types.SimpleNamespace:  # FlushCacheReqOutput
        return types.SimpleNamespace(success=self.engine.flush_ok, message="")

    async def update_weights_from_disk(self, obj: UpdateWeightFromDiskReqInput,
                                       request: object = None) -> tuple[bool, str, int]:
        self.engine.weights_from.append(obj.model_path)
        return self.engine.update


class StandInEngine:
    """Engine's surface as in sglang/srt/entrypoints/engine.py."""

    made: ClassVar[list[StandInEngine]] = []
    salted: ClassVar[bool] = True
    gate: ClassVar[int] = 0  # hold each request until this many are in flight
    hold: ClassVar[bool] = False  # hold each request until it is aborted

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.server_args = ServerArgs(**kwargs)
        self.loop = asyncio.new_event_loop()
        self.tokenizer_manager = TokenizerManager(self)
        self.calls: list[dict[str, Any]] = []
        self.running: dict[str, asyncio.Event] = {}
        self.in_flight = self.max_in_flight = 0
        self.cache = RadixCache(salted=StandInEngine.salted)
        self.flush_ok, self.update = True, (True, "Succeeded to update model weights.", 0)
        self.weights_from: list[str] = []
        self.shut = False
        self.scheduler = subprocess.Popen(SLEEPER)  # its scheduler/detokenizer stand-in
        StandInEngine.made.append(self)

    def get_all_child_pids(self) -> list[int]:
        return [self.scheduler.pid]

    async def async_generate(self, prompt: str | list[str] | None = None,
                             sampling_params: dict[str, Any] | None = None,
                             input_ids: list[int] | None = None, return_logprob: bool = False,
                             stream: bool = False, rid: str | None = None,
                             session_params: dict[str, Any] | None = None,
                             priority: int | None = None, session_id: str | None = None, *,
                             cache_salt: str | None = None) -> Any:
        fields = {"text": prompt, "sampling_params": sampling_params, "input_ids": input_ids,
                  "rid": rid, "priority": priority, "cache_salt": cache_salt,
                  "stream": stream or None}
        check_generate_fields(fields)
        check_sampling_params(sampling_params)
        assert rid is not None and rid not in self.running
        assert isinstance(prompt, str) or prompt is None, "one request per call"
        self.calls.append({k: v for k, v in fields.items() if v is not None})
        if stream:  # an async generator, as tokenizer_manager.generate_request's
            return self._stream(await self._serve(rid, prompt, input_ids, cache_salt))
        return await self._serve(rid, prompt, input_ids, cache_salt)

    async def _stream(self, final: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The outputs of a streamed request: the whole text so far (SGLang's default),
        unfinished, two characters more each time, then the final output."""
        text = final["text"]
        for end in range(1, len(text), 2):
            yield {**final, "text": text[:end],
                   "meta_info": {**final["meta_info"], "finish_reason": None}}
        yield final

    async def _serve(self, rid: str, prompt: str | None, input_ids: list[int] | None,
                     salt: str | None) -> dict[str, Any]:
        event = self.running[rid] = asyncio.Event()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            deadline = self.loop.time() + 5
            while self.gate and self.max_in_flight < self.gate and self.loop.time() < deadline:
                await asyncio.sleep(0.005)
            if StandInEngine.hold:
                await asyncio.wait_for(event.wait(), 10)
            if event.is_set():
                return output("", ABORTED, 0, 0, rid=rid)
            tokens = tuple(prompt.split()) if prompt is not None else tuple(input_ids or ())
            cached = self.cache.lookup_and_insert(tokens, salt)
            return output(f"#{rid[:4]}", EOS, len(tokens), 1, cached=cached, rid=rid)
        finally:
            self.in_flight -= 1
            del self.running[rid]

    def shutdown(self) -> None:  # kills every child of the process: must not be called
        self.shut = True


class OldEngine(StandInEngine):
    """SGLang before cache_salt reached Engine.async_generate (sgl-project/sglang#30827)."""

    async def async_generate(self, prompt: str | list[str] | None = None,  # type: ignore[override]
                             sampling_params: dict[str, Any] | None = None,
                             input_ids: list[int] | None = None, rid: str | None = None,
                             priority: int | None = None) -> dict[str, Any]:
        self.calls.append({"text": prompt, "input_ids": input_ids, "rid": rid})
        assert rid is not None and not isinstance(prompt, list)
        return await self._serve(rid, prompt, input_ids, None)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StandInEngine]]:
    StandInEngine.made = []
    for name, value in (("salted", True), ("gate", 0), ("hold", False)):
        monkeypatch.setattr(StandInEngine, name, value)
    modules = {
        "sglang": types.SimpleNamespace(Engine=StandInEngine),
        "sglang.srt": types.SimpleNamespace(),
        "sglang.srt.server_args": types.SimpleNamespace(ServerArgs=ServerArgs),
        "sglang.srt.managers": types.SimpleNamespace(),
        "sglang.srt.managers.io_struct": types.SimpleNamespace(
            UpdateWeightFromDiskReqInput=UpdateWeightFromDiskReqInput),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    yield StandInEngine
    for made in StandInEngine.made:
        made.loop.call_soon_threadsafe(made.loop.stop)  # engines a test left loaded
        made.scheduler.kill()
        made.scheduler.wait()
        # The stand-in made the loop, so it closes it (its self-pipe sockets too), once
        # the adapter's loop thread has let go of it.
        until(lambda made=made: not made.loop.is_running(), "the engine's loop stopped")
        made.loop.close()
    with SGLangEngine._slot_lock:
        SGLangEngine._slot_owner = None


def engine_of(path: Path, **kwargs: Any) -> SGLangEngine:
    return SGLangEngine("m", str(path), poll_s=0.01, **kwargs)


def test_sglang_is_imported_only_by_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sglang", None)
    engine = SGLangEngine("m", "/models/m")
    assert not engine.loaded
    with pytest.raises(ImportError):
        engine.load()
    assert SGLangEngine._slot_owner is None


def test_server_args_and_one_request_per_call(stand_in: type[StandInEngine],
                                              demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir, gpu=3, mem_fraction_static=0.5)
    messages = [ChatMessage(role="user", content="hi")]
    done = engine.generate([req("a b", priority=1), req(messages=messages, priority=1),
                            req("c", priority=8, cache_namespace="tenant-a")])
    [made] = stand_in.made
    assert made.kwargs == {"model_path": str(demo_model_dir), "base_gpu_id": 3,
                           "mem_fraction_static": 0.5, "enable_priority_scheduling": True,
                           "schedule_low_priority_values_first": True}
    probe_a, probe_b, text, chat, low = made.calls
    assert probe_a["cache_salt"] != probe_b["cache_salt"]  # load's namespace check
    # SGLang runs with low values first, so llmos numbers go as they are.
    assert text["text"] == "a b" and text["priority"] == 1 and "cache_salt" not in text
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    expected = tokenizer.apply_chat_template([m.model_dump() for m in messages],
                                             add_generation_prompt=True)["input_ids"]
    assert chat["input_ids"] == expected and chat["priority"] == 1
    assert low["text"] == "c" and low["priority"] == 8 and low["cache_salt"] == "tenant-a"
    assert text["sampling_params"] == {"max_new_tokens": 4, "temperature": 0.0}
    assert len({c["rid"] for c in made.calls}) == 5
    assert [c.text for c in done] == [f"#{c['rid'][:4]}" for c in (text, chat, low)]
    assert [c.finish_reason for c in done] == ["stop"] * 3
    assert engine.stats().requests == 5 and engine.stats().busy_s > 0
    assert engine.tokenize("the model") == tokenizer.encode("the model")


def test_concurrent_jobs_are_in_flight_in_sglang_at_once(stand_in: type[StandInEngine],
                                                         demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.load()
    stand_in.gate = 16  # each request waits (up to 5 s) until 16 are in flight
    results: list[Completion] = []
    threads = [threading.Thread(target=lambda i=i: results.extend(
        engine.generate([req(f"job {i}")]))) for i in range(16)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    [made] = stand_in.made
    assert made.max_in_flight == 16 and time.monotonic() - started < 4
    assert len(results) == 16 and {c.finish_reason for c in results} == {"stop"}
    assert engine.stats().max_batch == 16


def test_a_cancelled_job_aborts_its_rid_on_the_engine_loop(stand_in: type[StandInEngine],
                                                           demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.load()
    [made] = stand_in.made
    stand_in.hold = True
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    [done] = engine.generate([req("cancel me", should_stop=stop.is_set)])
    assert done.finish_reason == "abort"
    assert made.tokenizer_manager.aborted == [made.calls[-1]["rid"]]
    assert made.tokenizer_manager.abort_threads == {"sglang-loop-m"}


def test_a_deadline_aborts_only_its_own_rid(stand_in: type[StandInEngine],
                                            demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.load()
    [made] = stand_in.made
    stand_in.hold = True
    late: list[Completion] = []
    other = threading.Thread(target=lambda: late.extend(engine.generate([req("other")])))
    other.start()
    started = time.monotonic()
    [done] = engine.generate([req("slow", deadline=time.monotonic() + 0.2)])
    assert done.finish_reason == "abort" and time.monotonic() - started < 3
    slow_rid = next(c["rid"] for c in made.calls if c.get("text") == "slow")
    assert made.tokenizer_manager.aborted == [slow_rid]
    assert other.is_alive()  # the other job keeps running
    other_rid = next(c["rid"] for c in made.calls if c.get("text") == "other")
    made.loop.call_soon_threadsafe(made.running[other_rid].set)
    other.join(5)
    assert late and late[0].finish_reason == "abort"


def test_a_request_stopped_or_late_before_it_starts_is_never_sent(
        stand_in: type[StandInEngine], demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.load()
    [made] = stand_in.made
    sent = len(made.calls)
    done = engine.generate([req("a", should_stop=lambda: True),
                            req("b", deadline=time.monotonic() - 1), req("c")])
    assert [c.finish_reason for c in done] == ["abort", "abort", "stop"]
    assert [c["text"] for c in made.calls[sent:]] == ["c"]


def test_each_tenant_is_its_own_cache_namespace(stand_in: type[StandInEngine],
                                                demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    ids = list(range(10, 60))
    [a1] = engine.generate([req(input_ids=ids, cache_namespace="tenant-a")])
    [b1] = engine.generate([req(input_ids=[*ids, 1], cache_namespace="tenant-b")])
    [a2] = engine.generate([req(input_ids=[*ids, 2], cache_namespace="tenant-a")])
    [s1] = engine.generate([req(input_ids=[*ids, 3])])
    [s2] = engine.generate([req(input_ids=[*ids, 4])])
    assert (a1.cached_tokens, b1.cached_tokens, a2.cached_tokens) == (0, 0, 50)
    assert (s1.cached_tokens, s2.cached_tokens) == (0, 50)  # "": the shared namespace
    [made] = stand_in.made
    assert [c.get("cache_salt") for c in made.calls[2:]] == [
        "tenant-a", "tenant-b", "tenant-a", None, None]


def test_an_engine_that_shares_its_cache_across_namespaces_is_refused(
        stand_in: type[StandInEngine], demo_model_dir: Path) -> None:
    stand_in.salted = False
    engine = engine_of(demo_model_dir)
    with pytest.raises(NamespaceLeak, match="ignores cache_salt"):
        engine.load()
    [made] = stand_in.made
    assert not engine.loaded and SGLangEngine._slot_owner is None
    made.scheduler.wait(10)  # its processes were ended with it


def test_without_cache_salt_the_radix_cache_is_disabled(
        stand_in: type[StandInEngine], demo_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sglang", types.SimpleNamespace(Engine=OldEngine))
    engine = engine_of(demo_model_dir)
    [done] = engine.generate([req("x", cache_namespace="tenant-a")])
    [made] = stand_in.made
    assert made.kwargs["disable_radix_cache"] is True and done.finish_reason == "stop"
    assert len(made.calls) == 1  # no namespace probe: nothing is cached at all


def test_an_sglang_without_priority_scheduling_gets_no_priority(
        stand_in: type[StandInEngine], demo_model_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class OldServerArgs:
        model_path: str
        base_gpu_id: int = 0
        mem_fraction_static: float | None = None

    monkeypatch.setitem(sys.modules, "sglang.srt.server_args",
                        types.SimpleNamespace(ServerArgs=OldServerArgs))
    engine = engine_of(demo_model_dir)
    engine.generate([req("x", priority=0)])
    [made] = stand_in.made
    assert "enable_priority_scheduling" not in made.kwargs
    assert "priority" not in made.calls[-1]


def test_one_sglang_engine_per_process(stand_in: type[StandInEngine],
                                       demo_model_dir: Path) -> None:
    first = SGLangEngine("first", str(demo_model_dir), poll_s=0.01)
    first.load()
    second = SGLangEngine("second", str(demo_model_dir), poll_s=0.01)
    with pytest.raises(EngineSlotTaken, match="already runs the SGLang engine of 'first'"):
        second.load()
    assert len(stand_in.made) == 1 and first.loaded and first.health()
    first.unload()
    second.load()
    assert second.loaded and len(stand_in.made) == 2


def test_unload_ends_only_its_own_processes(stand_in: type[StandInEngine],
                                            demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.load()
    [made] = stand_in.made
    neighbour = subprocess.Popen(SLEEPER)  # another engine's child in this process
    try:
        own = psutil.Process(made.scheduler.pid)
        engine.unload()
        assert made.scheduler.wait(10) is not None and not own.is_running()
        assert neighbour.poll() is None and psutil.pid_exists(neighbour.pid)
        assert not made.shut and made.tokenizer_manager._subprocess_watchdog.stopped
        assert not engine.loaded and not engine.health()
        started = time.monotonic()
        with pytest.raises(EngineUnloaded, match="'m' was unloaded"):
            engine.generate([req("after")])
        assert time.monotonic() - started < 0.5 and len(stand_in.made) == 1
    finally:
        neighbour.kill()
        neighbour.wait()


def test_unload_fails_what_is_in_flight(stand_in: type[StandInEngine],
                                        demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.load()
    [made] = stand_in.made
    stand_in.hold = True
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.generate([req("long")])
        except BaseException as e:
            errors.append(e)

    job = threading.Thread(target=run)
    job.start()
    while not made.running:
        time.sleep(0.01)
    engine.unload()
    job.join(10)
    assert [type(e) for e in errors] == [EngineUnloaded]
    assert made.tokenizer_manager.aborted == [made.calls[-1]["rid"]]


def test_health_probes_the_engine(stand_in: type[StandInEngine],
                                  demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir, health_timeout_s=0.3)
    assert not engine.health()  # not loaded
    engine.load()
    [made] = stand_in.made
    engine._last_answer = 0.0  # no recent answer: a one-token probe
    assert engine.health()
    assert made.calls[-1]["priority"] == 0
    assert made.calls[-1]["sampling_params"]["max_new_tokens"] == 1
    stand_in.hold = True  # the engine stops answering
    engine._last_answer = 0.0
    assert not engine.health()
    assert made.tokenizer_manager.aborted == [made.calls[-1]["rid"]]


def test_flush_and_update_weights_run_on_the_engine_loop(
        stand_in: type[StandInEngine], demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    engine.flush_cache()
    [made] = stand_in.made
    made.flush_ok = False
    with pytest.raises(RuntimeError, match="refused to flush"):
        engine.flush_cache()
    engine.update_weights("/new")
    assert made.weights_from == ["/new"] and engine.path == "/new"
    made.update = (False, "Failed to get weights iterator", 0)
    with pytest.raises(RuntimeError, match="/bad: Failed to get weights iterator"):
        engine.update_weights("/bad")


# -- the real engine ----------------------------------------------------------------

@pytest.mark.gpu
def test_real_sglang_engine_on_gpu() -> None:
    pytest.importorskip("sglang")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path = os.environ.get("LLMOS_GPU_TEST_MODEL")
    if not path:
        pytest.skip("LLMOS_GPU_TEST_MODEL names no model directory")
    engine = SGLangEngine("gpu", path, mem_fraction_static=0.5)
    try:
        prompt = "The capital of France is"
        first, second = engine.generate([req(prompt, max_tokens=8, priority=0),
                                         req(prompt, max_tokens=8, priority=9)])
        assert first.text == second.text and first.text
        assert first.prompt_tokens == len(engine.tokenize(prompt))
        assert 1 <= first.completion_tokens <= 8
        [again] = engine.generate([req(prompt, max_tokens=8)])
        assert again.text == first.text and again.cached_tokens > 0
        [other] = engine.generate([req(prompt, max_tokens=8, cache_namespace="t")])
        assert other.text == first.text and other.cached_tokens == 0
        [cut] = engine.generate([req(prompt, max_tokens=1000,
                                     deadline=time.monotonic() + 0.05)])
        assert cut.finish_reason == "abort"
        engine.flush_cache()
        [cold] = engine.generate([req(prompt, max_tokens=8)])
        assert cold.cached_tokens == 0
        [chat] = engine.generate([req(messages=[ChatMessage(role="user", content="hi")])])
        assert chat.prompt_tokens > 1 and chat.finish_reason in ("stop", "length")
        assert engine.health()
    finally:
        engine.unload()


def test_sglang_workers_hand_the_engine_many_jobs_at_once() -> None:
    from llmos_jobs.db.session import Database
    from llmos_jobs.settings import Settings
    from schemas.model import EngineKind
    from workers.engines.pool import EngineChoice
    from workers.main import CPU_CONCURRENCY, SGLANG_CONCURRENCY, default_concurrency

    # An engine given by --engine: the registry is never read.
    unread = Database.from_settings(Settings(database_url="sqlite:////nonexistent/llmos.db"))
    for kind in (EngineKind.sglang, EngineKind.sglang_http):
        assert default_concurrency(pool="threads", choice=EngineChoice(kind=kind),
                                   models=None, database=unread) == SGLANG_CONCURRENCY == 64
    assert default_concurrency(pool="threads", choice=EngineChoice(
        kind=EngineKind.transformers), models=None, database=unread) == CPU_CONCURRENCY == 8
    assert default_concurrency(pool="prefork", choice=EngineChoice(kind=EngineKind.sglang),
                               models=None, database=unread) == CPU_CONCURRENCY


def test_a_streamed_request_hands_on_sglangs_text_as_it_grows(
        stand_in: type[StandInEngine], demo_model_dir: Path) -> None:
    engine = engine_of(demo_model_dir)
    pieces: list[str] = []
    [streamed, plain] = engine.generate([req("a b", on_text=pieces.append), req("c d")])
    *_, streamed_call, plain_call = stand_in.made[0].calls
    assert streamed_call["stream"] is True and "stream" not in plain_call
    assert streamed.text == f"#{streamed_call['rid'][:4]}" and streamed.finish_reason == "stop"
    assert "".join(pieces) == streamed.text and len(pieces) > 1
    assert plain.text == f"#{plain_call['rid'][:4]}"


@pytest.mark.parametrize("outputs, stop, final", [
    # The whole text so far each time; the last one has the stop string trimmed.
    (["alpha", "alpha be", "alpha beta"], ["beta g"], "alpha "),
    (["ab", "abcd", "abcdef"], [], "abcdefg"),
    # A multi-byte character arrives whole: SGLang's detokeniser held it back.
    (["€", "€ ü", "€ üß"], ["ß!"], "€ ü"),
])
def test_streamed_text_never_sends_what_a_stop_string_takes_back(
        outputs: list[str], stop: list[str], final: str) -> None:
    pieces: list[str] = []
    text = StreamedText(pieces.append, stop)
    for output_text in outputs:
        text.update(output_text)
        assert final.startswith("".join(pieces))  # nothing sent is ever taken back
    text.finish(final)
    assert "".join(pieces) == final
