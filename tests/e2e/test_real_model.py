"""The transformers engine on the locally built demo model, through a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmos_jobs.client import LlmosClient
from llmos_jobs.errors import InvalidRequest
from schemas.common import JobStatus
from tests.support.stack import Stack, make_stack
from tests.support.waiting import until


@pytest.fixture(scope="module")
def model_stack(redis_base: str, demo_model_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack("sqlite", redis_base, None, tmp_path_factory.mktemp("real"), redis_db=13)
    stack.client().register_model("tiny", demo_model_dir)
    # The same weights under another name, served one job at a time: the reference.
    stack.client().register_model("tiny-solo", demo_model_dir)
    stack.start_worker("tiny@test", "--model", "tiny", "--concurrency", "12")
    stack.start_worker("solo@test", "--model", "tiny-solo", "--concurrency", "1")
    yield stack
    stack.stop()


def test_greedy_generation_is_real_and_repeatable(model_stack: Stack, demo_model_dir: Path
                                                  ) -> None:
    client = model_stack.client()
    prompt = "the worker keeps a prefix cache"
    jobs = [client.generate(model="tiny", prompt=prompt, max_tokens=8) for _ in range(2)]
    first, second = client.wait([j.id for j in jobs])
    assert first.status == second.status == JobStatus.succeeded
    assert first.result == second.result
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    assert first.usage is not None
    assert first.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert 1 <= first.usage.completion_tokens <= 8


def test_chat_messages_use_the_models_template(model_stack: Stack, demo_model_dir: Path) -> None:
    client = model_stack.client()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    [done] = client.wait([client.generate(model="tiny", messages=messages, max_tokens=4).id])
    assert done.status == JobStatus.succeeded
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert done.usage is not None
    assert done.usage.prompt_tokens == len(expected["input_ids"])


def test_stop_strings_cut_the_output(model_stack: Stack) -> None:
    client = model_stack.client()
    [free] = client.wait([client.generate(model="tiny", prompt="queue", max_tokens=12).id])
    assert free.result is not None
    text = free.result["text"]
    if len(text) < 2:
        pytest.skip("the seeded model produced too little text to cut")
    stop = text[len(text) // 2:][:2]
    [cut] = client.wait([client.generate(model="tiny", prompt="queue", max_tokens=12,
                                         stop=[stop]).id])
    assert cut.result is not None
    assert cut.result["text"] == text[: text.find(stop)]
    assert cut.result["finish_reason"] == "stop"


def test_max_tokens_beyond_the_models_context_is_rejected(model_stack: Stack) -> None:
    with pytest.raises(InvalidRequest, match="2048 tokens"):
        model_stack.client().generate(model="tiny", prompt="x", max_tokens=4096)


def test_mindspace_turns_on_a_real_model_grow_the_prompt(model_stack: Stack) -> None:
    client = model_stack.client()
    mindspace = client.create_mindspace(model="tiny", persona="You are terse.")
    usages = []
    for message in ("hello", "what did I say?"):
        [turn] = client.wait([client.chat(mindspace.id, message, max_tokens=4).id])
        assert turn.status == JobStatus.succeeded and turn.usage is not None
        usages.append(turn.usage.prompt_tokens)
    assert usages[1] > usages[0] + 4  # the second prompt carries the first turn
    assert len(client.mindspace(mindspace.id).messages) == 4


def test_concurrent_jobs_share_a_forward_batch_with_the_same_outputs(model_stack: Stack) -> None:
    client = model_stack.client()
    prompts = [f"job {i} asks the worker about queue {i * 7}" for i in range(6)]
    alone = [client.wait([client.generate(model="tiny", prompt=p, max_tokens=10).id])[0]
             for p in prompts]
    jobs = client.generate_many([{"model": "tiny", "prompt": p, "max_tokens": 10}
                                 for p in prompts]).jobs
    together = client.wait([j.id for j in jobs])
    # (The second time round the prompts come from the prefix cache: cached_tokens differ.)
    assert [j.result["text"] for j in together if j.result] == [
        j.result["text"] for j in alone if j.result]
    assert all(j.usage and j.usage.cached_tokens > 0 for j in together)
    _until_a_batch_is_reported(client)


def _until_a_batch_is_reported(client: LlmosClient) -> None:
    """The heartbeat reports the engine's largest batch; it reaches 2 once one has run
    (on the worker's next beat, not with the jobs' rows)."""
    def max_batch() -> float:
        [worker] = [w for w in client.workers() if w.name == "tiny@test"]
        return float(worker.engines.get("tiny@1", {}).get("max_batch", 0))

    until(lambda: max_batch() >= 2, "the worker reported a batch of 2 or more", poll_s=0.2)


def test_cancelling_a_running_job_stops_its_generation(model_stack: Stack) -> None:
    client = model_stack.client()
    job = client.generate(model="tiny", prompt="keep going", max_tokens=1900)
    # Cancelled once its first piece of text was decoded: some tokens, far from all.
    next(e for e in client.events(job.id) if e.type == "delta")
    assert client.cancel(job.id).status == JobStatus.cancelled
    until(lambda: client.job(job.id).usage is not None,  # what the attempt cost
          "the worker recorded the cancelled attempt's usage")
    stopped = client.job(job.id)
    assert stopped.status == JobStatus.cancelled and stopped.result is None
    assert stopped.usage is not None and 0 < stopped.usage.completion_tokens < 1900
    [after] = client.wait([client.generate(model="tiny", prompt="next", max_tokens=3).id])
    assert after.status == JobStatus.succeeded


def test_twelve_concurrent_jobs_give_the_text_of_the_same_jobs_one_at_a_time(
        model_stack: Stack) -> None:
    """Different prompt lengths and max_tokens, so sequences finish at different steps
    and others keep decoding: the batch is rebuilt many times while they run."""
    client = model_stack.client()
    requests = [{"prompt": " ".join(["the queue keeps a job"] * (1 + i % 5)) + f" number {i}",
                 "max_tokens": 4 + 7 * i % 37} for i in range(12)]
    solo = [client.wait([client.generate(model="tiny-solo", **r).id])[0] for r in requests]
    batched = client.wait([j.id for j in client.generate_many(
        [{"model": "tiny", **r} for r in requests]).jobs], timeout_s=300)
    assert all(j.status == JobStatus.succeeded for j in solo + batched)
    texts = [j.result["text"] for j in batched if j.result]
    assert texts == [j.result["text"] for j in solo if j.result]
    assert len(set(texts)) == 12  # the model's output varies: equal text means something
    _until_a_batch_is_reported(client)
