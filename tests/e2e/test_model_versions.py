"""Model versions, the bounded engine pool, keep_alive and warm-up, through real worker
processes on two demo models whose outputs differ (seeds 0 and 1). Every text is
compared with a solo greedy run of the version the job records, on the transformers
engine in this process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from llmos_jobs.db.tables import JobPublic, WorkerPublic
from llmos_jobs.errors import InvalidRequest
from schemas.common import JobStatus
from tests.support.stack import Stack, make_stack
from tests.support.waiting import until
from workers.engines.base import Completion, EngineRequest, EngineSampling
from workers.engines.pool import WARMUP_PROMPT, WARMUP_TOKENS
from workers.engines.transformers import TransformersEngine

# The Redis database of this module's broker.
VERSIONS_REDIS_DB = 6
PROMPT = "the scheduler hands the queue a job"
MAX_TOKENS = 8


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmos_jobs.demo_model import create_demo_model

    return create_demo_model(tmp_path_factory.mktemp("models") / "demo-tiny-seed1",
                             dtype="float64", seed=1)


@cache
def solo_run(path: str, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> Completion:
    """A solo greedy run of the model at ``path``, on the engine in this process."""
    engine = TransformersEngine("reference", path)
    engine.load()
    try:
        [done] = engine.generate([EngineRequest(EngineSampling(max_tokens), prompt=prompt)])
    finally:
        engine.unload()
    return done


def reference(path: str) -> str:
    return solo_run(path).text


class Names:
    def __init__(self) -> None:
        self.versioned = _name("ver")  # v1 = seed 0, v2 = seed 1
        self.first = _name("pool-a")  # seed 0, on the pooled worker
        self.second = _name("pool-b")  # seed 1, on the pooled worker
        self.ephemeral = _name("keep0")  # keep_alive 0
        self.brief = _name("keep1s")  # keep_alive 1s
        self.warm = _name("warm")


@pytest.fixture(scope="module")
def names() -> Names:
    return Names()


@pytest.fixture(scope="module")
def versions_stack(redis_base: str, demo_model_dir: Path, other_model_dir: Path,
                   names: Names, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack("sqlite", redis_base, None, tmp_path_factory.mktemp("versions"),
                       redis_db=VERSIONS_REDIS_DB)
    client = stack.client()
    client.register_model(names.versioned, demo_model_dir)
    client.register_model(names.ephemeral, demo_model_dir, keep_alive="0")
    client.register_model(names.brief, demo_model_dir, keep_alive="1s")
    client.register_model(names.warm, other_model_dir)
    client.register_model(names.first, demo_model_dir)
    client.register_model(names.second, other_model_dir)
    stack.start_worker(f"versions-{uuid.uuid4().hex[:6]}@test", "--model", names.versioned,
                       "--model", names.ephemeral, "--model", names.warm,
                       "--model", names.brief,
                       "--concurrency", "2")
    # Room for one demo model and not two: each load of the other evicts the first.
    [version] = client.model_versions(names.first)
    pool_gb = 1.5 * version.size_bytes / 2**30
    stack.start_worker(f"pooled-{uuid.uuid4().hex[:6]}@test", "--model", names.first,
                       "--model", names.second, "--concurrency", "1",
                       env={"LLMOS_MODEL_POOL_GB": f"{pool_gb:.12f}"})
    yield stack
    stack.stop()


def _worker_serving(stack: Stack, model: str) -> WorkerPublic:
    [worker] = [w for w in stack.client().workers() if w.models and model in w.models]
    return worker


def _generate(stack: Stack, model: str) -> JobPublic:
    client = stack.client()
    [done] = client.wait([client.generate(model=model, prompt=PROMPT,
                                          max_tokens=MAX_TOKENS).id], timeout_s=300)
    assert done.status == JobStatus.succeeded, done.error_message
    return done


def test_registering_new_content_adds_a_version_that_the_name_then_serves(
        versions_stack: Stack, names: Names, demo_model_dir: Path, other_model_dir: Path
) -> None:
    client = versions_stack.client()
    name = names.versioned
    second = client.register_model(name, other_model_dir)
    assert (second.current_version, second.registered) == (2, "new")
    listed = client.model_versions(name)
    assert [(v.version, v.path, v.current) for v in listed] == [
        (1, str(demo_model_dir.resolve()), False), (2, str(other_model_dir.resolve()), True)]
    assert listed[0].content_hash != listed[1].content_hash

    # The same content as the current version: nothing registered.
    again = client.register_model(name, other_model_dir)
    assert (again.current_version, again.registered) == (2, "unchanged")
    # The content of an older version: refused, naming the version to pin.
    with pytest.raises(InvalidRequest, match=rf"{name}@1, an older version"):
        client.register_model(name, demo_model_dir)
    assert len(client.model_versions(name)) == 2

    current, pinned = _generate(versions_stack, name), _generate(versions_stack, f"{name}@1")
    assert (current.model, current.model_version) == (name, 2)
    assert (pinned.model, pinned.model_version) == (name, 1)
    assert current.result is not None and pinned.result is not None
    assert current.result["text"] == reference(str(other_model_dir))
    assert pinned.result["text"] == reference(str(demo_model_dir))
    assert current.result["text"] != pinned.result["text"]  # the two versions differ
    # Both went through the name's one queue, to the worker loading each version.
    assert current.queue == pinned.queue == f"lang.{name}"
    loaded = set(_worker_serving(versions_stack, name).loaded)
    assert {f"{name}@1", f"{name}@2"} <= loaded


def test_a_version_that_does_not_exist_is_refused_at_submission(
        versions_stack: Stack, names: Names) -> None:
    client = versions_stack.client()
    with pytest.raises(InvalidRequest, match=r"has no version 9 \(versions: 1"):
        client.generate(model=f"{names.warm}@9", prompt="x", max_tokens=2)
    with pytest.raises(InvalidRequest, match="is not registered"):
        client.generate(model=f"{_name('absent')}@1", prompt="x", max_tokens=2)


def test_turns_and_snapshots_record_the_version_that_served_them(
        versions_stack: Stack, names: Names, other_model_dir: Path, demo_model_dir: Path
) -> None:
    client = versions_stack.client()
    name = names.versioned
    if len(client.model_versions(name)) < 2:
        client.register_model(name, other_model_dir)
    following = client.create_mindspace(model=name)
    pinned = client.create_mindspace(model=f"{name}@1")
    [turn] = client.wait([client.chat(following.id, "hello", max_tokens=4).id], timeout_s=300)
    [old] = client.wait([client.chat(pinned.id, "hello", max_tokens=4).id], timeout_s=300)
    assert turn.status == old.status == JobStatus.succeeded
    assert (turn.model, turn.model_version) == (name, 2)
    assert (old.model, old.model_version) == (name, 1)
    assert client.mindspace(following.id).model_version == 2
    assert client.mindspace(pinned.id).model_version == 1
    # The pinned mindspace is placed on the worker that served it, like any other: its
    # next turn goes to that worker's direct queue, and is served by version 1 again.
    assert client.mindspace(pinned.id).worker == old.worker is not None
    [later] = client.wait([client.chat(pinned.id, "again", max_tokens=4).id], timeout_s=300)
    assert later.status == JobStatus.succeeded and later.model_version == 1
    assert later.queue == f"w.{old.worker}"
    snapshot = client.snapshot(following.id, name="after one turn")
    assert snapshot.model_version == 2
    assert [s.model_version for s in client.snapshots(following.id)] == [2]
    assert client.snapshot(pinned.id).model_version == 1


def test_a_pool_with_room_for_one_model_alternates_two_by_eviction(
        versions_stack: Stack, names: Names, demo_model_dir: Path, other_model_dir: Path
) -> None:
    expected = {names.first: reference(str(demo_model_dir)),
                names.second: reference(str(other_model_dir))}
    for model in [names.first, names.second] * 3:
        done = _generate(versions_stack, model)
        assert done.result is not None and done.result["text"] == expected[model]
        # The pool recorded what it holds before the job ran: only this model.
        assert _worker_serving(versions_stack, model).loaded == [f"{model}@1"]


def test_keep_alive_zero_unloads_the_model_after_each_job(
        versions_stack: Stack, names: Names, demo_model_dir: Path) -> None:
    done = _generate(versions_stack, names.ephemeral)
    assert done.result is not None and done.result["text"] == reference(str(demo_model_dir))
    worker = _worker_serving(versions_stack, names.ephemeral)
    assert f"{names.ephemeral}@1" not in worker.loaded
    until(lambda: f"{names.ephemeral}@1" not in
          _worker_serving(versions_stack, names.ephemeral).engines,
          "the heartbeat no longer reports the unloaded model")


def test_a_timed_keep_alive_unloads_an_idle_model_in_the_heartbeat(
        versions_stack: Stack, names: Names, demo_model_dir: Path) -> None:
    done = _generate(versions_stack, names.brief)
    assert done.result is not None and done.result["text"] == reference(str(demo_model_dir))
    until(lambda: f"{names.brief}@1" not in _worker_serving(versions_stack, names.brief).loaded,
          "the worker unloaded the model idle past its keep_alive of 1 s")
    # Loaded again by the next job, with the same text.
    again = _generate(versions_stack, names.brief)
    assert again.result == done.result


def test_warmup_runs_a_real_generation_and_reports_its_time(
        versions_stack: Stack, names: Names, other_model_dir: Path) -> None:
    client = versions_stack.client()
    job = client.model_op(names.warm, "warmup")
    [done] = client.wait([job.id], timeout_s=300)
    assert done.status == JobStatus.succeeded, done.error_message
    result = done.model_op_result()
    assert result.model_version == done.model_version == 1 and result.loaded
    assert result.warmup_seconds is not None and 0 < result.warmup_seconds <= result.seconds
    # The engine computed it: one request, as many tokens as a solo run of its prompt.
    solo = solo_run(str(other_model_dir), WARMUP_PROMPT, WARMUP_TOKENS)
    assert result.warmup_tokens == solo.completion_tokens >= 1
    key = f"{names.warm}@1"

    def warmed() -> dict[str, float] | None:
        """The heartbeat's figures of the version once one reports the warm-up: a beat
        taken while the op ran may be written after the op ended."""
        stats = _worker_serving(versions_stack, names.warm).engines.get(key, {})
        return stats if stats.get("warmups") else None

    stats = until(warmed, "the heartbeat reports the warmed model")
    assert stats["requests"] == 1 and stats["warmups"] == 1
    assert stats["size_bytes"] == client.model_versions(names.warm)[0].size_bytes


def test_a_model_too_large_for_the_pool_fails_its_job_clearly(
        versions_stack: Stack, demo_model_dir: Path) -> None:
    client = versions_stack.client()
    name = _name("too-big")
    client.register_model(name, demo_model_dir)
    [version] = client.model_versions(name)
    versions_stack.start_worker(f"small-{uuid.uuid4().hex[:6]}@test", "--model", name,
                                env={"LLMOS_MODEL_POOL_GB":
                                     f"{0.5 * version.size_bytes / 2**30:.12f}"})
    [done] = client.wait([client.generate(model=name, prompt="x", max_tokens=2).id],
                         timeout_s=300)
    assert done.status == JobStatus.failed
    assert done.error_message is not None
    assert "more than the whole model pool (LLMOS_MODEL_POOL_GB" in done.error_message
