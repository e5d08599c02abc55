"""The embedded default engine: a Hugging Face causal LM through transformers, on CPU
(or the one CUDA device this process was pinned to), with a prefix KV cache and
batching of concurrent requests.

Worker threads call ``generate``; a scheduler thread owns the model and runs what has
arrived as one batch (see ``workers.batching``), so throughput rises with load."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workers.engine import Completion, EngineRequest, EngineStats, SamplingParams


@dataclass(frozen=True)
class BatchingOptions:
    max_batch: int = 32
    # After the first request arrives, wait this long for others to share its batch.
    window_s: float = 0.005
    cache_budget_bytes: int = 1 << 30


@dataclass
class _Pending:
    request: EngineRequest
    future: Future[Completion]


class TransformersEngine:
    """Loads lazily on first use, in the process that runs the jobs."""

    def __init__(self, name: str, path: str, options: BatchingOptions | None = None) -> None:
        from workers.prefix_cache import PrefixCache

        self.name = name
        self.path = path
        self.options = options or BatchingOptions()
        self.device = "cpu"
        self.cache = PrefixCache(self.options.cache_budget_bytes)
        self._stats = EngineStats()
        self._model: Any = None
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._inflight: dict[int, Future[Completion]] = {}
        self._scheduler: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            self._model = self._read(self.path)
            self.device = self._model.device
            self._scheduler = threading.Thread(target=self._serve, name=f"engine-{self.name}",
                                               daemon=True)
            self._scheduler.start()

    def _read(self, path: str) -> Any:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from workers.batching import Model

        hf_logging.disable_progress_bar()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(path)
        module = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        return Model(module=module, tokenizer=tokenizer, device=device,
                     eos=tokenizer.eos_token_id)

    def unload(self) -> None:
        with self._lock:
            if self._scheduler is not None:
                self._queue.put(None)
                self._scheduler.join()
                self._scheduler = None
            self._model = None
            self.cache.clear()

    def warmup(self) -> None:
        self.generate([EngineRequest(sampling=SamplingParams(max_tokens=2), prompt="warm up")])

    def update_weights(self, path: str) -> None:
        """Replace the weights in place; the cache, computed with the old ones, goes."""
        model = self._read(path)
        with self._lock:
            self._model, self.path = model, path
            self.cache.clear()

    def flush_cache(self) -> None:
        self.cache.clear()

    def health(self) -> bool:
        return self._scheduler is not None and self._scheduler.is_alive()

    def stats(self) -> EngineStats:
        return replace(self._stats, batch_sizes=deque(self._stats.batch_sizes),
                       prefill_inputs=deque(self._stats.prefill_inputs),
                       cache_bytes=self.cache.nbytes, cache_entries=len(self.cache))

    # -- generation ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        self.load()
        return list(self._model.tokenizer(text)["input_ids"])

    def _input_ids(self, request: EngineRequest) -> list[int]:
        tokenizer = self._model.tokenizer
        if request.input_ids is not None:
            return list(request.input_ids)
        if request.messages is not None:
            rendered = tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages], add_generation_prompt=True,
                tokenize=True, return_dict=True)
            return list(rendered["input_ids"])
        return list(tokenizer(request.prompt)["input_ids"])

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self.load()
        pending = [_Pending(r, Future()) for r in requests]
        for p in pending:
            self._queue.put(p)
        return [p.future.result() for p in pending]

    def _serve(self) -> None:
        from workers.batching import serve

        while True:
            first = self._queue.get()
            if first is None:
                return
            arrivals = [first]
            deadline = time.monotonic() + self.options.window_s
            while len(arrivals) < self.options.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                arrivals.append(item)
            seqs = self._admit(arrivals)
            if not seqs:
                continue
            try:
                serve(self._model, seqs, self._take, self.cache, self._stats,
                      self.options.max_batch)
            except Exception as exc:  # the batch broke: every request in it fails
                for future in self._inflight.values():
                    future.set_exception(exc)
                self._inflight.clear()

    def _take(self, room: int) -> list[Any]:
        """Requests that arrived while a batch runs: they join it at the next step."""
        arrivals: list[_Pending] = []
        while len(arrivals) < room:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # shut down once the batch is done
                break
            arrivals.append(item)
        return self._admit(arrivals)

    def _admit(self, arrivals: list[_Pending]) -> list[Any]:
        """Sequences for the requests that can run; the others fail alone."""
        from workers.batching import Sequence as Seq
        from workers.batching import completion

        context = int(self._model.module.config.max_position_embeddings)
        seqs = []
        for p in arrivals:
            try:
                ids = self._input_ids(p.request)
                if not ids:
                    raise ValueError("the prompt encodes to no tokens")
                if len(ids) + p.request.sampling.max_tokens > context:
                    raise ValueError(
                        f"prompt of {len(ids)} tokens plus max_tokens "
                        f"{p.request.sampling.max_tokens} exceeds the model's context of "
                        f"{context} tokens")
            except Exception as exc:  # this request alone fails; the others run
                p.future.set_exception(exc)
                continue

            def done(seq: Seq, future: Future[Completion] = p.future) -> None:
                self._inflight.pop(id(seq), None)
                future.set_result(completion(seq))

            seq = Seq(prompt=ids, sampling=p.request.sampling,
                      should_stop=p.request.should_stop, on_done=done)
            self._inflight[id(seq)] = p.future
            seqs.append(seq)
        return seqs


def context_length_of(path: str) -> int:
    """The context window a model directory declares (its config.json)."""
    import json

    config = json.loads((Path(path) / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if key in config:
            return int(config[key])
    raise ValueError(f"{path}/config.json declares no context length")
