"""Differential tests of the transformers engine's batching and prefix cache.

Every request's greedy tokens must equal a solo, no-cache reference (transformers'
own ``generate`` on one sequence), token for token, whatever it was batched with:
other prompts of other lengths, shared prefixes, arrivals while others decode,
different ``max_tokens``, stop strings, end-of-sequence ids, cancellations, deadlines,
cache hits and evictions, several tenants. Hypothesis generates the workloads.

The model is the demo model built with wide logit gaps in float64: rounding between
batch shapes cannot flip a greedy choice, while one wrong key or value changes the
next token at once (its output changes every token; it does not repeat one)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.engines.base import EngineSampling, EngineStats, apply_stop
from workers.engines.batching import Model, serve
from workers.engines.batching import Sequence as Running
from workers.engines.prefix_cache import PrefixCache, kv_nbytes
from workers.engines.transformers import read_model

MAX_TOKENS = 20
EXAMPLES = 60


@pytest.fixture(scope="module")
def model(demo_model_dir: Path) -> Model:
    return read_model(str(demo_model_dir))


def reference(model: Model) -> Callable[[tuple[int, ...]], list[int]]:
    """Greedy tokens of one prompt alone with no prefix cache, MAX_TOKENS long, from
    transformers' own generate: the independent reference."""

    @cache
    def tokens(prompt: tuple[int, ...]) -> list[int]:
        ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            out = model.module.generate(ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                        do_sample=False, eos_token_id=None,
                                        pad_token_id=model.tokenizer.pad_token_id)
        return [int(t) for t in out[0, len(prompt):]]

    return tokens


def expected(model: Model, ref: list[int], spec: RequestSpec, eos: frozenset[int]) -> list[int]:
    """What the engine must generate: the reference cut where the engine must stop —
    an end-of-sequence id (kept), the token that completes a stop string (kept),
    max_tokens, or the step at which the request was cancelled."""
    limit = spec.max_tokens if spec.cancel_after is None else min(spec.max_tokens,
                                                                   spec.cancel_after)
    for n in range(1, limit + 1):
        if ref[n - 1] in eos:
            return ref[:n]
        text = model.tokenizer.decode(ref[:n], skip_special_tokens=True)
        if spec.stop and apply_stop(text, spec.stop)[1]:
            return ref[:n]
    return ref[:limit]


@dataclass(frozen=True)
class RequestSpec:
    prompt: tuple[int, ...]
    max_tokens: int
    arrives_at: int  # decode step after which it is handed to the engine
    namespace: str
    stop: tuple[str, ...] = ()
    cancel_after: int | None = None  # should_stop answers True from this call on


@dataclass
class Finished:
    """Sequences in the order they left the batch (and entered the cache)."""

    seqs: list[Running] = field(default_factory=list)
    # For each request: how many had finished when it was handed to the engine.
    before: dict[int, int] = field(default_factory=dict)


def run_workload(model: Model, specs: list[RequestSpec], cache: PrefixCache,
                 max_batch: int, finished: Finished) -> list[Running]:
    """Serve ``specs`` as the engine's scheduler does, handing each over after its
    decode step (deterministic arrivals while others decode)."""
    step = 0

    def make(spec: RequestSpec) -> Running:
        calls = 0

        def should_stop() -> bool:
            nonlocal calls
            calls += 1
            return spec.cancel_after is not None and calls >= spec.cancel_after

        seq = Running(prompt=list(spec.prompt), sampling=EngineSampling(
            spec.max_tokens, stop=spec.stop), should_stop=should_stop,
            on_done=finished.seqs.append, namespace=spec.namespace)
        finished.before[id(seq)] = len(finished.seqs)
        return seq

    waiting = sorted(range(len(specs)), key=lambda i: specs[i].arrives_at)
    by_index: dict[int, Running] = {}

    def take(room: int) -> list[Running]:
        nonlocal step
        step += 1
        out = []
        while waiting and specs[waiting[0]].arrives_at <= step and len(out) < room:
            i = waiting.pop(0)
            by_index[i] = make(specs[i])
            out.append(by_index[i])
        return out

    while waiting:  # the engine idles until the next arrival
        first = take(max_batch)
        if first:
            serve(model, first, take, cache, EngineStats(), max_batch)
    return [by_index[i] for i in range(len(specs))]


@st.composite
def workloads(draw: st.DrawFn, vocab: int) -> list[list[RequestSpec]]:
    """Rounds of requests against one cache: later rounds hit what earlier ones left."""
    token = st.integers(min_value=7, max_value=vocab - 1)
    prefixes = draw(st.lists(st.lists(token, min_size=1, max_size=40), min_size=1,
                             max_size=3))
    rounds = []
    for _ in range(draw(st.integers(1, 3))):
        specs = []
        for _ in range(draw(st.integers(1, 6))):
            prefix = draw(st.sampled_from([[], *prefixes]))
            tail = draw(st.lists(token, min_size=1, max_size=12))
            stop = draw(st.one_of(st.just(()), st.tuples(st.text(
                alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=2))))
            specs.append(RequestSpec(
                prompt=tuple(prefix + tail),
                max_tokens=draw(st.integers(1, MAX_TOKENS)),
                arrives_at=draw(st.integers(0, 8)),
                namespace=draw(st.sampled_from(["acme", "globex"])),
                stop=stop,
                cancel_after=draw(st.one_of(st.none(), st.integers(1, MAX_TOKENS))),
            ))
        rounds.append(specs)
    return rounds


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_request_gets_its_solo_greedy_tokens(model: Model, data: st.DataObject) -> None:
    vocab = int(model.module.config.vocab_size)
    rounds = data.draw(workloads(vocab))
    # A budget from "a few short sequences" to "everything": evictions happen mid-run.
    budget = data.draw(st.sampled_from([20_000, 200_000, 1 << 30]))
    max_batch = data.draw(st.integers(1, 6))
    # Some examples end sequences on frequent tokens, as a model's end-of-sequence ids.
    eos = frozenset(data.draw(st.lists(st.integers(7, vocab - 1), max_size=40)))
    served = Model(model.module, model.tokenizer, model.device, eos)
    solo = reference(model)
    cache = PrefixCache(budget)
    finished = Finished()
    for specs in rounds:
        seqs = run_workload(served, specs, cache, max_batch, finished)
        for spec, seq in zip(specs, seqs, strict=True):
            want = expected(model, solo(spec.prompt), spec, eos)
            assert seq.generated == want, spec
            text = model.tokenizer.decode(want, skip_special_tokens=True)
            assert seq.text == (apply_stop(text, spec.stop)[0] if spec.stop else text)
            # Served only from what its own tenant's sequences left before it came.
            own = max((_common(spec.prompt, s.prompt + s.generated[:-1])
                       for s in finished.seqs[:finished.before[id(seq)]]
                       if s.namespace == spec.namespace), default=0)
            assert seq.cached <= min(own, len(spec.prompt) - 1), spec
        assert cache.nbytes <= budget


def _common(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_a_deadline_stops_a_request_and_leaves_the_others(model: Model) -> None:
    cache = PrefixCache(1 << 30)
    done: list[Running] = []
    late = Running(prompt=[20, 21, 22], sampling=EngineSampling(500), should_stop=None,
                   on_done=done.append, deadline=time.monotonic())
    on_time = Running(prompt=[30, 31], sampling=EngineSampling(12), should_stop=None,
                      on_done=done.append)
    serve(model, [late, on_time], lambda _: [], cache, EngineStats(), 4)
    assert late.finish == "abort" and len(late.generated) == 1
    assert on_time.finish == "length"
    assert on_time.generated == reference(model)((30, 31))[:12]


def test_another_tenant_never_hits_the_cache(model: Model) -> None:
    cache = PrefixCache(1 << 30)
    prompt = [40 + i for i in range(50)]

    def one(namespace: str) -> Running:
        seq = Running(prompt=prompt, sampling=EngineSampling(4), should_stop=None,
                      namespace=namespace)
        serve(model, [seq], lambda _: [], cache, EngineStats(), 4)
        return seq

    assert one("acme").cached == 0
    assert one("globex").cached == 0  # the same prompt, another tenant: cold
    assert one("acme").cached == len(prompt) - 1
    assert one("globex").cached == len(prompt) - 1


def test_shared_prefixes_are_stored_once(model: Model) -> None:
    """100 conversations sharing a 1,000-token system prompt: the cache holds the
    prompt once plus each conversation's own tail."""
    system = [7 + (i * 31) % 500 for i in range(1000)]
    cache = PrefixCache(1 << 34)
    per_token = None
    for i in range(100):
        seq = Running(prompt=[*system, 100 + i, 200 + i], sampling=EngineSampling(2),
                      should_stop=None)
        serve(model, [seq], lambda _: [], cache, EngineStats(), 1)
        if per_token is None:
            per_token = cache.nbytes / (len(seq.prompt) + 1)
    assert per_token is not None
    tails = 100 * 3  # each conversation's own tokens after the shared prompt
    assert cache.nbytes <= 1.01 * per_token * (len(system) + tails)
    hit = cache.lookup([*system, 100, 200, 9], max_length=1002)
    assert hit.length == 1002 and kv_nbytes(hit.kv) == pytest.approx(per_token * 1002)


@pytest.fixture
def tiny_cache() -> Iterator[PrefixCache]:
    yield PrefixCache(budget_bytes=1 << 20)


def _kv(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys that are the tokens themselves: a lookup shows which spans it joined."""
    t = torch.tensor(tokens, dtype=torch.float32).view(1, 1, len(tokens), 1)
    return [(t, -t)]


def test_the_radix_store_splits_spans_and_serves_the_longest_prefix(
        tiny_cache: PrefixCache) -> None:
    tiny_cache.insert([1, 2, 3, 4, 5], _kv([1, 2, 3, 4, 5]))
    tiny_cache.insert([1, 2, 3, 9], _kv([1, 2, 3, 9]))  # splits the first span at 3
    assert len(tiny_cache) == 3  # [1 2 3] → [4 5] | [9]
    hit = tiny_cache.lookup([1, 2, 3, 9, 7], max_length=4)
    assert hit.length == 4 and hit.kv[0][0].flatten().tolist() == [1, 2, 3, 9]
    assert hit.kv[0][1].flatten().tolist() == [-1, -2, -3, -9]
    hit = tiny_cache.lookup([1, 2, 3, 4, 6], max_length=5)
    assert hit.kv[0][0].flatten().tolist() == [1, 2, 3, 4]
    assert tiny_cache.lookup([7, 1, 2], max_length=2).length == 0
    assert tiny_cache.lookup([1, 2, 3, 4, 5], max_length=5, namespace="other").length == 0
    element = 4 * 2  # float32 keys and values
    assert tiny_cache.nbytes == element * 6  # 1 2 3 4 5 9: each token once


def test_eviction_takes_the_least_recently_used_leaf_first() -> None:
    element = 4 * 2
    cache = PrefixCache(budget_bytes=element * 7)
    cache.insert([1, 2, 3], _kv([1, 2, 3]))
    cache.insert([1, 2, 3, 4, 5], _kv([1, 2, 3, 4, 5]))
    cache.insert([1, 2, 8], _kv([1, 2, 8]))
    cache.lookup([1, 2, 3, 4, 5], max_length=5)  # [4 5] is now the most recent
    cache.insert([6, 6], _kv([6, 6]))  # over budget by one token: [8] goes
    assert cache.nbytes <= element * 7
    assert cache.lookup([1, 2, 8], max_length=3).length == 2
    assert cache.lookup([1, 2, 3, 4, 5], max_length=5).length == 5
    assert cache.lookup([6, 6], max_length=2).length == 2
