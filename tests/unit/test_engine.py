"""The transformers engine in-process on the locally built model: prefix cache,
batching, cancellation. The model's forward pass is observed, not just counters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.common import ChatMessage
from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.transformers import BatchingOptions, EngineUnloaded, TransformersEngine


def _engine(path: Path, **options: Any) -> TransformersEngine:
    engine = TransformersEngine("tiny", str(path), BatchingOptions(**options))
    engine.load()
    return engine


@pytest.fixture
def engine(demo_model_dir: Path) -> Iterator[TransformersEngine]:
    engine = _engine(demo_model_dir)
    yield engine
    engine.unload()


def _ids(n: int, offset: int = 0) -> list[int]:
    # Token ids that are ordinary words of the demo vocabulary (past the specials).
    return [10 + (offset + 7 * i) % 400 for i in range(n)]


def _req(ids: list[int], max_tokens: int = 8, **kw: Any) -> EngineRequest:
    return EngineRequest(sampling=EngineSampling(max_tokens=max_tokens), input_ids=ids, **kw)


def _forward_lengths(engine: TransformersEngine) -> list[tuple[int, int]]:
    """(batch, tokens) of every forward pass the model runs from now on."""
    seen: list[tuple[int, int]] = []

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(tuple(kwargs["input_ids"].shape))  # type: ignore[arg-type]

    engine._model.module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_a_shared_prefix_is_served_from_cache_and_only_the_tail_is_computed(
    engine: TransformersEngine,
) -> None:
    prefix = _ids(64)
    [first] = engine.generate([_req([*prefix, 451, 452])])
    assert first.cached_tokens == 0
    seen = _forward_lengths(engine)
    [second] = engine.generate([_req([*prefix, 453, 454, 455])])
    assert second.cached_tokens == 64
    assert second.prompt_tokens == 67
    assert seen[0] == (1, 3)  # the prefill ran on the uncached tail alone
    assert engine.stats().prefill_inputs[-1] == 3


def test_cached_and_uncached_greedy_outputs_are_identical(demo_model_dir: Path) -> None:
    prompts = [[*_ids(40, 1), 460 + i] for i in range(4)]
    warm = _engine(demo_model_dir)
    warm.generate([_req([*_ids(40, 1), 499], max_tokens=16)])
    cached = [warm.generate([_req(p, max_tokens=16)])[0] for p in prompts]
    cold = [_engine(demo_model_dir).generate([_req(p, max_tokens=16)])[0] for p in prompts]
    assert all(c.cached_tokens == 40 for c in cached)
    assert all(c.cached_tokens == 0 for c in cold)
    assert [c.text for c in cached] == [c.text for c in cold]


def test_messages_rendered_without_the_generation_prompt_prefill_what_a_chat_extends(
    engine: TransformersEngine,
) -> None:
    """A mindspace's persona prefill: the system message alone, one token generated and
    dropped; a chat over it then computes only its own tail, in its namespace only."""
    system = ChatMessage(role="system", content="You keep the queue in order.")
    chat = [system, ChatMessage(role="user", content="who is next?")]
    tokenizer = engine._model.tokenizer
    prefix = tokenizer.apply_chat_template([system.model_dump()], tokenize=True,
                                           return_dict=True)["input_ids"]
    [warm] = engine.generate([EngineRequest(EngineSampling(max_tokens=1), messages=[system],
                                            generation_prompt=False, cache_namespace="t1")])
    assert warm.prompt_tokens == len(prefix)
    [other] = engine.generate([EngineRequest(EngineSampling(max_tokens=8), messages=chat,
                                             cache_namespace="t2")])
    [turn] = engine.generate([EngineRequest(EngineSampling(max_tokens=8), messages=chat,
                                            cache_namespace="t1")])
    assert other.cached_tokens == 0 and turn.cached_tokens == len(prefix)
    assert turn.prompt_tokens == other.prompt_tokens > len(prefix)
    assert turn.text == other.text


def test_a_batch_runs_together_with_the_same_greedy_outputs_as_alone(
    demo_model_dir: Path,
) -> None:
    prompts = [_ids(5 + 6 * i, i) for i in range(6)]  # different lengths: padding matters
    alone = [_engine(demo_model_dir).generate([_req(p, max_tokens=12)])[0] for p in prompts]
    engine = _engine(demo_model_dir)
    seen = _forward_lengths(engine)
    together = engine.generate([_req(p, max_tokens=12) for p in prompts])
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    assert seen[0][0] == 6  # one prefill of all six
    assert max(batch for batch, _ in seen[1:]) >= 2 and all(t == 1 for _, t in seen[1:])
    assert len(seen) <= 12  # not one pass per request per token


def test_eviction_keeps_the_cache_under_its_budget(demo_model_dir: Path) -> None:
    probe = _engine(demo_model_dir)
    probe.generate([_req(_ids(100), max_tokens=1)])
    one_entry = probe.stats().cache_bytes
    budget = int(one_entry * 3.5)
    engine = _engine(demo_model_dir, cache_budget_bytes=budget)
    for i in range(10):
        engine.generate([_req(_ids(100, 1000 + i * 13), max_tokens=1)])
        assert engine.stats().cache_bytes <= budget
    assert engine.stats().cache_entries == 3
    # The most recent prompt is still served; the oldest was evicted.
    [recent] = engine.generate([_req([*_ids(100, 1000 + 9 * 13), 5], max_tokens=1)])
    [oldest] = engine.generate([_req([*_ids(100, 1000), 5], max_tokens=1)])
    assert recent.cached_tokens == 100 and oldest.cached_tokens == 0


def test_cancelling_stops_generation_at_the_next_step(engine: TransformersEngine) -> None:
    calls = 0

    def stop_after_five() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 5

    long, short = engine.generate([
        _req(_ids(10), max_tokens=500, should_stop=stop_after_five),
        _req(_ids(12, 3), max_tokens=20),
    ])
    assert long.finish_reason == "abort" and long.completion_tokens == 5
    assert short.finish_reason in ("length", "stop") and short.completion_tokens <= 20


def test_a_request_over_the_context_fails_alone(engine: TransformersEngine) -> None:
    with pytest.raises(ValueError, match="exceeds the model's context"):
        engine.generate([_req(_ids(10), max_tokens=5000)])
    [ok] = engine.generate([_req(_ids(10), max_tokens=2)])
    assert ok.completion_tokens >= 1


def test_a_request_arriving_mid_batch_joins_it_at_the_next_step(
    engine: TransformersEngine,
) -> None:
    import threading

    seen = _forward_lengths(engine)
    results: dict[str, Any] = {}
    started = threading.Event()

    def long() -> None:
        started.set()
        results["long"] = engine.generate([_req(_ids(20), max_tokens=200)])[0]

    thread = threading.Thread(target=long)
    thread.start()
    started.wait()
    while len(seen) < 5:  # the long request is decoding
        pass
    [short] = engine.generate([_req(_ids(8, 5), max_tokens=3)])
    thread.join()
    assert short.completion_tokens == 3
    assert results["long"].completion_tokens == 200
    joined = [i for i, (batch, tokens) in enumerate(seen) if batch == 2]
    assert joined, "the second request never shared a forward pass"
    assert len(seen) < 200 + 3 + 2  # it did not wait for the long one to finish


def test_requests_after_unload_fail_at_once(demo_model_dir: Path) -> None:
    engine = _engine(demo_model_dir)
    [before] = engine.generate([_req(_ids(6), max_tokens=2)])
    engine.unload()
    with pytest.raises(EngineUnloaded, match="unloaded"):
        engine.generate([_req(_ids(6), max_tokens=2)])
    assert before.completion_tokens == 2 and not engine.loaded and not engine.health()


def test_a_weight_update_drains_the_batch_then_serves_only_new_weights(
    demo_model_dir: Path, tmp_path: Path,
) -> None:
    import threading

    from llmos_jobs.demo_model import create_demo_model

    other = create_demo_model(tmp_path / "other", seed=1, dtype="float64")
    prompt = _ids(30, 2)
    [old_alone] = _engine(demo_model_dir).generate([_req(prompt, max_tokens=60)])
    [new_alone] = _engine(other).generate([_req(prompt, max_tokens=60)])
    assert old_alone.text != new_alone.text  # the two models differ

    engine = _engine(demo_model_dir)
    seen = _forward_lengths(engine)
    results: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: results.update(long=engine.generate([_req(prompt, max_tokens=60)])[0]))
    thread.start()
    while len(seen) < 5:  # the long request is decoding on the old weights
        pass
    engine.update_weights(str(other))
    thread.join()
    [after] = engine.generate([_req(prompt, max_tokens=60)])
    assert results["long"].text == old_alone.text  # never mixed weights mid-sequence
    assert after.text == new_alone.text and after.cached_tokens == 0  # old cache gone
