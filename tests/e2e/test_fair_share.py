"""The fair-share dispatcher end to end: real workers, a real control process, the
no-op engine. Orders are read from the job rows (finished_at, started_at), shares from
their recorded usage; each outcome is one the dispatcher's absence would change.

The stack is private (its own Redis server and PostgreSQL database): the tests stop and
start its control process, and a worker's ``LLMOS_NOOP_GATE`` holds every request until
the test opens it, so that the held backlog is built before anything ends."""

from __future__ import annotations

import random
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from broker_config import MAX_PRIORITY, language_queue
from llmos_jobs import broker_view
from llmos_jobs.broker import create_app
from llmos_jobs.db import registry
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.db.tenant_policy import put_policy
from llmos_jobs.db.tenant_tables import TenantPolicy
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import NoLiveWorkerWarning
from llmos_jobs.services.dispatcher import Dispatcher
from llmos_jobs.services.reconcile import reconcile_jobs
from llmos_jobs.states import WorkerState
from schemas.common import JobStatus
from tests.support.faults import private_pg_stack
from tests.support.stack import Stack
from tests.support.waiting import until

pytestmark = [pytest.mark.slow]



@pytest.fixture(scope="module")
def fair(postgres_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with private_pg_stack(postgres_admin, tmp_path_factory.mktemp("fair")) as stack:
        stack.start_control(wait=True)
        yield stack


@contextmanager
def _control_replaced(stack: Stack, env: dict[str, str] | None) -> Iterator[None]:
    """The stack's control process stopped, and one with ``env`` started (None: none)
    for the block; the default one is back after it."""
    [control] = [p for p in stack.workers if "control" in p.args and p.poll() is None]
    stack.stop_worker(control)
    replacement = stack.start_control(env=env, wait=True) if env is not None else None
    try:
        yield
    finally:
        if replacement is not None:
            stack.stop_worker(replacement)
        stack.start_control(wait=True)


def _model(stack: Stack) -> str:
    name = f"fair-{uuid.uuid4().hex[:8]}"
    stack.client().register_model(name, stack.data_dir / name, engine="noop")
    return name


def _worker(stack: Stack, model: str, gate: Path, *, concurrency: int, delay_ms: int = 5
            ) -> subprocess.Popen[bytes]:
    return stack.start_worker(f"{model}@test", "--model", model, "--concurrency", str(concurrency),
                       env={"LLMOS_NOOP_GATE": str(gate), "LLMOS_NOOP_DELAY_MS": str(delay_ms)})


def _requests(model: str, n: int, tag: str) -> list[dict[str, object]]:
    # Equal prompts and lengths: every job costs the same service.
    return [{"model": model, "prompt": f"{tag} request number {i}", "max_tokens": 4}
            for i in range(n)]


def _rows(stack: Stack, model: str) -> list[Job]:
    with session_scope(stack.database) as session:
        return list(session.exec(select(Job).where(Job.model == model)))


def _held(stack: Stack, model: str) -> int:
    return sum(1 for j in _rows(stack, model)
               if j.status == JobStatus.queued and j.held_since is not None)


def _finish_order(jobs: list[Job]) -> list[Job]:
    assert all(j.status == JobStatus.succeeded for j in jobs), {j.status for j in jobs}
    return sorted(jobs, key=lambda j: (j.finished_at, j.started_at))


def test_a_small_tenant_is_served_within_a_round_of_a_big_backlog(fair: Stack) -> None:
    model, gate = _model(fair), fair.data_dir / f"gate-{uuid.uuid4().hex}"
    _worker(fair, model, gate, concurrency=4)
    big, small = f"big-{uuid.uuid4().hex[:6]}", f"small-{uuid.uuid4().hex[:6]}"
    a = fair.client(big).generate_many(_requests(model, 1000, "a"), priority="default")
    b = fair.client(small).generate_many(_requests(model, 10, "b"), priority="default")
    assert not a.errors and not b.errors
    # The broker holds only the bound (2 per slot); the rest wait in the database.
    assert fair.waiting(language_queue(model)) <= 8
    gate.touch()
    fair.client(big).wait([j.id for j in a.jobs], timeout_s=600)
    order = _finish_order(_rows(fair, model))
    a_100th = [i for i, j in enumerate(order) if j.tenant == big][99]
    last_b = max(i for i, j in enumerate(order) if j.tenant == small)
    assert last_b < a_100th, (last_b, a_100th)


def test_weights_two_to_one_share_the_service_two_to_one(fair: Stack) -> None:
    model, gate = _model(fair), fair.data_dir / f"gate-{uuid.uuid4().hex}"
    _worker(fair, model, gate, concurrency=4)
    heavy, light = f"heavy-{uuid.uuid4().hex[:6]}", f"light-{uuid.uuid4().hex[:6]}"
    with session_scope(fair.database) as session:
        put_policy(session=session, policy=TenantPolicy(tenant=heavy, weight=2.0))
    a = fair.client(heavy).generate_many(_requests(model, 300, "h"), priority="default")
    b = fair.client(light).generate_many(_requests(model, 300, "l"), priority="default")
    gate.touch()
    fair.client(heavy).wait([j.id for j in a.jobs], timeout_s=600)
    fair.client(light).wait([j.id for j in b.jobs], timeout_s=600)
    order = _finish_order(_rows(fair, model))
    # A window where both were backlogged: past the jobs released before both were
    # held, well before the heavy tenant's backlog runs out (2/3 of 600 = 400).
    window = order[30:330]
    service = {heavy: 0, light: 0}
    for job in window:
        service[job.tenant] += (job.prompt_tokens or 0) + 2 * (job.completion_tokens or 0)
    share = service[heavy] / service[light]
    print(f"measured share at weights 2:1: {share:.3f}")
    assert abs(share - 2.0) <= 0.2, (share, service)


def test_an_old_low_priority_job_is_released_while_higher_ones_keep_arriving(
        fair: Stack) -> None:
    model, gate = _model(fair), fair.data_dir / f"gate-{uuid.uuid4().hex}"
    gate.touch()
    # 5 jobs a second are served, 10 a second of priority 1 arrive after the priority-9
    # job: without aging it would wait for all of them, forever while they keep coming.
    worker = _worker(fair, model, gate, concurrency=1, delay_ms=200)
    client = fair.client(f"aging-{uuid.uuid4().hex[:6]}")
    arrived: list[str] = []
    with _control_replaced(fair, {"LLMOS_DISPATCH_AGING_S": "1"}):
        client.generate_many(_requests(model, 2, "filler"), priority=1)
        low = client.generate(model=model, prompt="the lowest priority", max_tokens=4,
                              priority=MAX_PRIORITY)

        def low_started() -> bool:
            arrived.extend(j.id for j in client.generate_many(
                _requests(model, 2, "more"), priority=1).jobs)
            return client.job(low.id).started_at is not None

        until(low_started, "the priority-9 job started", poll_s=0.2)
        started = client.job(low.id).started_at
        assert started is not None
        rows = {j.id: j for j in _rows(fair, model)}
        fair.stop_worker(worker)
    # Priority-1 jobs that arrived after it were waiting still when it started.
    overtaken = [i for i in arrived
                 if rows[i].started_at is None or rows[i].started_at > started]
    assert overtaken, "the priority-9 job started only once no priority-1 job was waiting"


def test_the_nearer_deadline_is_released_first(fair: Stack) -> None:
    model, gate = _model(fair), fair.data_dir / f"gate-{uuid.uuid4().hex}"
    # One slot: jobs start one at a time, in the order they are released.
    _worker(fair, model, gate, concurrency=1)
    filler = fair.client("filler").generate_many(_requests(model, 2, "f"), priority="default")
    # Submitted first, and its tenant's counter level with the other's: without the
    # deadlines it would start first.
    later = fair.client(f"later-{uuid.uuid4().hex[:6]}").generate(
        model=model, prompt="deadline far", max_tokens=4)
    sooner = fair.client(f"sooner-{uuid.uuid4().hex[:6]}").generate(
        model=model, prompt="deadline near", max_tokens=4)
    assert _held(fair, model) == 2
    now = utcnow()
    with session_scope(fair.database) as session:
        for job_id, deadline in ((later.id, now + timedelta(hours=2)),
                                 (sooner.id, now + timedelta(hours=1))):
            session.execute(update(Job).where(col(Job.id) == job_id).values(deadline=deadline))
    gate.touch()
    ids = [j.id for j in filler.jobs] + [later.id, sooner.id]
    until(lambda: all(j.status == JobStatus.succeeded for j in _rows(fair, model)),
          "every job ended")
    rows = {j.id: j for j in _rows(fair, model)}
    assert set(rows) == set(ids)
    assert rows[sooner.id].started_at < rows[later.id].started_at  # type: ignore[operator]


def test_held_jobs_wait_for_a_stopped_control_process_and_lost_messages_come_back(
        fair: Stack) -> None:
    model, gate = _model(fair), fair.data_dir / f"gate-{uuid.uuid4().hex}"
    client = fair.client(f"held-{uuid.uuid4().hex[:6]}")
    with _control_replaced(fair, None):
        # No worker yet: the idle bound (4) is released at once, the rest is held.
        with pytest.warns(NoLiveWorkerWarning):
            jobs = client.generate_many(_requests(model, 10, "x"), priority="default").jobs
        queue = language_queue(model)
        released = [j for j in _rows(fair, model) if j.held_since is None]
        assert len(released) == 4 and _held(fair, model) == 6
        assert fair.waiting(queue) == 4
        # The broker loses the released messages: the reconciler sends those four again,
        # and leaves the held six to the dispatcher.
        r = fair.redis()
        for step in range(MAX_PRIORITY + 1):
            r.delete(queue if step == 0 else f"{queue}:{step}")
        resent = reconcile_jobs(create_app(fair.broker_url), grace_s=0, database=fair.database)
        assert resent == 4
        assert fair.waiting(queue) == 4 and _held(fair, model) == 6
        gate.touch()
        _worker(fair, model, gate, concurrency=2)
        until(lambda: sum(j.status == JobStatus.succeeded for j in _rows(fair, model)) >= 4,
              "the released jobs ran")
        # Nothing releases the others while no control process runs.
        assert _held(fair, model) == 6
    done = client.wait([j.id for j in jobs], timeout_s=300)
    assert all(j.status == JobStatus.succeeded for j in done)


def test_held_jobs_are_released_by_priority_then_in_submission_order(fair: Stack) -> None:
    model, gate = _model(fair), fair.data_dir / f"gate-{uuid.uuid4().hex}"
    # One slot: jobs start one at a time, in the order they are released.
    _worker(fair, model, gate, concurrency=1)
    client = fair.client(f"order-{uuid.uuid4().hex[:6]}")
    filler = client.generate_many(_requests(model, 2, "filler"), priority="default").jobs
    rng = random.Random(13)
    jobs = [client.generate(model=model, prompt=f"job {i}", max_tokens=1,
                            priority=rng.choice([0, 1, 2, 5, 5, 8, 9])) for i in range(60)]
    assert _held(fair, model) == len(jobs)
    gate.touch()
    done = client.wait([j.id for j in jobs + filler], timeout_s=300)
    ran = {j.id: j for j in done}
    order = sorted(jobs, key=lambda j: ran[j.id].started_at)  # type: ignore[arg-type, return-value]
    submitted = {j.id: i for i, j in enumerate(jobs)}
    keys = [(j.priority, submitted[j.id]) for j in order]
    assert keys == sorted(keys)


def test_racing_dispatchers_release_each_job_once(fair: Stack) -> None:
    """Two dispatchers in this process and the control process's own, on one backlog:
    the broker ends up with exactly one message per job, its current message id."""
    model = _model(fair)
    queue = language_queue(model)
    client = fair.client(f"race-{uuid.uuid4().hex[:6]}")
    with pytest.warns(NoLiveWorkerWarning):
        jobs = client.generate_many(_requests(model, 300, "r"), priority="default").jobs
    with session_scope(fair.database) as session:
        assert _held(fair, model) == 300 - 4  # the idle bound went at once
        # Room for every job: a live worker (its heartbeat row alone) with 1000 slots.
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=f"{model}@ghost", host="ghost", pid=1, state=WorkerState.alive,
            pool="threads", concurrency=1000, engine_device="cpu", models=[model],
            queues=[queue]))
    app = create_app(fair.broker_url)
    racers = [Dispatcher(fair.settings(), fair.database, app) for _ in range(2)]
    go = threading.Barrier(len(racers))

    def race(dispatcher: Dispatcher) -> None:
        go.wait()
        while _held(fair, model):
            dispatcher.run_pass()

    threads = [threading.Thread(target=race, args=(d,)) for d in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    # The control process's own dispatcher may still be sending what it released.
    until(lambda: fair.waiting(queue) >= len(jobs), "every released job's message sent")
    held = broker_view.held_messages(app, [queue])
    assert held is not None
    current = {j.task_id for j in _rows(fair, model)}
    assert len(current) == len(jobs)
    assert held.waiting == current
    assert fair.waiting(queue) == len(jobs)  # no id twice
    with session_scope(fair.database) as session:
        session.execute(update(WorkerRecord).where(col(WorkerRecord.name) == f"{model}@ghost")
                        .values(state=WorkerState.stopped))
