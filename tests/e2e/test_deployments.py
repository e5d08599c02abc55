"""Deployments and their updates through real worker processes and a real control
process: a steady stream of jobs across a rolling update and a blue-green update
between demo models whose outputs differ (seeds 0, 1 and 2: checkpoints of one model,
so the rolling update loads them in place), and an update to a broken model directory
that rolls back. Every text is compared with a solo greedy run of the version the job
records, on the transformers engine in this process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from sqlmodel import col, select

from llmos_jobs.db.deployment_tables import DeploymentPublic
from llmos_jobs.db.tables import Job
from llmos_jobs.errors import NoLiveWorkerWarning
from llmos_jobs.states import DeploymentState
from schemas.common import JobKind, JobStatus
from schemas.model import ModelOp, ModelOpRequest, ModelOpResult
from tests.support.stack import Stack, make_stack
from tests.support.waiting import until
from workers.engines.base import EngineRequest, EngineSampling
from workers.engines.transformers import TransformersEngine

# The Redis database of this module's broker.
DEPLOY_REDIS_DB = 5
PROMPT = "the scheduler hands the queue a job"
MAX_TOKENS = 6
STREAM_EVERY_S = 0.05
# The kill test's stream. What it checks is that the survivors finish the update and
# lose nothing; its length followed the backlog a faster stream leaves. In one
# clean-clone run the two replicas served 2.6 jobs/s under the suite's load, against 20
# submitted per second: the update waited for the old version's queue to empty, and the
# last of its 1,374 jobs ended 9 minutes after the first, near the per-test hang guard.
KILL_STREAM_EVERY_S = 0.5


@cache
def reference(path: str) -> str:
    """A solo greedy run of the model at ``path``."""
    engine = TransformersEngine("reference", path)
    engine.load()
    try:
        [done] = engine.generate([EngineRequest(EngineSampling(MAX_TOKENS), prompt=PROMPT)])
    finally:
        engine.unload()
    return done.text


@pytest.fixture(scope="module")
def seeded_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    from llmos_jobs.demo_model import create_demo_model

    root = tmp_path_factory.mktemp("deploy-models")
    return {seed: create_demo_model(root / f"demo-seed{seed}", dtype="float64", seed=seed)
            for seed in (1, 2)}


@pytest.fixture(scope="module")
def deploy_stack(redis_base: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Stack]:
    stack = make_stack("sqlite", redis_base, None, tmp_path_factory.mktemp("deploy"),
                       redis_db=DEPLOY_REDIS_DB)
    stack.client()  # the database, migrated
    stack.control = stack.start_control(wait=True)
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def _own_workers(deploy_stack: Stack) -> Iterator[None]:
    """The workers a test starts stop when it ends: idle, they would share the two
    cores with the next test's."""
    before = len(deploy_stack.workers)
    yield
    for process in deploy_stack.workers[before:]:
        deploy_stack.stop_worker(process)


def _workers(stack: Stack, model: str, count: int) -> dict[str, subprocess.Popen[bytes]]:
    started = {}
    for _ in range(count):
        name = f"replica-{uuid.uuid4().hex[:6]}@test"
        started[name] = stack.start_worker(name, "--model", model, "--concurrency", "2")
    return started


def _ready(stack: Stack, model: str, version: int) -> DeploymentPublic:
    def ready() -> DeploymentPublic | None:
        shown = stack.client().deployment(model)
        done = (shown.state == DeploymentState.ready and shown.version == version
                and shown.current_version == version and shown.progress >= 1.0)
        return shown if done else None

    return until(ready, f"{model} deployed at version {version}", timeout_s=600, poll_s=0.5)


class Stream:
    """Submits a job every ``every_s`` (~50 ms) until stopped."""

    def __init__(self, stack: Stack, model: str, every_s: float = STREAM_EVERY_S) -> None:
        self.client, self.model, self.every_s = stack.client(), model, every_s
        self.ids: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with warnings.catch_warnings():
                    # A worker loading a model may beat late on a loaded machine: the
                    # warning then says nothing about the outcome, which is checked.
                    warnings.simplefilter("ignore", NoLiveWorkerWarning)
                    self.ids.append(self.client.generate(model=self.model, prompt=PROMPT,
                                                         max_tokens=MAX_TOKENS).id)
            except Exception as exc:  # the test fails on it, naming it
                self.errors.append(exc)
                return

    def count(self) -> int:
        assert not self.errors, self.errors
        return len(self.ids)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _check_texts(stack: Stack, ids: list[str], paths: dict[int, Path]) -> dict[int, int]:
    done = stack.client().wait(ids, timeout_s=600)
    failed = [(j.id, j.error_message) for j in done if j.status != JobStatus.succeeded]
    assert failed == []
    served: dict[int, int] = {}
    for job in done:
        assert job.model_version is not None and job.result is not None
        assert job.result["text"] == reference(str(paths[job.model_version])), job.id
        served[job.model_version] = served.get(job.model_version, 0) + 1
    return served


def _replacing_loads(stack: Stack, model: str) -> list[tuple[ModelOpRequest, ModelOpResult]]:
    """The warm-up ops of replicas that left one version for another, with their
    results, oldest first."""
    with stack.database.session() as session:
        ops = session.exec(select(Job).where(col(Job.kind) == JobKind.model_op,
                                             col(Job.model) == model)
                           .order_by(col(Job.created_at))).all()
        loads = []
        for op in ops:
            request = ModelOpRequest.model_validate(op.payload)
            if request.op == ModelOp.warmup and request.replaces is not None:
                assert op.status == JobStatus.succeeded and op.result is not None, op.id
                loads.append((request, ModelOpResult.model_validate(op.result)))
    return loads


def test_rolling_then_blue_green_updates_lose_and_fail_no_job(
        deploy_stack: Stack, demo_model_dir: Path, seeded_models: dict[int, Path]) -> None:
    client = deploy_stack.client()
    name = f"dep-{uuid.uuid4().hex[:8]}"
    client.register_model(name, demo_model_dir)
    _workers(deploy_stack, name, 2)
    client.deploy_model(name, replicas=2)
    placed = _ready(deploy_stack, name, 1)
    assert len({r.worker for r in placed.placed}) == 2
    paths = {1: demo_model_dir, 2: seeded_models[1], 3: seeded_models[2]}
    assert len({reference(str(p)) for p in paths.values()}) == 3  # the versions differ

    with Stream(deploy_stack, name) as stream:
        until(lambda: stream.count() >= 5, "jobs before the update", timeout_s=120)
        client.update_model(name, seeded_models[1], strategy="rolling")
        _ready(deploy_stack, name, 2)
        after_rolling = len(stream.ids)
        # Each replica's engine took version 2's weights in place of version 1's.
        loads = _replacing_loads(deploy_stack, name)
        assert [(r.replaces, done.model_version, done.in_place, done.reload_reason)
                for r, done in loads] == [(1, 2, True, None)] * 2
        assert {done.worker for _, done in loads} == {r.worker for r in placed.placed}
        # Through the CLI: `--wait` returns once the update ended.
        subprocess.run([sys.executable, "-m", "llmos_jobs.cli.main", "model", "update", name,
                        str(seeded_models[2]), "--strategy", "blue-green", "--wait"],
                       env=deploy_stack.env, check=True, timeout=900)
        after_blue_green = len(stream.ids)
        assert client.deployment(name).current_version == 3
        until(lambda: stream.count() >= after_blue_green + 5, "jobs after the update",
              timeout_s=120)
    served = _check_texts(deploy_stack, stream.ids, paths)
    assert set(served) == {1, 2, 3}
    # Submitted after each update was ready: the new version served them.
    later = client.wait(stream.ids[after_blue_green + 1:], timeout_s=600)
    assert {j.model_version for j in later} == {3}
    assert all(j.queue == f"lang.{name}@3" for j in later)
    assert after_rolling < after_blue_green


def test_an_update_to_a_broken_directory_rolls_back_and_fails_no_job(
        deploy_stack: Stack, demo_model_dir: Path, tmp_path: Path) -> None:
    client = deploy_stack.client()
    name = f"dep-broken-{uuid.uuid4().hex[:8]}"
    client.register_model(name, demo_model_dir)
    # Two replicas: the first to leave version 1 tries version 2's weights in place.
    _workers(deploy_stack, name, 2)
    client.deploy_model(name, replicas=2)
    _ready(deploy_stack, name, 1)
    broken = tmp_path / "broken"
    shutil.copytree(demo_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    with Stream(deploy_stack, name) as stream:
        until(lambda: stream.count() >= 3, "jobs before the update", timeout_s=120)
        client.update_model(name, broken, strategy="rolling")

        def rolled_back() -> DeploymentPublic | None:
            shown = client.deployment(name)
            return shown if shown.reason and shown.state == DeploymentState.ready else None

        shown = until(rolled_back, "the update rolled back", timeout_s=600, poll_s=0.5)
        time.sleep(0)  # the stream keeps going a moment after the rollback
    assert shown.version == shown.current_version == 1
    assert shown.reason is not None and f"{name}@2 failed to load" in shown.reason
    # Same config and tokenizer: the engine tried the weights in place and kept its own.
    assert f"could not take the weights of {name}@2" in shown.reason
    assert f"still serves {name}@1" in shown.reason
    served = _check_texts(deploy_stack, stream.ids, {1: demo_model_dir})
    assert set(served) == {1}


def test_a_worker_killed_during_a_rolling_update_the_survivors_finish_it(
        deploy_stack: Stack, demo_model_dir: Path, seeded_models: dict[int, Path]) -> None:
    client = deploy_stack.client()
    name = f"dep-kill-{uuid.uuid4().hex[:8]}"
    client.register_model(name, demo_model_dir)
    processes = _workers(deploy_stack, name, 3)
    client.deploy_model(name, replicas=2)
    placed = {r.worker for r in _ready(deploy_stack, name, 1).placed}
    spare = set(processes) - placed
    with Stream(deploy_stack, name, every_s=KILL_STREAM_EVERY_S) as stream:
        until(lambda: stream.count() >= 3, "jobs before the update", timeout_s=120)
        client.update_model(name, seeded_models[1], strategy="rolling")

        def leaving() -> str | None:
            moving = [r.worker for r in client.deployment(name).placed
                      if r.state.value in ("draining", "loading")]
            return moving[0] if moving else None

        victim = until(leaving, "a replica leaving version 1", timeout_s=300, poll_s=0.1)
        os.killpg(processes[victim].pid, signal.SIGKILL)
        processes[victim].wait()
        shown = _ready(deploy_stack, name, 2)
        ready_at = stream.count()
        until(lambda: stream.count() >= ready_at + 3, "jobs after the update",
              timeout_s=120)
    assert victim not in {r.worker for r in shown.placed}
    assert spare <= {r.worker for r in shown.placed}
    served = _check_texts(deploy_stack, stream.ids, {1: demo_model_dir, 2: seeded_models[1]})
    assert set(served) == {1, 2}
