"""SGLang adapters: request building and response parsing against the shapes in
sgl-project/sglang (io_struct.py, tokenizer_manager.py, schedule_batch.py,
http_server.py; see tests/sglang_shapes.py for the commit), and the HTTP adapter
against a transport that answers like an SGLang server (httpx.MockTransport). The
in-process adapter is tested in tests/test_sglang_engine.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from schemas.common import ChatMessage
from tests.support.sglang_shapes import (
    ABORTED,
    EOS,
    LENGTH,
    RadixCache,
    check_generate_fields,
    check_sampling_params,
    output,
    req,
)
from workers.engines.base import Completion, EngineSampling
from workers.engines.sglang_http import SGLangServerEngine, SGLangServerError, shown_url
from workers.engines.sglang_io import (
    EngineUnloaded,
    NamespaceLeak,
    build_sampling_params,
    parse_output,
    to_sglang_priority,
    update_weights_outcome,
)

URL = "http://sglang.test:30000"


# -- pure request building and response parsing -----------------------------------

def test_sampling_params_use_sglang_names() -> None:
    greedy = build_sampling_params(EngineSampling(max_tokens=7))
    assert greedy == {"max_new_tokens": 7, "temperature": 0.0}
    sampled = build_sampling_params(EngineSampling(max_tokens=3, temperature=0.7,
                                                   stop=("\n", "END")))
    assert sampled == {"max_new_tokens": 3, "temperature": 0.7, "stop": ["\n", "END"]}
    with pytest.raises(ValueError, match="max_tokens"):
        build_sampling_params(EngineSampling(max_tokens=-1))


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
    """Answers SGLang's routes; records (method, path, json body, headers) of every call.
    /generate checks field names against GenerateReqInput, reports cached_tokens from a
    radix cache keyed by cache_salt (or not, with ``salted=False``), and records how many
    calls overlapped."""

    def __init__(self, *, priority: bool = True, low_first: bool = False,
                 tokenizer_path: str = "/models/m", salted: bool = True,
                 incremental: bool = False) -> None:
        self.incremental = incremental
        self.calls: list[tuple[str, str, Any, httpx.Headers]] = []
        self.cache = RadixCache(salted=salted)
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.routes: dict[str, Callable[[Any], httpx.Response]] = {
            "/health": lambda b: httpx.Response(200),
            "/health_generate": lambda b: httpx.Response(200),
            "/model_info": lambda b: httpx.Response(200, json={
                "model_path": "/models/m", "tokenizer_path": tokenizer_path,
                "is_generation": True, "preferred_sampling_params": None,
                "weight_version": "default"}),
            "/server_info": lambda b: httpx.Response(200, json={
                "model_path": "/models/m", "enable_priority_scheduling": priority,
                "schedule_low_priority_values_first": low_first,
                "max_total_num_tokens": 20480, "internal_states": [{}], "version": "0.5",
                "incremental_streaming_output": incremental}),
            "/generate": self.generate,
            "/abort_request": lambda b: httpx.Response(200),
        }

    def generate(self, body: dict[str, Any]) -> httpx.Response:
        check_generate_fields(body)
        check_sampling_params(body["sampling_params"])
        inputs = body.get("text") or body["input_ids"]
        salts = body.get("cache_salt") or [None] * len(inputs)
        answers = []
        for x, salt in zip(inputs, salts, strict=True):
            tokens = tuple(x.split()) if isinstance(x, str) else tuple(x)
            cached = self.cache.lookup_and_insert(tokens, salt)
            answers.append(output(f"out:{x if isinstance(x, str) else len(x)}", LENGTH,
                                  3 if isinstance(x, str) else len(x), 4, cached))
        if body.get("stream"):
            [answer] = answers  # llmos streams one request per call
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=self.streamed(answer))
        return httpx.Response(200, json=answers)

    def streamed(self, final: dict[str, Any]) -> bytes:
        """http_server.py's stream: ``data: {output}`` per step, whose text is the whole
        text so far (or the new part alone, with incremental_streaming_output), and
        the last one finished, then ``data: [DONE]``."""
        text, lines, sent = final["text"], [], 0
        for end in [*range(2, len(text), 2), len(text)]:
            done = end == len(text)
            meta = {**final["meta_info"], "finish_reason": final["meta_info"]["finish_reason"]
                    if done else None}
            piece = text[sent:end] if self.incremental else text[:end]
            lines.append(json.dumps({**final, "text": piece, "meta_info": meta}))
            sent = end
        return "".join(f"data: {line}\n\n" for line in [*lines, "[DONE]"]).encode()

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        with self.lock:
            self.calls.append((request.method, request.url.path, body, request.headers))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            route = self.routes.get(request.url.path)
            return route(body) if route else httpx.Response(404, json={"detail": "Not Found"})
        finally:
            with self.lock:
                self.in_flight -= 1

    def bodies(self, path: str, *, probes: bool = False) -> list[Any]:
        """Bodies sent to ``path``; without the namespace probes of load()."""
        return [b for _, p, b, _ in self.calls if p == path and (probes or not is_probe(b))]

    def engine(self, base_url: str = URL + "/", **kwargs: Any) -> SGLangServerEngine:
        client = httpx.Client(transport=httpx.MockTransport(self.handle))
        return SGLangServerEngine("m", base_url, client=client, **kwargs)


def is_probe(body: Any) -> bool:
    salts = body.get("cache_salt") if isinstance(body, dict) else None
    return isinstance(salts, list) and all(str(s).startswith("llmos-probe-") for s in salts)


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
    assert [p for _, p, *_ in server.calls[:3]] == ["/health", "/model_info", "/server_info"]
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
    engine = server.engine()
    engine.load()
    server.routes["/generate"] = lambda b: httpx.Response(
        400, json={"error": {"message": "The input (5000 tokens) is longer than the model's "
                                        "context length (4096 tokens)."}})
    with pytest.raises(SGLangServerError, match=r"/generate answered HTTP 400: The input"):
        engine.generate([req("long")])


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
    server.routes["/health_generate"] = lambda b: httpx.Response(503)
    assert not engine.health()
    del server.routes["/health_generate"]  # an older server: /health alone
    assert engine.health()
    assert [p for _, p, *_ in server.calls[-2:]] == ["/health_generate", "/health"]
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
    engine = server.engine()
    engine.load()
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
    done = engine.generate([req("stop me", should_stop=started.is_set), req("keep")])
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




def test_a_deadline_aborts_the_rid_on_the_server() -> None:
    server = FakeServer()
    engine = server.engine()
    engine.load()
    aborted = threading.Event()

    def generate(body: dict[str, Any]) -> httpx.Response:
        assert aborted.wait(5)  # runs until aborted, then answers like SGLang does
        return httpx.Response(200, json=[output("", ABORTED, 3, 0)])

    def abort(body: dict[str, Any]) -> httpx.Response:
        aborted.set()
        return httpx.Response(200)

    server.routes.update({"/generate": generate, "/abort_request": abort})
    started = time.monotonic()
    [done] = engine.generate([req("slow", deadline=time.monotonic() + 0.2)])
    assert done.finish_reason == "abort" and time.monotonic() - started < 3
    [body] = server.bodies("/generate")
    assert server.bodies("/abort_request") == [{"rid": body["rid"][0]}]


def test_a_request_past_its_deadline_is_never_sent() -> None:
    server = FakeServer()
    [done] = server.engine().generate([req("late", deadline=time.monotonic() - 1)])
    assert done.finish_reason == "abort" and server.bodies("/generate") == []


def test_concurrent_jobs_are_in_flight_on_the_server_at_once() -> None:
    server = FakeServer()
    engine = server.engine()
    engine.load()
    barrier = threading.Barrier(8, timeout=5)

    def generate(body: dict[str, Any]) -> httpx.Response:
        barrier.wait()  # only returns once all eight calls are open at the same time
        return FakeServer.generate(server, body)

    server.routes["/generate"] = generate
    results: list[Completion] = []
    threads = [threading.Thread(target=lambda i=i: results.extend(
        engine.generate([req(f"job{i}")]))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and server.max_in_flight == 8


def test_each_tenant_is_its_own_cache_namespace() -> None:
    server = FakeServer()
    engine = server.engine()
    ids = list(range(10, 60))
    first = engine.generate([req(input_ids=ids, cache_namespace="tenant-a"),
                             req(input_ids=[*ids, 1], cache_namespace="tenant-b")])
    [again] = engine.generate([req(input_ids=[*ids, 2], cache_namespace="tenant-a")])
    [shared] = engine.generate([req(input_ids=[*ids, 3])])
    assert [c.cached_tokens for c in first] == [0, 0]
    assert again.cached_tokens == 50 and shared.cached_tokens == 0
    batch, alone_a, alone_shared = server.bodies("/generate")
    assert batch["cache_salt"] == batch["extra_key"] == ["tenant-a", "tenant-b"]
    assert alone_a["cache_salt"] == ["tenant-a"]
    assert "cache_salt" not in alone_shared and "extra_key" not in alone_shared


def test_load_checks_that_namespaces_do_not_share_the_cache() -> None:
    server = FakeServer()
    server.engine().load()
    first, second = server.bodies("/generate", probes=True)
    assert first["input_ids"] == second["input_ids"]
    assert first["cache_salt"] != second["cache_salt"]
    assert first["extra_key"] == first["cache_salt"]
    leaky = FakeServer(salted=False)  # a server that ignores cache_salt and extra_key
    engine = leaky.engine()
    with pytest.raises(NamespaceLeak, match="ignores cache_salt/extra_key"):
        engine.load()
    assert not engine.loaded


def test_the_api_key_goes_as_a_bearer_token_and_the_admin_key_to_admin_routes() -> None:
    server = FakeServer()
    server.routes["/flush_cache"] = lambda b: httpx.Response(200, text="Cache flushed.\n")
    engine = server.engine(api_key="k-user", admin_api_key="k-admin")
    engine.generate([req("a")])
    engine.flush_cache()
    seen = {p: h.get("authorization") for _, p, _, h in server.calls}
    assert seen["/generate"] == seen["/model_info"] == "Bearer k-user"
    assert seen["/flush_cache"] == "Bearer k-admin"
    server = FakeServer()
    server.engine(api_key="k-user").generate([req("a")])
    assert {h.get("authorization") for *_, h in server.calls} == {"Bearer k-user"}
    server = FakeServer()
    server.engine().generate([req("a")])
    assert {h.get("authorization") for *_, h in server.calls} == {None}


def test_errors_never_show_credentials_of_the_url() -> None:
    secret_url = "http://llmos:s3cret@sglang.test:30000"
    assert shown_url(secret_url + "/?token=x") == "http://sglang.test:30000/"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {secret_url}/health", request=request)

    engine = SGLangServerEngine("m", secret_url, client=httpx.Client(
        transport=httpx.MockTransport(refuse)))
    with pytest.raises(SGLangServerError, match="unreachable") as refused:
        engine.load()
    assert "s3cret" not in str(refused.value) and "sglang.test:30000" in str(refused.value)
    server = FakeServer()
    server.routes["/health"] = lambda b: httpx.Response(401, json={"error": "Unauthorized"})
    with pytest.raises(SGLangServerError, match="401") as denied:
        server.engine(secret_url).load()
    assert "s3cret" not in str(denied.value)


def test_requests_after_unload_fail_at_once() -> None:
    server = FakeServer()
    engine = server.engine()
    engine.generate([req("a")])
    engine.unload()
    calls = len(server.calls)
    with pytest.raises(EngineUnloaded, match="'m' was unloaded"):
        engine.generate([req("b")])
    assert len(server.calls) == calls and not engine.loaded


@pytest.mark.parametrize("incremental", [False, True])
def test_a_streamed_request_goes_alone_with_stream_and_hands_on_its_text(
        incremental: bool) -> None:
    server = FakeServer(incremental=incremental)
    pieces: list[str] = []
    done = server.engine().generate([req("a b", on_text=pieces.append), req("c"), req("d")])
    assert [c.text for c in done] == ["out:a b", "out:c", "out:d"]
    assert [c.finish_reason for c in done] == ["length"] * 3
    streamed, batched = server.bodies("/generate")
    assert streamed["stream"] is True and streamed["text"] == ["a b"]
    assert "stream" not in batched and batched["text"] == ["c", "d"]
    assert "".join(pieces) == "out:a b" and len(pieces) > 1
