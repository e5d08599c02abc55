"""Batched generation with a prefix cache: the transformers engine's core.

One call runs a group of requests together:
  1. each prompt's longest cached prefix is looked up; requests with no hit are
     prefilled together (left-padded), requests with a hit are prefilled one by one
     on their uncached tail only;
  2. the per-request caches are left-padded into one batch and decoded together, one
     token per step for every active request, with explicit position ids so padding
     never shifts a request's positions;
  3. a request that finishes (end of sequence, stop string, max_tokens, cancelled)
     leaves the batch at once, and its keys and values go into the prefix cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from workers.engine import Completion, EngineStats, FinishReason, SamplingParams, apply_stop
from workers.prefix_cache import KV, PrefixCache


@dataclass
class Sequence:
    """One request's state while it is generated."""

    prompt: list[int]
    sampling: SamplingParams
    should_stop: Callable[[], bool] | None
    cached: int = 0
    kv: KV = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    text: str = ""


@dataclass
class Model:
    """What the batch loop needs of a loaded model."""

    module: Any
    tokenizer: Any
    device: str
    eos: int | None


def _forward(model: Model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: DynamicCache) -> tuple[torch.Tensor, DynamicCache]:
    out = model.module(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True)
    return out.logits[:, -1, :], out.cache


def _split(cache: DynamicCache, row: int, start: int, stop: int | None = None) -> KV:
    return [(layer.keys[row:row + 1, :, start:stop].clone(),
             layer.values[row:row + 1, :, start:stop].clone()) for layer in cache.layers]


def prefill(model: Model, seqs: list[Sequence], cache: PrefixCache, stats: EngineStats
            ) -> list[torch.Tensor]:
    """Fill each sequence's cache with its prompt; the last-position logits of each."""
    logits: list[torch.Tensor | None] = [None] * len(seqs)
    cold = []
    for i, seq in enumerate(seqs):
        hit = cache.lookup(seq.prompt, max_length=len(seq.prompt) - 1)
        seq.cached = hit.length
        if hit.length == 0:
            cold.append(i)
            continue
        tail = seq.prompt[hit.length:]
        ids = torch.tensor([tail], device=model.device)
        positions = torch.arange(hit.length, len(seq.prompt), device=model.device)[None]
        mask = torch.ones(1, len(seq.prompt), dtype=torch.long, device=model.device)
        out, full = _forward(model, ids, mask, positions, DynamicCache(hit.kv))
        stats.prefill_inputs.append(len(tail))
        logits[i], seq.kv = out[0], _split(full, 0, 0)
    if cold:
        width = max(len(seqs[i].prompt) for i in cold)
        pad = model.tokenizer.pad_token_id or 0
        rows = [[pad] * (width - len(seqs[i].prompt)) + seqs[i].prompt for i in cold]
        mask = torch.tensor([[0] * (width - len(seqs[i].prompt)) + [1] * len(seqs[i].prompt)
                             for i in cold], device=model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out, full = _forward(model, torch.tensor(rows, device=model.device), mask, positions,
                             DynamicCache())
        stats.prefill_inputs.extend(len(seqs[i].prompt) for i in cold)
        for row, i in enumerate(cold):
            logits[i], seqs[i].kv = out[row], _split(full, row, width - len(seqs[i].prompt))
    stats.record_batch(len(seqs))
    return [x for x in logits if x is not None]


def _choose(logits: torch.Tensor, temperature: float) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1))


def _advance(model: Model, seq: Sequence, token: int) -> None:
    """Take one new token; set ``finish`` if the sequence is done."""
    seq.generated.append(token)
    if model.eos is not None and token == model.eos:
        seq.finish = "stop"
    if seq.sampling.stop:
        text, hit = apply_stop(model.tokenizer.decode(seq.generated, skip_special_tokens=True),
                               seq.sampling.stop)
        if hit:
            seq.finish, seq.text = "stop", text
    if seq.finish is None and len(seq.generated) >= seq.sampling.max_tokens:
        seq.finish = "length"
    if seq.finish is None and seq.should_stop is not None and seq.should_stop():
        seq.finish = "abort"


def _stack(seqs: list[Sequence], device: str) -> tuple[DynamicCache, torch.Tensor]:
    """One left-padded batch cache from per-sequence caches, and its attention mask."""
    width = max(len(s.kv[0][0][0, 0]) for s in seqs)
    layers = []
    for layer in range(len(seqs[0].kv)):
        keys, values = [], []
        for s in seqs:
            k, v = s.kv[layer]
            gap = width - k.shape[2]
            keys.append(torch.nn.functional.pad(k, (0, 0, gap, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, gap, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    mask = torch.tensor([[0] * (width - s.kv[0][0].shape[2]) + [1] * s.kv[0][0].shape[2]
                         for s in seqs], device=device)
    return DynamicCache(layers), mask


def decode(model: Model, seqs: list[Sequence], first: list[torch.Tensor],
           cache: PrefixCache, stats: EngineStats) -> None:
    """Generate until every sequence has finished."""
    for seq, logits in zip(seqs, first, strict=True):
        _advance(model, seq, _choose(logits, seq.sampling.temperature))
    _retire(model, [s for s in seqs if s.finish is not None], cache)
    active = [s for s in seqs if s.finish is None]
    if not active:
        return
    batch, mask = _stack(active, model.device)
    for s in active:
        s.kv = []  # the batch holds them now
    while active:
        ids = torch.tensor([[s.generated[-1]] for s in active], device=model.device)
        positions = torch.tensor([[len(s.prompt) + len(s.generated) - 1] for s in active],
                                 device=model.device)
        mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype,
                                           device=model.device)], dim=1)
        logits, batch = _forward(model, ids, mask, positions, batch)
        stats.record_batch(len(active))
        for row, seq in enumerate(active):
            _advance(model, seq, _choose(logits[row], seq.sampling.temperature))
        done = [row for row, s in enumerate(active) if s.finish is not None]
        if not done:
            continue
        for row in done:
            seq = active[row]
            seq.kv = _split(batch, row, int((mask[row] == 0).sum()))
        _retire(model, [active[row] for row in done], cache)
        keep = [row for row, s in enumerate(active) if s.finish is None]
        active = [active[row] for row in keep]
        if active:
            batch, mask = _shrink(batch, mask, keep)


def _shrink(batch: DynamicCache, mask: torch.Tensor, keep: list[int]
            ) -> tuple[DynamicCache, torch.Tensor]:
    """Drop finished rows, and the left columns that are padding in every row left."""
    index = torch.tensor(keep, device=mask.device)
    mask = mask.index_select(0, index)
    start = int((mask == 0).sum(dim=1).min())
    for layer in batch.layers:
        layer.keys = layer.keys.index_select(0, index)[:, :, start:]
        layer.values = layer.values.index_select(0, index)[:, :, start:]
    return batch, mask[:, start:]


def _retire(model: Model, seqs: list[Sequence], cache: PrefixCache) -> None:
    """Finished sequences: final text, and their keys and values into the prefix cache.
    The cache covers the prompt and every generated token but the last (never fed)."""
    for seq in seqs:
        if not seq.text:
            tokens = seq.generated[:-1] if seq.finish == "stop" and seq.generated and \
                seq.generated[-1] == model.eos else seq.generated
            text = model.tokenizer.decode(tokens, skip_special_tokens=True)
            seq.text = apply_stop(text, seq.sampling.stop)[0] if seq.sampling.stop else text
        if seq.kv:
            cache.insert(seq.prompt + seq.generated[:-1], seq.kv)
            seq.kv = []


def completion(seq: Sequence) -> Completion:
    assert seq.finish is not None
    return Completion(text=seq.text, finish_reason=seq.finish, prompt_tokens=len(seq.prompt),
                      completion_tokens=len(seq.generated), cached_tokens=seq.cached)


def run(model: Model, seqs: list[Sequence], cache: PrefixCache, stats: EngineStats) -> None:
    started = time.perf_counter()
    with torch.inference_mode():
        first = prefill(model, seqs, cache, stats)
        decode(model, seqs, first, cache, stats)
    stats.busy_s += time.perf_counter() - started
    stats.requests += len(seqs)
    stats.prompt_tokens += sum(len(s.prompt) for s in seqs)
    stats.cached_tokens += sum(s.cached for s in seqs)
