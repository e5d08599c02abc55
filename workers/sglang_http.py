"""An SGLang server that an operator runs, driven over its native HTTP API.

Routes and bodies follow python/sglang/srt/entrypoints/http_server.py in
sgl-project/sglang: ``POST /generate`` (a ``GenerateReqInput``; a list of texts or of
input_ids answers a list), ``POST /abort_request`` (``{"rid"}``), ``POST /flush_cache``
(plain text, 400 when refused), ``POST /update_weights_from_disk`` (``{"success",
"message", "num_paused_requests"}``, 400 on failure), ``GET /health``, and
``GET /model_info`` / ``GET /server_info``, which older servers only know as
``/get_model_info`` / ``/get_server_info``."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from schemas.common import ChatMessage
from workers.engine import Completion, EngineRequest, EngineStats, SamplingParams
from workers.sglang_engine import (
    GenerateCall,
    generate_in_batches,
    record_call,
    to_sglang_priority,
    token_ids_of,
    update_weights_outcome,
)


class SGLangServerError(RuntimeError):
    """The server could not be reached or refused a call; names the URL and its words."""


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


class SGLangServerEngine:
    """The server is the operator's: ``load`` only checks it and ``unload`` only forgets
    it. Priority is sent only when ``/server_info`` says the server schedules by it."""

    def __init__(self, name: str, base_url: str, *, timeout_s: float = 600,
                 client: httpx.Client | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.device = "remote"
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._loaded = False
        self.model_info: dict[str, object] = {}
        self._priority_enabled = False
        self._low_values_first = False
        self._tokenizer: Any = None  # transformers tokenizers are untyped
        self._stats = EngineStats()
        self._lock = threading.Lock()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _call(self, method: str, path: str, body: object = None,
              ok: tuple[int, ...] = (200,)) -> httpx.Response:
        try:
            response = self._client.request(method, self._url(path), json=body)
        except httpx.HTTPError as e:
            raise SGLangServerError(f"SGLang server {self._url(path)} unreachable: {e}") from e
        if response.status_code not in ok:
            raise SGLangServerError(f"SGLang server {method} {self._url(path)} answered HTTP "
                                    f"{response.status_code}: {server_message(response)}")
        return response

    def _get_info(self, path: str) -> dict[str, object]:
        response = self._call("GET", path, ok=(200, 404))
        if response.status_code == 404:
            response = self._call("GET", path.replace("/", "/get_", 1))
        info = response.json()
        if not isinstance(info, dict):
            raise SGLangServerError(f"SGLang server {self._url(path)} answered {info!r}")
        return info

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        if self._loaded:
            return
        self._call("GET", "/health")
        info = self._get_info("/model_info")
        if info.get("is_generation") is not True:
            raise SGLangServerError(
                f"SGLang server {self.base_url} serves {info.get('model_path')!r}, "
                "which is not a generation model")
        try:
            server = self._get_info("/server_info")
        except SGLangServerError:
            server = {}  # without the server's args, sending a priority could abort jobs
        self._priority_enabled = server.get("enable_priority_scheduling") is True
        self._low_values_first = server.get("schedule_low_priority_values_first") is True
        self.model_info, self._loaded = info, True

    def unload(self) -> None:
        self._loaded = False

    def warmup(self) -> None:
        self.generate([EngineRequest(sampling=SamplingParams(max_tokens=2), prompt="warm up")])

    def _tokenizer_of_server(self) -> Any:
        if self._tokenizer is None:
            self.load()
            path = self.model_info.get("tokenizer_path") or self.model_info.get("model_path")
            try:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(str(path))
            except Exception as e:
                raise SGLangServerError(
                    f"chat templates and tokenize() need the tokenizer of {self.base_url} "
                    f"({path!r}) on this host: {e}") from e
        return self._tokenizer

    def _render_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        return token_ids_of(self._tokenizer_of_server().apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=True))

    def _priority(self, priority: int) -> int | None:
        if not self._priority_enabled:
            return None
        return to_sglang_priority(priority, low_values_first=self._low_values_first)

    def _submit(self, call: GenerateCall) -> Sequence[Mapping[str, object]]:
        body: dict[str, object] = {
            call.kind: call.inputs, "sampling_params": call.sampling_params, "rid": call.rids}
        if call.priority is not None:
            body["priority"] = call.priority
        outputs = self._call("POST", "/generate", body).json()
        if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
            raise SGLangServerError(f"SGLang server {self._url('/generate')} answered "
                                    f"{outputs!r}, not a list of outputs")
        return outputs

    def _abort(self, rid: str) -> None:
        self._call("POST", "/abort_request", {"rid": rid})

    def _record(self, done: list[Completion], busy_s: float) -> None:
        with self._lock:
            record_call(self._stats, done, busy_s)

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self.load()
        # No lock: the server batches concurrent calls itself (continuous batching).
        return generate_in_batches(
            requests, submit=self._submit, abort=self._abort,
            render_chat=self._render_chat, priority_of=self._priority, on_batch=self._record)

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer_of_server().encode(text))

    def flush_cache(self) -> None:
        self._call("POST", "/flush_cache")

    def health(self) -> bool:
        try:
            return self._client.get(self._url("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> EngineStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    def update_weights(self, path: str) -> None:
        response = self._call("POST", "/update_weights_from_disk", {"model_path": path},
                              ok=(200, 400))
        try:
            ok, message = update_weights_outcome(response.json())
        except ValueError:
            ok, message = False, server_message(response)
        if not ok or response.status_code != 200:
            raise SGLangServerError(f"SGLang server {self.base_url} could not load weights "
                                    f"from {path}: {message}")
        self.model_info = {**self.model_info, "model_path": path}
