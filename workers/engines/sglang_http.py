"""An SGLang server that an operator runs, driven over its native HTTP API.

Routes and bodies follow python/sglang/srt/entrypoints/http_server.py in
sgl-project/sglang (001067fffe33427bee0ed2f007fb7551a1d76b44): ``POST /generate`` (a
``GenerateReqInput``; a list of texts or of input_ids answers a list, with one
``extra_key``/``cache_salt`` per item), ``POST /abort_request`` (``{"rid"}``),
``POST /flush_cache`` (plain text, 400 when refused), ``POST /update_weights_from_disk``
(``{"success", "message", "num_paused_requests"}``, 400 on failure),
``GET /health_generate`` (one token generated, 503 if not) and ``GET /health``, and
``GET /model_info`` / ``GET /server_info``, which older servers only know as
``/get_model_info`` / ``/get_server_info``. A server started with ``--api-key`` wants
``Authorization: Bearer <key>`` on every route but /health*; one that also has an
``--admin-api-key`` wants that key on its admin routes (abort, flush, weights)."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from schemas.common import ChatMessage
from workers.engines.base import Completion, EngineRequest, EngineSampling, EngineStats
from workers.engines.sglang_io import (
    EngineUnloaded,
    InputKind,
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
ADMIN_ROUTES = frozenset({"/abort_request", "/flush_cache", "/update_weights_from_disk"})


class SGLangServerError(RuntimeError):
    """The server could not be reached or refused a call; names the URL (without
    credentials) and the server's words."""


def server_message(response: httpx.Response) -> str:
    """What the server said: ``{"error": {"message"}}`` from ``_create_error_response``,
    ``{"message"}`` from its ErrorResponse handlers, else the body text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and "message" in error:
            return str(error["message"])
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])
    return response.text.strip()


def shown_url(url: str) -> str:
    """``url`` without user:password@ and query, for messages that reach job rows and
    logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@dataclass(frozen=True)
class GenerateCall:
    """One /generate call: a batch that shares an input kind and a priority (SGLang
    takes one priority per call)."""

    kind: InputKind
    inputs: list[str | list[int]]  # all of ``kind``
    sampling_params: list[dict[str, object]]
    rids: list[str]
    namespaces: list[str]  # the cache salt of each; "" is the shared namespace
    priority: int | None
    # A request that wants its text as it is decoded: alone in its call, sent with
    # "stream": true, its text handed on as it grows.
    streamed: StreamedText | None = None


def _try_abort(abort: Callable[[str], None], rid: str) -> None:
    try:
        abort(rid)
    except Exception:  # the request then runs to its end; nothing else is lost
        log.exception("could not abort SGLang request %s", rid)


class _StopWatcher:
    """While a call runs, aborts the rids whose job was cancelled or whose deadline
    passed. ``should_stop`` may read the database (throttled), so it is polled here,
    never on a path that holds the server's answer."""

    def __init__(self, watched: list[tuple[str, EngineRequest]],
                 abort: Callable[[str], None], poll_s: float) -> None:
        self.stopped: set[str] = set()
        self._watched, self._abort, self._poll_s = watched, abort, poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sglang-stop")

    def _run(self) -> None:
        while not self._done.wait(self._poll_s):
            now = time.monotonic()
            for rid, request in self._watched:
                if rid not in self.stopped and should_end(request, now):
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


def _group_of(requests: Sequence[EngineRequest], inputs: Sequence[tuple[InputKind, object]],
              i: int, priority_of: Callable[[int], int | None]
              ) -> tuple[InputKind, int | None, int | None]:
    """The call request ``i`` joins: (input kind, priority, and its own index when it
    streams: a streamed request is alone in its call)."""
    return (inputs[i][0], priority_of(requests[i].priority),
            i if requests[i].on_text is not None else None)


def _streamed(request: EngineRequest) -> StreamedText:
    assert request.on_text is not None
    return StreamedText(request.on_text, request.sampling.stop)


def generate_in_batches(
    requests: Sequence[EngineRequest], *,
    submit: Callable[[GenerateCall], Sequence[Mapping[str, object]]],
    abort: Callable[[str], None],
    render_chat: Callable[[Sequence[ChatMessage], bool], list[int]],
    priority_of: Callable[[int], int | None],
    on_batch: Callable[[list[Completion], float], None] = lambda done, busy_s: None,
    poll_s: float = 0.05,
) -> list[Completion]:
    """Results in request order, with one ``submit`` per (input kind, priority) group,
    most urgent group first. A stopped request ends as "abort"; when an abort fails the
    whole call (newer SGLang raises instead of returning it), the requests that did not
    ask to stop are sent again."""
    inputs = [input_of(r, render_chat) for r in requests]
    results: list[Completion | None] = [None] * len(requests)
    groups: dict[tuple[InputKind, int | None, int | None], list[int]] = {}
    now = time.monotonic()
    for i in sorted(range(len(requests)), key=lambda i: requests[i].priority):
        if should_end(requests[i], now):
            results[i] = aborted()
        else:
            groups.setdefault(_group_of(requests, inputs, i, priority_of), []).append(i)
    for (kind, priority, alone), pending in groups.items():
        while pending:
            rids = {i: uuid.uuid4().hex for i in pending}
            call = GenerateCall(
                kind=kind, inputs=[inputs[i][1] for i in pending],
                sampling_params=[build_sampling_params(requests[i].sampling) for i in pending],
                rids=[rids[i] for i in pending],
                namespaces=[requests[i].cache_namespace for i in pending], priority=priority,
                streamed=_streamed(requests[alone]) if alone is not None else None)
            watched = [(rids[i], requests[i]) for i in pending
                       if requests[i].should_stop is not None or requests[i].deadline is not None]
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
                            results[i] = aborted()
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
    return [r if r is not None else aborted() for r in results]


class SGLangServerEngine:
    """The server is the operator's: ``load`` checks it (health, a generation model,
    whether it schedules by priority, that cache namespaces are isolated) and ``unload``
    only forgets it. No lock is held across a call: the server batches concurrent jobs
    itself (continuous batching)."""

    def __init__(self, name: str, base_url: str, *, timeout_s: float = 600,
                 client: httpx.Client | None = None, api_key: str | None = None,
                 admin_api_key: str | None = None, health_timeout_s: float = 20.0) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.shown_url = shown_url(self.base_url)
        self.device = "remote"
        self.health_timeout_s = health_timeout_s
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._admin_headers = (
            {"Authorization": f"Bearer {admin_api_key}"} if admin_api_key else self._headers)
        self._loaded = self._unloaded = False
        self.model_info: dict[str, object] = {}
        self._priority_enabled = False
        self._low_values_first = False
        self._incremental = False
        self._tokenizer: Any = None  # transformers tokenizers are untyped
        self._stats = EngineStats(model=self.name)
        self._lock = threading.Lock()  # stats only
        self._load_lock = threading.Lock()  # many job threads may find it unloaded at once

    def _request(self, method: str, path: str, body: object = None,
                 timeout_s: float | None = None) -> httpx.Response:
        headers = self._admin_headers if path in ADMIN_ROUTES else self._headers
        kwargs: dict[str, Any] = {"json": body, "headers": headers}
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        try:
            return self._client.request(method, f"{self.base_url}{path}", **kwargs)
        except httpx.HTTPError as e:
            raise self._unreachable(path, e) from None

    def _unreachable(self, path: str, e: httpx.HTTPError) -> SGLangServerError:
        # httpx's words can carry the URL it was given, credentials included.
        words = str(e).replace(self.base_url, self.shown_url)
        userinfo = urlsplit(self.base_url).netloc.rpartition("@")[0]
        if userinfo:
            words = words.replace(userinfo, "***")
        return SGLangServerError(f"SGLang server {self.shown_url}{path} unreachable: {words}")

    def _call(self, method: str, path: str, body: object = None,
              ok: tuple[int, ...] = (200,)) -> httpx.Response:
        response = self._request(method, path, body)
        if response.status_code not in ok:
            raise SGLangServerError(
                f"SGLang server {method} {self.shown_url}{path} answered HTTP "
                f"{response.status_code}: {server_message(response)}")
        return response

    def _get_info(self, path: str) -> dict[str, object]:
        response = self._call("GET", path, ok=(200, 404))
        if response.status_code == 404:
            response = self._call("GET", path.replace("/", "/get_", 1))
        info = response.json()
        if not isinstance(info, dict):
            raise SGLangServerError(f"SGLang server {self.shown_url}{path} answered {info!r}")
        return info

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        with self._load_lock:
            if not self._loaded:
                self._connect()

    def _connect(self) -> None:
        self._call("GET", "/health")
        info = self._get_info("/model_info")
        if info.get("is_generation") is not True:
            raise SGLangServerError(
                f"SGLang server {self.shown_url} serves {info.get('model_path')!r}, "
                "which is not a generation model")
        try:
            server = self._get_info("/server_info")
        except SGLangServerError:
            server = {}  # without the server's args, sending a priority could abort jobs
        self._priority_enabled = server.get("enable_priority_scheduling") is True
        self._low_values_first = server.get("schedule_low_priority_values_first") is True
        # Streamed outputs carry the whole text so far, or only what is new with this.
        self._incremental = server.get("incremental_streaming_output") is True
        self.model_info, self._unloaded = info, False
        check_namespaces_isolated(self._probe_cached, f"SGLang server {self.shown_url}")
        self._loaded = True

    def _probe_cached(self, ids: list[int], namespace: str) -> int:
        [out] = self._submit(GenerateCall(
            kind="input_ids", inputs=[ids], sampling_params=[{"max_new_tokens": 1}],
            rids=[uuid.uuid4().hex], namespaces=[namespace], priority=None))
        return parse_output(out).cached_tokens

    def unload(self) -> None:
        """Forget the server; requests that still hold this engine fail at once."""
        self._loaded, self._unloaded = False, True

    def warmup(self) -> None:
        self.generate([EngineRequest(sampling=EngineSampling(max_tokens=2), prompt="warm up")])

    def _tokenizer_of_server(self) -> Any:
        if self._tokenizer is None:
            self._ready()
            path = self.model_info.get("tokenizer_path") or self.model_info.get("model_path")
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(str(path))
            except Exception as e:
                raise SGLangServerError(
                    f"chat templates and tokenize() need the tokenizer of {self.shown_url} "
                    f"({path!r}) on this host: {e}") from e
        return self._tokenizer

    def _render_chat(self, messages: Sequence[ChatMessage], generation_prompt: bool
                     ) -> list[int]:
        return token_ids_of(self._tokenizer_of_server().apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=generation_prompt,
            tokenize=True))

    def _priority(self, priority: int) -> int | None:
        if not self._priority_enabled:
            return None
        return to_sglang_priority(priority, low_values_first=self._low_values_first)

    def _submit(self, call: GenerateCall) -> Sequence[Mapping[str, object]]:
        body: dict[str, object] = {
            call.kind: call.inputs, "sampling_params": call.sampling_params, "rid": call.rids}
        if any(call.namespaces):
            # cache_salt is the namespace on servers that have it (sgl-project/sglang
            # #30827); extra_key keyed the radix cache before that (#10317, reaching the
            # scheduler from #23300). Both carry the tenant; load() checks that one works.
            body["cache_salt"] = body["extra_key"] = call.namespaces
        if call.priority is not None:
            body["priority"] = call.priority
        if call.streamed is not None:
            return [self._stream(body, call.streamed)]
        outputs = self._call("POST", "/generate", body).json()
        if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
            raise SGLangServerError(f"SGLang server {self.shown_url}/generate answered "
                                    f"{outputs!r}, not a list of outputs")
        return outputs

    def _stream(self, body: dict[str, object], streamed: StreamedText) -> Mapping[str, object]:
        """One request's /generate with "stream": true: server-sent ``data: {output}``
        lines until ``data: [DONE]``; the last output is the answer."""
        last: Mapping[str, object] | None = None
        so_far = ""
        try:
            with self._client.stream("POST", f"{self.base_url}/generate",
                                     json={**body, "stream": True},
                                     headers=self._headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise SGLangServerError(
                        f"SGLang server POST {self.shown_url}/generate answered HTTP "
                        f"{response.status_code}: {server_message(response)}")
                for line in response.iter_lines():
                    data = line.removeprefix("data:").strip()
                    if not line.startswith("data:") or data == "[DONE]":
                        continue
                    last = out = json.loads(data)
                    text = out.get("text")
                    if isinstance(text, str):
                        so_far = so_far + text if self._incremental else text
                        last = {**out, "text": so_far}
                    if (out.get("meta_info") or {}).get("finish_reason") is None:
                        streamed.update(so_far)
        except httpx.HTTPError as e:
            raise self._unreachable("/generate", e) from None
        if last is None:
            raise SGLangServerError(f"SGLang server {self.shown_url}/generate streamed no "
                                    "output")
        streamed.finish(parse_output(last, streamed.stop).text)
        return last

    def _abort(self, rid: str) -> None:
        self._call("POST", "/abort_request", {"rid": rid})

    def _record(self, done: list[Completion], busy_s: float) -> None:
        with self._lock:
            record_completions(self._stats, done, batch=len(done), busy_s=busy_s)

    def _ready(self) -> None:
        if self._unloaded:
            raise EngineUnloaded(f"model {self.name!r} was unloaded from this worker")
        self.load()

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self._ready()
        return generate_in_batches(
            requests, submit=self._submit, abort=self._abort,
            render_chat=self._render_chat, priority_of=self._priority, on_batch=self._record)

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer_of_server().encode(text))

    def flush_cache(self) -> None:
        self._ready()
        self._call("POST", "/flush_cache")

    def health(self) -> bool:
        """The server generates a token within health_timeout_s (/health_generate);
        servers without that route answer /health."""
        for path in ("/health_generate", "/health"):
            try:
                response = self._request("GET", path, timeout_s=self.health_timeout_s)
            except SGLangServerError:
                return False
            if response.status_code != 404:
                return response.status_code == 200
        return False

    def stats(self) -> EngineStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def update_weights(self, path: str) -> None:
        self._ready()
        response = self._call("POST", "/update_weights_from_disk", {"model_path": path},
                              ok=(200, 400))
        try:
            ok, message = update_weights_outcome(response.json())
        except ValueError:
            ok, message = False, server_message(response)
        if not ok or response.status_code != 200:
            raise SGLangServerError(f"SGLang server {self.shown_url} could not load weights "
                                    f"from {path}: {message}")
        self.model_info = {**self.model_info, "model_path": path}
