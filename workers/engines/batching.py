"""Continuous batching with a prefix cache: the transformers engine's core.

A running batch is one key/value cache of shape [requests, heads, width, dim] and a
2-D attention mask; a request's real positions need not be contiguous (padding can
sit between its cached prefix and its new tail), because every forward pass is given
explicit position ids and the mask.

  - New requests join at any step: each looks up its longest cached prefix, and all
    of them are prefilled in one forward pass over their uncached tails alone (cached
    prefixes and tails both left-padded), then merged into the running batch.
  - Every step decodes one token for every request in the batch.
  - A request that finishes (end of sequence, stop string, max_tokens, cancelled)
    leaves at once; its keys and values go into the prefix cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers.engines.base import Completion, EngineSampling, EngineStats, FinishReason, apply_stop
from workers.engines.detokenize import IncrementalDetokenizer
from workers.engines.prefix_cache import PrefixCache


@dataclass
class Sequence:
    """One request's state while it is generated."""

    prompt: list[int]
    sampling: EngineSampling
    should_stop: Callable[[], bool] | None
    on_done: Callable[[Sequence], None] = lambda _: None
    namespace: str = ""  # of the prefix cache: the tenant
    deadline: float | None = None  # time.monotonic()
    cached: int = 0
    generated: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    text: str = ""
    on_text: Callable[[str], None] | None = None  # see EngineRequest.on_text
    detokenizer: IncrementalDetokenizer | None = None
    held: str = ""  # decoded, not yet sent: a stop string may still begin in it
    sent: int = 0  # characters of the text sent through on_text
    first_token_at: float | None = None  # time.monotonic()

    @property
    def stop_window(self) -> int:
        """How many of the newest tokens can hold a stop string that the newest token
        completes: each token is at least one byte, plus a margin for tokens that
        decode differently at the edge of a window."""
        return max((len(s.encode()) for s in self.sampling.stop), default=0) + 8


@dataclass
class Model:
    """What the batch loop needs of a loaded model."""

    module: Any
    tokenizer: Any
    device: str
    eos: frozenset[int]  # every end-of-sequence id of the model


@dataclass
class Batch:
    seqs: list[Sequence]
    cache: DynamicCache
    mask: torch.Tensor  # [requests, width]: 1 where a real token's keys and values sit


class GrowingLayer(DynamicLayer):  # type: ignore[misc]
    """Keys and values in buffers with room to grow: a decode step writes its new
    position in place, where DynamicLayer would copy the whole cache (torch.cat) on
    every step of every layer. Keys and values keep a length each, because code that
    replaces them (ours, and DynamicLayer's own ``crop``, ``batch_select_indices``)
    assigns one and then reads the other."""

    HEADROOM = 64

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._nk = 0
        self._nv = 0
        super().__init__()

    def _room(self, x: torch.Tensor, capacity: int) -> torch.Tensor:
        buffer = x.new_empty((*x.shape[:2], capacity, x.shape[3]))
        buffer[:, :, : x.shape[2]] = x
        return buffer

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self._nk]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k = None if value is None else self._room(value, value.shape[2] + self.HEADROOM)
        self._nk = 0 if value is None else value.shape[2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self._nv]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v = None if value is None else self._room(value, value.shape[2] + self.HEADROOM)
        self._nv = 0 if value is None else value.shape[2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self._k is None or self._v is None:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
        else:
            assert self._nk == self._nv, "keys and values out of step"
            n = self._nk
            end = n + key_states.shape[2]
            if end > self._k.shape[2]:
                capacity = max(2 * self._k.shape[2], end + self.HEADROOM)
                self._k = self._room(self._k[:, :, :n], capacity)
                self._v = self._room(self._v[:, :, :n], capacity)
            self._k[:, :, n:end] = key_states
            self._v[:, :, n:end] = value_states
            self._nk = self._nv = end
        assert self.keys is not None and self.values is not None
        return self.keys, self.values


def new_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A cache of growing layers, holding ``layers`` (empty: filled by the first pass)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    for k, v in layers:
        layer = GrowingLayer()
        layer.update(k, v)
        cache.layers.append(layer)
    return cache


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    gap = width - x.shape[dim]
    if gap == 0:
        return x
    shape = list(x.shape)
    shape[dim] = gap
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _forward(model: Model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: DynamicCache) -> torch.Tensor:
    out = model.module(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True)
    return out.logits[:, -1, :]


def prefill(model: Model, seqs: list[Sequence], cache: PrefixCache, stats: EngineStats
            ) -> tuple[Batch, torch.Tensor]:
    """One forward pass over the uncached tails of ``seqs``; the batch it leaves, and
    each sequence's next-token logits."""
    hits = [cache.lookup(s.prompt, max_length=len(s.prompt) - 1, namespace=s.namespace)
            for s in seqs]
    past_w = max(h.length for h in hits)
    tails = [s.prompt[h.length:] for s, h in zip(seqs, hits, strict=True)]
    tail_w = max(len(t) for t in tails)
    device, pad = model.device, model.tokenizer.pad_token_id or 0
    layers = []
    if past_w:
        reference = next(h.kv for h in hits if h.length)
        for layer, (k0, v0) in enumerate(reference):
            ks, vs = [], []
            for h in hits:
                k, v = h.kv[layer] if h.length else (k0[:, :, :0], v0[:, :, :0])
                ks.append(_pad_left(k, past_w, 2))
                vs.append(_pad_left(v, past_w, 2))
            layers.append((torch.cat(ks), torch.cat(vs)))
    rows, mask, positions = [], [], []
    for seq, hit, tail in zip(seqs, hits, tails, strict=True):
        gap = tail_w - len(tail)
        seq.cached = hit.length
        rows.append([pad] * gap + tail)
        mask.append([0] * (past_w - hit.length) + [1] * hit.length + [0] * gap + [1] * len(tail))
        positions.append([0] * gap + list(range(hit.length, len(seq.prompt))))
    batch_cache = new_cache(layers)
    mask_t = torch.tensor(mask, device=device)
    logits = _forward(model, torch.tensor(rows, device=device), mask_t,
                      torch.tensor(positions, device=device), batch_cache)
    stats.prefill_inputs.extend(len(t) for t in tails)
    stats.record_batch(len(seqs))
    return Batch(seqs, batch_cache, mask_t), logits


def merge(a: Batch | None, b: Batch) -> Batch:
    """One batch of both (the narrower left-padded)."""
    if a is None:
        return b
    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        keys = torch.cat([_pad_left(la.keys, width, 2), _pad_left(lb.keys, width, 2)])
        values = torch.cat([_pad_left(la.values, width, 2), _pad_left(lb.values, width, 2)])
        la.keys, la.values = keys, values
    mask = torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)])
    return Batch(a.seqs + b.seqs, a.cache, mask)


def _choose(logits: torch.Tensor, temperature: float) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1))


def _advance(model: Model, seq: Sequence, token: int) -> None:
    """Take one new token; set ``finish`` if the sequence is done."""
    seq.generated.append(token)
    if seq.first_token_at is None:
        seq.first_token_at = time.monotonic()
    if token in model.eos:
        seq.finish = "stop"
    elif seq.sampling.stop:
        # Only the newest tokens can complete a stop string not seen before: decode
        # those, not the whole output (which would make a long output quadratic).
        recent = model.tokenizer.decode(seq.generated[-seq.stop_window:],
                                        skip_special_tokens=True)
        if any(s in recent for s in seq.sampling.stop):
            seq.finish = "stop"
    if seq.finish is None and len(seq.generated) >= seq.sampling.max_tokens:
        seq.finish = "length"
    if seq.finish is None and (
        (seq.should_stop is not None and seq.should_stop())
        or (seq.deadline is not None and time.monotonic() >= seq.deadline)
    ):
        seq.finish = "abort"
    if seq.on_text is not None and seq.finish is None:
        _send_stable(model, seq, token)


def _send_stable(model: Model, seq: Sequence, token: int) -> None:
    """Send the text ``token`` completes, less what a stop string could still claim
    (its longest length less one character): a stop string is cut from the text, so
    text that may start one waits until the next tokens rule it out."""
    assert seq.on_text is not None
    if seq.detokenizer is None:
        seq.detokenizer = IncrementalDetokenizer(model.tokenizer)
    seq.held += seq.detokenizer.push(token)
    keep = max((len(s) for s in seq.sampling.stop), default=1) - 1
    ready = seq.held[:len(seq.held) - keep] if keep else seq.held
    if ready:
        seq.held = seq.held[len(ready):]
        seq.sent += len(ready)
        seq.on_text(ready)


def _send_rest(seq: Sequence) -> None:
    """The finished text past what was sent (stop strings now cut away)."""
    if seq.on_text is not None and len(seq.text) > seq.sent:
        rest = seq.text[seq.sent:]
        seq.sent = len(seq.text)
        seq.on_text(rest)


def _retire(model: Model, batch: Batch, cache: PrefixCache) -> Batch | None:
    """Hand finished sequences back (their keys and values into the prefix cache:
    the prompt and every generated token but the last, never fed); the batch of the
    others, without the left columns that are padding in all of them."""
    done = [row for row, s in enumerate(batch.seqs) if s.finish is not None]
    if not done:
        return batch
    for row in done:
        seq = batch.seqs[row]
        real = batch.mask[row].nonzero().squeeze(1)
        kv = [(layer.keys[row:row + 1].index_select(2, real),
               layer.values[row:row + 1].index_select(2, real)) for layer in batch.cache.layers]
        cache.insert(seq.prompt + seq.generated[:-1], kv, namespace=seq.namespace)
        text = model.tokenizer.decode(seq.generated, skip_special_tokens=True)
        seq.text = apply_stop(text, seq.sampling.stop)[0] if seq.sampling.stop else text
        _send_rest(seq)
        seq.on_done(seq)
    keep = [row for row, s in enumerate(batch.seqs) if s.finish is None]
    if not keep:
        return None
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int(mask.argmax(dim=1).min())  # first real column of any remaining row
    for layer in batch.cache.layers:
        keys = layer.keys.index_select(0, index)[:, :, start:]
        values = layer.values.index_select(0, index)[:, :, start:]
        layer.keys, layer.values = keys, values
    return Batch([batch.seqs[row] for row in keep], batch.cache, mask[:, start:])


def serve(model: Model, first: list[Sequence], take: Callable[[int], list[Sequence]],
          cache: PrefixCache, stats: EngineStats, max_batch: int) -> None:
    """Run ``first`` and whatever ``take(room)`` hands over between steps, until the
    batch is empty."""
    started = time.perf_counter()
    batch: Batch | None = None
    arrivals = first
    with torch.inference_mode():
        while True:
            if arrivals:
                joined, logits = prefill(model, arrivals, cache, stats)
                for row, seq in enumerate(arrivals):
                    _advance(model, seq, _choose(logits[row], seq.sampling.temperature))
                stats.requests += len(arrivals)
                stats.prompt_tokens += sum(len(s.prompt) for s in arrivals)
                stats.cached_tokens += sum(s.cached for s in arrivals)
                batch = _retire(model, merge(batch, joined), cache)
            if batch is None:
                break
            ids = torch.tensor([[s.generated[-1]] for s in batch.seqs], device=model.device)
            positions = torch.tensor([[len(s.prompt) + len(s.generated) - 1]
                                      for s in batch.seqs], device=model.device)
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.seqs), 1)], 1)
            logits = _forward(model, ids, batch.mask, positions, batch.cache)
            stats.record_batch(len(batch.seqs))
            for row, seq in enumerate(batch.seqs):
                _advance(model, seq, _choose(logits[row], seq.sampling.temperature))
            batch = _retire(model, batch, cache)
            arrivals = take(max_batch - (len(batch.seqs) if batch else 0))
            if batch is None and not arrivals:
                break
    stats.busy_s += time.perf_counter() - started


def completion(seq: Sequence) -> Completion:
    assert seq.finish is not None
    return Completion(text=seq.text, finish_reason=seq.finish, prompt_tokens=len(seq.prompt),
                      completion_tokens=len(seq.generated), cached_tokens=seq.cached,
                      first_token_at=seq.first_token_at)
