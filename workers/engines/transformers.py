"""The embedded default engine: a Hugging Face causal LM through transformers, on CPU
(or the one CUDA device this process was pinned to), with a prefix KV cache and
batching of concurrent requests.

Worker threads call ``generate``; a scheduler thread owns the model and runs what has
arrived as one batch (see ``workers.engines.batching``), so throughput rises with load.
Weight updates and unloading are orders to that thread: it stops admitting new
requests, lets the running batch finish, then acts, so no request ever mixes weights
and no keys or values of old weights reach the cache of new ones."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from workers.engines.base import Completion, EngineRequest, EngineSampling, EngineStats
from workers.engines.batching import Model, completion, serve
from workers.engines.batching import Sequence as Running
from workers.engines.prefix_cache import PrefixCache


class EngineUnloaded(RuntimeError):
    """The engine was unloaded; its requests fail at once instead of waiting."""


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


@dataclass
class _Order:
    """Something the scheduler does between batches: swap weights, or stop."""

    model: Model | None  # the new weights; None: unload
    done: Future[None] = field(default_factory=Future)


_WAKE = object()  # put on the queue so the scheduler looks at its orders


def read_model(path: str) -> Model:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    module = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    return Model(module=module, tokenizer=tokenizer, device=device, eos=eos_ids(module, tokenizer))


def eos_ids(module: Any, tokenizer: Any) -> frozenset[int]:
    """Every end-of-sequence id: the generation config may name several (chat models
    end a turn with a token other than the tokenizer's eos)."""
    ids: set[int] = set()
    for source in (getattr(module, "generation_config", None), module.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class TransformersEngine:
    """Loads lazily on first use, in the process that runs the jobs."""

    def __init__(self, name: str, path: str, options: BatchingOptions | None = None) -> None:
        self.name = name
        self.path = path
        self.options = options or BatchingOptions()
        self.device = "cpu"
        self.cache = PrefixCache(self.options.cache_budget_bytes)
        self._stats = EngineStats(model=self.name)
        self._model: Model | None = None
        self._queue: queue.Queue[_Pending | object] = queue.Queue()
        self._orders: deque[_Order] = deque()
        self._inflight: dict[int, Future[Completion]] = {}
        self._scheduler: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None and not self._closed

    def load(self) -> None:
        with self._lock:
            if self._closed:
                raise EngineUnloaded(f"model {self.name!r} was unloaded from this worker")
            if self._model is not None:
                return
            self._model = read_model(self.path)
            self.device = self._model.device
            self._scheduler = threading.Thread(target=self._serve, name=f"engine-{self.name}",
                                               daemon=True)
            self._scheduler.start()

    def unload(self) -> None:
        """Finish the running batch, fail what waits, free the model. Final: requests
        after it fail at once with EngineUnloaded."""
        with self._lock:
            self._closed = True
            scheduler = self._scheduler
        if scheduler is not None:
            self._order(_Order(None)).result()
            scheduler.join()
        self._fail_waiting()
        self._model = None
        self.cache.clear()

    def warmup(self) -> None:
        self.generate([EngineRequest(sampling=EngineSampling(max_tokens=2), prompt="warm up")])

    def update_weights(self, path: str) -> None:
        """Read the new weights, let the running batch finish on the old ones, swap, and
        clear the cache (computed with the old ones); waiting requests then run on the
        new weights."""
        model = read_model(path)
        self.load()
        self._order(_Order(model)).result()
        self.path = path

    def flush_cache(self) -> None:
        self.cache.clear()

    def health(self) -> bool:
        return not self._closed and self._scheduler is not None and self._scheduler.is_alive()

    def stats(self) -> EngineStats:
        return replace(self._stats, batch_sizes=deque(self._stats.batch_sizes),
                       prefill_inputs=deque(self._stats.prefill_inputs),
                       cache_bytes=self.cache.nbytes, cache_entries=len(self.cache))

    def _order(self, order: _Order) -> Future[None]:
        self._orders.append(order)
        self._queue.put(_WAKE)
        return order.done

    # -- generation ---------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        self.load()
        assert self._model is not None
        return list(self._model.tokenizer(text)["input_ids"])

    def _input_ids(self, model: Model, request: EngineRequest) -> list[int]:
        tokenizer = model.tokenizer
        if request.input_ids is not None:
            return list(request.input_ids)
        if request.messages is not None:
            rendered = tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages],
                add_generation_prompt=request.generation_prompt, tokenize=True,
                return_dict=True)
            return list(rendered["input_ids"])
        return list(tokenizer(request.prompt)["input_ids"])

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self.load()
        pending = [_Pending(r, Future()) for r in requests]
        for p in pending:
            self._queue.put(p)
        if self._closed:  # unloaded meanwhile: nobody may be left to serve these
            self._fail_waiting()
        return [p.future.result() for p in pending]

    def _serve(self) -> None:
        while True:
            if self._orders and self._obey(self._orders.popleft()):
                return
            first = self._queue.get()
            if first is _WAKE:
                continue
            arrivals = [first, *self._gather()]
            seqs = self._admit([a for a in arrivals if isinstance(a, _Pending)])
            if not seqs:
                continue
            assert self._model is not None
            try:
                serve(self._model, seqs, self._take, self.cache, self._stats,
                      self.options.max_batch)
            except Exception as exc:  # the batch broke: every request in it fails
                for future in self._inflight.values():
                    future.set_exception(exc)
                self._inflight.clear()

    def _obey(self, order: _Order) -> bool:
        """Carry out an order between batches; True: the scheduler stops."""
        if order.model is None:
            order.done.set_result(None)
            return True
        self._model, self.device = order.model, order.model.device
        self.cache.clear()
        order.done.set_result(None)
        return False

    def _gather(self) -> list[object]:
        """What arrives within the batching window after the first request."""
        arrivals: list[object] = []
        deadline = time.monotonic() + self.options.window_s
        while len(arrivals) + 1 < self.options.max_batch and not self._orders:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            arrivals.append(item)
        return arrivals

    def _take(self, room: int) -> list[Running]:
        """Requests that arrived while a batch runs: they join it at the next step,
        unless an order waits, which lets the batch drain first."""
        arrivals: list[_Pending] = []
        while len(arrivals) < room and not self._orders:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                arrivals.append(item)
        return self._admit(arrivals)

    def _fail_waiting(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Pending) and not item.future.done():
                item.future.set_exception(
                    EngineUnloaded(f"model {self.name!r} was unloaded from this worker"))

    def _admit(self, arrivals: list[_Pending]) -> list[Running]:
        """Sequences for the requests that can run; the others fail alone."""
        model = self._model
        assert model is not None
        context = int(model.module.config.max_position_embeddings)
        seqs = []
        for p in arrivals:
            try:
                ids = self._input_ids(model, p.request)
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

            def done(seq: Running, future: Future[Completion] = p.future) -> None:
                self._inflight.pop(id(seq), None)
                future.set_result(completion(seq))

            seq = Running(prompt=ids, sampling=p.request.sampling,
                          should_stop=p.request.should_stop, on_done=done,
                          namespace=p.request.cache_namespace, deadline=p.request.deadline,
                          on_text=p.request.on_text)
            self._inflight[id(seq)] = p.future
            seqs.append(seq)
        return seqs

