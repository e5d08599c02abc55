"""SGLang adapters: request building and response parsing against the shapes in
sgl-project/sglang (io_struct.py, tokenizer_manager.py, schedule_batch.py,
http_server.py). The HTTP server is replaced at the transport (httpx.MockTransport);
the in-process ``sglang.Engine`` by a stand-in module with its call signatures. One
GPU test runs the real engine."""

from __future__ import annotations

import json
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from transformers import AutoTokenizer

from schemas.common import ChatMessage
from workers.engine import Completion, EngineRequest, SamplingParams
from workers.sglang_engine import (
    SGLangEngine,
    build_sampling_params,
    parse_output,
    to_sglang_priority,
    update_weights_outcome,
)
from workers.sglang_http import SGLangServerEngine, SGLangServerError

URL = "http://sglang.test:30000"
LENGTH = {"type": "length", "length": 4}  # FINISH_LENGTH.to_json()
EOS = {"type": "stop", "matched": 2}  # FINISH_MATCHED_TOKEN.to_json()


def output(text: str, finish: dict[str, Any], prompt: int, completion: int,
           cached: int = 0) -> dict[str, Any]:
    """One element of a /generate or Engine.generate answer (tokenizer_manager.py)."""
    return {"text": text, "output_ids": list(range(completion)), "meta_info": {
        "id": "rid", "finish_reason": finish, "prompt_tokens": prompt,
        "completion_tokens": completion, "cached_tokens": cached, "e2e_latency": 0.01}}


def req(prompt: str | None = None, *, priority: int = 5, max_tokens: int = 4,
        stop: tuple[str, ...] = (), **kw: Any) -> EngineRequest:
    return EngineRequest(sampling=SamplingParams(max_tokens=max_tokens, stop=stop),
                         prompt=prompt, priority=priority, **kw)


# -- pure request building and response parsing -----------------------------------

def test_sampling_params_use_sglang_names() -> None:
    greedy = build_sampling_params(SamplingParams(max_tokens=7))
    assert greedy == {"max_new_tokens": 7, "temperature": 0.0}
    sampled = build_sampling_params(SamplingParams(max_tokens=3, temperature=0.7,
                                                   stop=("\n", "END")))
    assert sampled == {"max_new_tokens": 3, "temperature": 0.7, "stop": ["\n", "END"]}
    with pytest.raises(ValueError, match="max_tokens"):
        build_sampling_params(SamplingParams(max_tokens=-1))


def test_priority_keeps_llmos_order_under_sglangs_queue_sort() -> None:
    # schedule_policy.py sorts the waiting queue by priority * priority_sign, ascending;
    # priority_sign is -1 unless schedule_low_priority_values_first.
    ours = [5, 0, 9, 1, 8]
    for low_first, sign in ((False, -1), (True, 1)):
        ranked = sorted(ours, key=lambda p: sign * to_sglang_priority(
            p, low_values_first=low_first))
        assert ranked == [0, 1, 5, 8, 9]
    assert to_sglang_priority(0) == 9 and to_sglang_priority(9) == 0
    with pytest.raises(ValueError, match="outside"):
        to_sglang_priority(10)


@pytest.mark.parametrize(("finish", "reason"), [
    (LENGTH, "length"), (EOS, "stop"), ({"type": "stop", "matched": "\n\n"}, "stop"),
    ({"type": "abort", "message": "Abort before prefill", "status_code": None,
      "err_type": None}, "abort")])
def test_output_meta_info_becomes_a_completion(finish: dict[str, Any], reason: str) -> None:
    done = parse_output(output("four score", finish, prompt=11, completion=4, cached=8))
    assert done == Completion(text="four score", finish_reason=reason,  # type: ignore[arg-type]
                              prompt_tokens=11, completion_tokens=4, cached_tokens=8)


def test_a_stop_string_left_in_the_text_is_cut() -> None:
    done = parse_output(output("alpha END beta", LENGTH, 3, 4), stop=("END",))
    assert (done.text, done.finish_reason) == ("alpha ", "stop")


@pytest.mark.parametrize("bad", [
    {"text": "x"}, {"meta_info": {}},
    output("x", {"type": "finished"}, 1, 1), output("x", LENGTH, 1, 1) | {"meta_info": {
        "finish_reason": LENGTH, "prompt_tokens": "3", "completion_tokens": 1}}])
def test_malformed_outputs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SGLang"):
        parse_output(bad)


def test_update_weights_results_from_engine_and_server() -> None:
    assert update_weights_outcome((True, "Succeeded to update model weights.", 0)) == (
        True, "Succeeded to update model weights.")
    assert update_weights_outcome({"success": False, "message": "no such dir",
                                   "num_paused_requests": 0}) == (False, "no such dir")


# -- the HTTP adapter against a transport that answers like SGLang ----------------

class FakeServer:
    """Answers SGLang's routes; records (method, path, json body) of every call."""

    def __init__(self, *, priority: bool = True, low_first: bool = False,
                 tokenizer_path: str = "/models/m") -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.routes: dict[str, Callable[[Any], httpx.Response]] = {
            "/health": lambda b: httpx.Response(200),
            "/model_info": lambda b: httpx.Response(200, json={
                "model_path": "/models/m", "tokenizer_path": tokenizer_path,
                "is_generation": True, "preferred_sampling_params": None,
                "weight_version": "default"}),
            "/server_info": lambda b: httpx.Response(200, json={
                "model_path": "/models/m", "enable_priority_scheduling": priority,
                "schedule_low_priority_values_first": low_first,
                "max_total_num_tokens": 20480, "internal_states": [{}], "version": "0.5"}),
            "/generate": self.generate,
            "/abort_request": lambda b: httpx.Response(200),
        }

    def generate(self, body: dict[str, Any]) -> httpx.Response:
        inputs = body.get("text") or body["input_ids"]
        return httpx.Response(200, json=[
            output(f"out:{x if isinstance(x, str) else len(x)}", LENGTH, 3, 4)
            for x in inputs])

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        route = self.routes.get(request.url.path)
        return route(body) if route else httpx.Response(404, json={"detail": "Not Found"})

    def bodies(self, path: str) -> list[Any]:
        return [b for _, p, b in self.calls if p == path]

    def engine(self) -> SGLangServerEngine:
        client = httpx.Client(transport=httpx.MockTransport(self.handle))
        return SGLangServerEngine("m", URL + "/", client=client)


def test_one_generate_per_priority_most_urgent_first_in_sglang_numbers() -> None:
    server = FakeServer()
    engine = server.engine()
    done = engine.generate([req("bb", priority=8, stop=("x",)), req("a", priority=1),
                            req("c", priority=1)])
    assert [c.text for c in done] == ["out:bb", "out:a", "out:c"]
    first, second = server.bodies("/generate")
    assert first["text"] == ["a", "c"] and first["priority"] == 8
    assert second["text"] == ["bb"] and second["priority"] == 1
    assert second["sampling_params"] == [
        {"max_new_tokens": 4, "temperature": 0.0, "stop": ["x"]}]
    assert len(set(first["rid"])) == 2
    assert [p for _, p, _ in server.calls[:3]] == ["/health", "/model_info", "/server_info"]
    stats = engine.stats()
    assert (stats.requests, list(stats.batch_sizes), stats.prompt_tokens) == (3, [2, 1], 9)
    assert stats.max_batch == 2 and stats.busy_s > 0


def test_no_priority_is_sent_when_the_server_does_not_schedule_by_it() -> None:
    server = FakeServer(priority=False)
    server.engine().generate([req("a", priority=0), req("b", priority=9)])
    [body] = server.bodies("/generate")
    assert body["text"] == ["a", "b"] and "priority" not in body


def test_low_priority_values_first_servers_get_llmos_numbers() -> None:
    server = FakeServer(low_first=True)
    server.engine().generate([req("a", priority=2)])
    assert server.bodies("/generate")[0]["priority"] == 2


def test_older_servers_answer_on_get_prefixed_routes() -> None:
    server = FakeServer()
    server.routes["/get_model_info"] = server.routes.pop("/model_info")
    server.routes["/get_server_info"] = server.routes.pop("/server_info")
    engine = server.engine()
    engine.load()
    assert engine.loaded and engine.model_info["model_path"] == "/models/m"
    engine.generate([req("a", priority=0)])
    assert server.bodies("/generate")[0]["priority"] == 9


def test_load_names_the_url_and_the_servers_words() -> None:
    server = FakeServer()
    server.routes["/health"] = lambda b: httpx.Response(503, text="starting")
    with pytest.raises(SGLangServerError, match=r"sglang\.test:30000/health.*503: starting"):
        server.engine().load()
    server = FakeServer()
    server.routes["/model_info"] = lambda b: httpx.Response(
        200, json={"model_path": "/models/e5", "is_generation": False})
    with pytest.raises(SGLangServerError, match="not a generation model"):
        server.engine().load()


def test_generate_errors_carry_the_servers_message() -> None:
    server = FakeServer()
    server.routes["/generate"] = lambda b: httpx.Response(
        400, json={"error": {"message": "The input (5000 tokens) is longer than the model's "
                                        "context length (4096 tokens)."}})
    with pytest.raises(SGLangServerError, match=r"/generate answered HTTP 400: The input"):
        server.engine().generate([req("long")])


def test_token_ids_and_text_go_in_separate_calls() -> None:
    server = FakeServer()
    done = server.engine().generate([req("a"), req(input_ids=[1, 2, 3])])
    assert [c.text for c in done] == ["out:a", "out:3"]
    assert [list(b) for b in server.bodies("/generate")] == [
        ["text", "sampling_params", "rid", "priority"],
        ["input_ids", "sampling_params", "rid", "priority"]]
    assert server.bodies("/generate")[1]["input_ids"] == [[1, 2, 3]]


def test_chat_and_tokenize_use_the_servers_tokenizer(demo_model_dir: Path) -> None:
    server = FakeServer(tokenizer_path=str(demo_model_dir))
    engine = server.engine()
    messages = [ChatMessage(role="user", content="hi")]
    engine.generate([req(messages=messages)])
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    expected = tokenizer.apply_chat_template([m.model_dump() for m in messages],
                                             add_generation_prompt=True)["input_ids"]
    assert server.bodies("/generate")[0]["input_ids"] == [expected]
    assert engine.tokenize("the model") == tokenizer("the model")["input_ids"]


def test_a_request_needs_exactly_one_input() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        FakeServer().engine().generate([req("a", input_ids=[1])])


def test_flush_health_and_update_weights() -> None:
    server = FakeServer()
    engine = server.engine()
    server.routes["/flush_cache"] = lambda b: httpx.Response(200, text="Cache flushed.\n")
    engine.flush_cache()
    server.routes["/flush_cache"] = lambda b: httpx.Response(400, text="Flush cache failed.\n")
    with pytest.raises(SGLangServerError, match="Flush cache failed"):
        engine.flush_cache()
    assert engine.health()
    server.routes["/health"] = lambda b: httpx.Response(503)
    assert not engine.health()
    server.routes["/update_weights_from_disk"] = lambda b: httpx.Response(200, json={
        "success": True, "message": "Succeeded to update model weights.",
        "num_paused_requests": 0})
    engine.update_weights("/models/m2")
    assert server.bodies("/update_weights_from_disk") == [{"model_path": "/models/m2"}]
    assert engine.model_info["model_path"] == "/models/m2"
    server.routes["/update_weights_from_disk"] = lambda b: httpx.Response(400, json={
        "success": False, "message": "Failed to get weights iterator: no such dir",
        "num_paused_requests": 0})
    with pytest.raises(SGLangServerError, match="/models/bad: Failed to get weights"):
        engine.update_weights("/models/bad")


def test_health_is_false_when_the_server_is_gone() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    engine = SGLangServerEngine("m", URL, client=httpx.Client(
        transport=httpx.MockTransport(refuse)))
    assert not engine.health()
    with pytest.raises(SGLangServerError, match="unreachable"):
        engine.load()


def test_a_stop_aborts_that_rid_and_the_rest_of_the_batch_is_resent() -> None:
    server = FakeServer()
    started, aborted = threading.Event(), threading.Event()

    def generate(body: dict[str, Any]) -> httpx.Response:
        if not started.is_set():
            started.set()
            assert aborted.wait(5)
            # Newer SGLang fails the whole non-streaming batch when one request aborts.
            return httpx.Response(400, json={"error": {"message": "Abort in waiting queue"}})
        return FakeServer.generate(server, body)

    def abort(body: dict[str, Any]) -> httpx.Response:
        aborted.set()
        return httpx.Response(200)

    server.routes.update({"/generate": generate, "/abort_request": abort})
    done = server.engine().generate([req("stop me", should_stop=started.is_set),
                                     req("keep")])
    assert [c.finish_reason for c in done] == ["abort", "length"]
    assert done[1].text == "out:keep"
    first, second = server.bodies("/generate")
    aborted_rids = {b["rid"] for b in server.bodies("/abort_request")}
    assert first["rid"][0] in aborted_rids and second["text"] == ["keep"]
    assert second["rid"][0] not in first["rid"]


def test_a_request_stopped_before_it_starts_is_never_sent() -> None:
    server = FakeServer()
    done = server.engine().generate([req("a", should_stop=lambda: True), req("b")])
    assert done[0].finish_reason == "abort" and done[1].text == "out:b"
    assert [b["text"] for b in server.bodies("/generate")] == [["b"]]


# -- the in-process adapter, with sglang.Engine replaced by its call shapes --------

class StandInEngine:
    """Engine's methods as in sglang/srt/entrypoints/engine.py."""

    made: ClassVar[list[StandInEngine]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.shut = kwargs, False
        self.calls: list[dict[str, Any]] = []
        self.flush_ok, self.update = True, (True, "Succeeded to update model weights.", 0)
        self.tokenizer_manager = types.SimpleNamespace(
            tokenizer=AutoTokenizer.from_pretrained(kwargs["model_path"]))
        StandInEngine.made.append(self)

    def generate(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(kwargs)
        inputs = kwargs.get("prompt") or kwargs["input_ids"]
        return [output(f"#{i}", EOS, 5, 1, cached=2) for i, _ in enumerate(inputs)]

    def flush_cache(self) -> types.SimpleNamespace:  # FlushCacheReqOutput
        return types.SimpleNamespace(success=self.flush_ok, message="")

    def update_weights_from_disk(self, model_path: str,
                                 load_format: str | None = None) -> tuple[bool, str, int]:
        return self.update

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StandInEngine]]:
    StandInEngine.made = []
    monkeypatch.setitem(sys.modules, "sglang", types.SimpleNamespace(Engine=StandInEngine))
    yield StandInEngine


def test_sglang_is_imported_only_by_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sglang", None)
    engine = SGLangEngine("m", "/models/m")
    assert not engine.loaded
    with pytest.raises(ImportError):
        engine.load()


def test_in_process_engine_calls(stand_in: type[StandInEngine], demo_model_dir: Path) -> None:
    engine = SGLangEngine("m", str(demo_model_dir), gpu=3, mem_fraction_static=0.5,
                          enable_priority=True)
    messages = [ChatMessage(role="user", content="hi")]
    done = engine.generate([req("a", priority=1), req(messages=messages, priority=1),
                            req("b", priority=8)])
    [made] = stand_in.made
    assert made.kwargs == {"model_path": str(demo_model_dir), "base_gpu_id": 3,
                           "mem_fraction_static": 0.5, "enable_priority_scheduling": True}
    texts, chat, low = made.calls
    assert texts["prompt"] == ["a"] and texts["priority"] == 8
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    expected = tokenizer.apply_chat_template([m.model_dump() for m in messages],
                                             add_generation_prompt=True)["input_ids"]
    assert chat["input_ids"] == [expected] and chat["priority"] == 8
    assert low["prompt"] == ["b"] and low["priority"] == 1
    assert texts["sampling_params"] == [{"max_new_tokens": 4, "temperature": 0.0}]
    assert [c.finish_reason for c in done] == ["stop"] * 3
    assert engine.stats().cached_tokens == 6
    assert engine.tokenize("the model") == tokenizer.encode("the model")


def test_in_process_priority_off_and_engine_operations(stand_in: type[StandInEngine],
                                                       demo_model_dir: Path) -> None:
    engine = SGLangEngine("m", str(demo_model_dir))
    engine.generate([req("a", priority=0), req("b", priority=9)])
    [made] = stand_in.made
    [call] = made.calls
    assert call["prompt"] == ["a", "b"] and "priority" not in call
    assert made.kwargs["enable_priority_scheduling"] is False
    made.flush_ok = False
    with pytest.raises(RuntimeError, match="refused to flush"):
        engine.flush_cache()
    made.update = (False, "Failed to get weights iterator", 0)
    with pytest.raises(RuntimeError, match="/new: Failed to get weights iterator"):
        engine.update_weights("/new")
    engine.unload()
    assert made.shut and not engine.loaded


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
    engine = SGLangEngine("gpu", path, mem_fraction_static=0.5, enable_priority=True)
    try:
        prompt = "The capital of France is"
        first, second = engine.generate([req(prompt, max_tokens=8, priority=0),
                                         req(prompt, max_tokens=8, priority=9)])
        assert first.text == second.text and first.text
        assert first.prompt_tokens == len(engine.tokenize(prompt))
        assert 1 <= first.completion_tokens <= 8
        [again] = engine.generate([req(prompt, max_tokens=8)])
        assert again.text == first.text and again.cached_tokens > 0
        engine.flush_cache()
        [cold] = engine.generate([req(prompt, max_tokens=8)])
        assert cold.cached_tokens == 0
        [chat] = engine.generate([req(messages=[ChatMessage(role="user", content="hi")])])
        assert chat.prompt_tokens > 1 and chat.finish_reason in ("stop", "length")
    finally:
        engine.unload()
