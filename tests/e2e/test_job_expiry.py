"""Deadlines end to end: a job that cannot start before its deadline ends `expired`
without running, on the session stack's real control process and a real worker.

The expiry is made certain, not raced: the model's only worker slot is held by a job
that ends when the test opens its gate (LLMOS_NOOP_GATE), so every job queued behind
it is still waiting when its deadline passes, however slow the machine. The engine's
own log (LLMOS_NOOP_LOG) is the independent record of what it computed: an expired
job is never in it, and the jobs queued after it are."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import col, select, update

from llmos_jobs.client import LlmosClient
from llmos_jobs.db import expiry as expiry_rows
from llmos_jobs.db import graphs as graph_rows
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.jobs import ClaimOutcome, JobCreate
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import GraphRole, Job, JobPublic
from llmos_jobs.services import batch_files, batches, deadlines
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings
from schemas.common import JobKind, JobStatus
from tests.support.api_server import ApiServer
from tests.support.api_server import tenant as new_tenant
from tests.support.cli import llmos
from tests.support.faults import executions
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.support.stack import Stack, database_at
from tests.support.waiting import HANG_GUARD_S, until, wait_for_log
from tests.support.webhook_receiver import Receiver, tenant_receiver

# Far enough ahead to be in the future when the job is accepted, on any machine; the
# held slot, not this number, decides that it passes before the job could start.
SOON = timedelta(seconds=2)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Held:
    model: str
    log: Path  # what the engine computed
    gate: Path  # the holder's work ends once this exists
    holder: JobPublic


@contextmanager
def held_slot(stack: Stack, client: LlmosClient) -> Iterator[Held]:
    """A model of its own whose only worker slot runs a job that ends when the test
    touches ``gate``."""
    model = f"held-{uuid.uuid4().hex[:8]}"
    client.register_model(model, stack.data_dir / model, engine="noop")
    log, gate = stack.data_dir / f"{model}.computed", stack.data_dir / f"{model}.gate"
    worker = stack.start_worker(f"{model}-{stack.name}@test", "--model", model,
                                "--concurrency", "1",
                                env={"LLMOS_NOOP_LOG": str(log), "LLMOS_NOOP_GATE": str(gate)})
    try:
        holder = client.generate(model=model, prompt="holder", max_tokens=1)
        wait_for_log(log, "holder")  # it holds the slot from now on
        yield Held(model, log, gate, holder)
    finally:
        gate.touch()
        stack.stop_worker(worker)


def status_of(client: LlmosClient, job_id: str) -> JobStatus:
    return client.job(job_id).status


def wait_status(client: LlmosClient, job_id: str, status: JobStatus) -> JobPublic:
    def reached() -> JobPublic | None:
        job = client.job(job_id)
        assert not job.status.is_final or job.status == status, job
        return job if job.status == status else None

    return until(reached, f"job {job_id} became {status.value}")


def computed(held: Held) -> Counter[str]:
    return Counter(e.prompt for e in executions(held.log))


@pytest.fixture
def tenant() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(stack: Stack, tenant: str) -> LlmosClient:
    return stack.webhook_client(tenant)


@pytest.fixture
def receiver(stack: Stack, tenant: str) -> Iterator[Receiver]:
    with tenant_receiver(stack.database, tenant) as server:
        yield server


def test_a_job_that_cannot_start_in_time_expires_unrun_and_says_so(
        stack: Stack, client: LlmosClient, receiver: Receiver) -> None:
    with held_slot(stack, client) as held:
        late = client.generate(model=held.model, prompt="too late", max_tokens=1,
                               deadline=utcnow() + SOON, webhook=receiver.url)
        assert late.deadline is not None and late.status == JobStatus.queued
        expired = wait_status(client, late.id, JobStatus.expired)
        # Only now may the slot free up.
        assert status_of(client, held.holder.id) == JobStatus.running
        held.gate.touch()
        # A job queued after it runs: the worker has taken (and dropped) its message.
        after = client.generate(model=held.model, prompt="after it", max_tokens=1)
        done = client.wait([held.holder.id, after.id], timeout_s=HANG_GUARD_S)
        assert [j.status for j in done] == [JobStatus.succeeded] * 2
        assert computed(held) == Counter({"holder": 1, "after it": 1})
    assert expired.started_at is None and expired.worker is None and expired.usage is None
    assert expired.error_type == "DeadlineExpired"
    assert "deadline" in (expired.error_message or "")
    assert expired.deadline == late.deadline
    [hook] = receiver.wait_for(1)
    assert hook.verified
    body = json.loads(hook.body)
    assert body["type"] == "job.expired"
    assert body["data"]["id"] == late.id and body["data"]["status"] == "expired"
    assert datetime.fromisoformat(body["data"]["deadline"]) == late.deadline


def test_a_deadline_met_runs_and_is_recorded(stack: Stack, client: LlmosClient,
                                             tenant: str) -> None:
    before = utcnow()
    by_class = client.generate(model="echo", prompt="in time", max_tokens=2, sla="interactive")
    # An absolute deadline in another zone is the same instant, stored as given.
    moment = (utcnow() + timedelta(hours=1)).replace(microsecond=0).astimezone(
        timezone(timedelta(hours=2)))
    absolute = client.generate(model="echo", prompt="also in time", max_tokens=2,
                               deadline=moment.isoformat())
    done = client.wait([by_class.id, absolute.id], timeout_s=HANG_GUARD_S)
    assert [j.status for j in done] == [JobStatus.succeeded] * 2
    interactive = timedelta(seconds=stack.settings().sla_interactive_s)
    assert done[0].deadline is not None
    assert before <= done[0].deadline - interactive <= done[0].created_at
    assert done[1].deadline == moment
    # The command line shows it too, in --json.
    env = {**stack.env, "LLMOS_TENANT": tenant}
    out = llmos("submit", "from the shell", "--model", "echo", "--max-tokens", "1",
                "--deadline", moment.isoformat(), "--wait", "--json", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["status"] == "succeeded"
    assert datetime.fromisoformat(shown["deadline"]) == moment
    refused = llmos("submit", "x", "--model", "echo", "--sla", "whenever", env=env)
    assert refused.returncode == 1 and "interactive" in refused.stderr


def test_an_expired_turn_lets_the_next_turn_of_its_mindspace_run(
        stack: Stack, client: LlmosClient) -> None:
    with held_slot(stack, client) as held:
        mindspace = client.create_mindspace(model=held.model)
        # A deadline far off, passed by hand once the third turn is seen waiting: how
        # long the two submissions take cannot let it pass before.
        second = client.chat(mindspace.id, "second", deadline=utcnow() + timedelta(hours=1))
        third = client.chat(mindspace.id, "third")
        assert client.job(third.id).status == JobStatus.waiting
        with session_scope(stack.database) as session:
            session.execute(update(Job).where(col(Job.id) == second.id)
                            .values(deadline=utcnow() - timedelta(seconds=1)))
            session.commit()
        wait_status(client, second.id, JobStatus.expired)
        # Released by the expiry alone: nothing else of the mindspace has ended.
        wait_status(client, third.id, JobStatus.queued)
        assert status_of(client, held.holder.id) == JobStatus.running
        held.gate.touch()
        [done] = client.wait([third.id], timeout_s=HANG_GUARD_S)
        assert done.status == JobStatus.succeeded
        assert computed(held) == Counter({"holder": 1, "third": 1})


def test_an_expired_batch_line_is_in_the_error_file_and_the_rest_succeed(
        stack: Stack, client: LlmosClient, tenant: str) -> None:
    with held_slot(stack, client) as held:
        def line(custom_id: str, text: str, **extra: str) -> str:
            return json.dumps({"custom_id": custom_id, "method": "POST",
                               "url": "/v1/chat/completions",
                               "body": {"model": held.model, "max_tokens": 1,
                                        "messages": [{"role": "user", "content": text}],
                                        **extra}})

        content = "\n".join([
            line("late", "line late", deadline=(utcnow() + SOON).isoformat()),
            line("a", "line a"), line("b", "line b")]).encode()
        uploaded = client.upload_file(filename="in.jsonl", content=content)
        batch = client.create_batch(input_file_id=uploaded.id)

        def jobs_of_batch() -> dict[str, Job]:
            with session_scope(stack.database) as session:
                rows = session.exec(select(Job).where(Job.batch_id == batch.id)).all()
                return {str(j.custom_id): j for j in rows}

        def late_expired() -> bool:
            jobs = jobs_of_batch()
            return "late" in jobs and jobs["late"].status == JobStatus.expired

        until(late_expired, "the batch's late line expired")
        assert status_of(client, held.holder.id) == JobStatus.running
        held.gate.touch()

        def ended() -> batches.BatchObject | None:
            with session_scope(stack.database) as session:
                row = batches.get_batch(session, tenant, batch.id)
                public = batches.public(session, row)
            return public if public.status == "completed" else None

        done = until(ended, f"batch {batch.id} completed")
        assert computed(held) == Counter({"holder": 1, "line a": 1, "line b": 1})
    assert done.request_counts.total == 3
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    with session_scope(stack.database) as session:
        assert done.output_file_id and done.error_file_id
        outputs = batch_files.get_file(session, tenant, done.output_file_id).content
        errors = batch_files.get_file(session, tenant, done.error_file_id).content
    assert sorted(json.loads(x)["custom_id"] for x in outputs.splitlines()) == ["a", "b"]
    [error] = [json.loads(x) for x in errors.splitlines()]
    assert error["custom_id"] == "late" and error["response"] is None
    assert error["error"]["code"] == "job_expired"
    assert "deadline" in error["error"]["message"]


def test_over_http_a_deadline_is_asked_for_and_an_expired_completion_answers_504(
        stack: Stack, client: LlmosClient, api: ApiServer) -> None:
    with held_slot(stack, client) as held, api.http(api.key(new_tenant())) as http:
        refused = http.post("/v1/jobs", json={"model": "echo", "prompt": "p",
                                              "sla": "whenever"})
        assert refused.status_code == 400
        assert "standard" in refused.json()["error"]["message"]
        naive = http.post("/v1/jobs", json={"model": "echo", "prompt": "p",
                                            "deadline": "2030-01-01T00:00:00"})
        assert naive.status_code == 400 and naive.json()["error"]["param"] == "deadline"
        # Answered once the job ended: expired, never run.
        answer = http.post("/v1/chat/completions", json={
            "model": held.model, "messages": [{"role": "user", "content": "too late"}],
            "deadline": (utcnow() + SOON).isoformat()})
        assert answer.status_code == 504, answer.text
        error = answer.json()["error"]
        assert error["code"] == "deadline_expired" and error["type"] == "timeout_error"
        job_id = error["message"].split()[1]
        shown = http.get(f"/v1/jobs/{job_id}").json()
        assert shown["status"] == "expired" and shown["started_at"] is None
        assert shown["deadline"] is not None


@pytest.fixture(params=["sqlite", "postgres"])
def quiet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database of its own, migrated, that no control process sweeps: what the claim
    decides is then all that happens to its jobs."""
    admin: str | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'quiet.db'}"
    else:
        admin = request.getfixturevalue("postgres_admin")
        url = fresh_pg_database(admin)
    database = database_at(url)
    upgrade(database)
    yield database
    if admin is not None:
        drop_pg_database(admin, url)


def _queued(database: Database, deadline: datetime) -> Job:
    """A queued job row with ``deadline`` (no message: nothing consumes it)."""
    with session_scope(database) as session:
        return job_rows.create_job(session=session, job_in=JobCreate(
            tenant="quiet", kind=JobKind.generate, priority=5, model="m",
            payload={"prompt": "x"}, queue="lang.m", deadline=deadline))


def _claim(database: Database, job: Job) -> ClaimOutcome:
    with session_scope(database) as session:
        return job_rows.claim_job(session=session, job_id=job.id, message_id=job.task_id,
                                  worker="claimant@test", pid=1, max_attempts=3,
                                  claimant_dead=lambda _: False).outcome


def _rows(database: Database, *jobs: Job) -> list[Job]:
    with session_scope(database) as session:
        found = {j.id: j for j in session.exec(
            select(Job).where(col(Job.id).in_([j.id for j in jobs])))}
        session.expunge_all()
    return [found[j.id] for j in jobs]


def test_a_claim_past_the_deadline_expires_the_job_instead_of_taking_it(
        quiet: Database) -> None:
    overdue = _queued(quiet, utcnow() - timedelta(seconds=1))
    in_time = _queued(quiet, utcnow() + timedelta(hours=1))
    assert _claim(quiet, overdue) == ClaimOutcome.expired
    # Once expired it stays so: another delivery of its message finds it finished.
    assert _claim(quiet, overdue) == ClaimOutcome.finished
    assert _claim(quiet, in_time) == ClaimOutcome.claimed
    expired, running = _rows(quiet, overdue, in_time)
    assert expired.status == JobStatus.expired and expired.error_type == "DeadlineExpired"
    assert expired.started_at is None and expired.attempts == 0 and expired.worker is None
    assert running.status == JobStatus.running and running.worker == "claimant@test"


def test_the_sweep_expires_what_has_not_started_and_never_a_started_job(
        quiet: Database) -> None:
    started = _queued(quiet, utcnow() + timedelta(hours=1))
    assert _claim(quiet, started) == ClaimOutcome.claimed
    overdue = _queued(quiet, utcnow() + timedelta(hours=1))
    in_time = _queued(quiet, utcnow() + timedelta(hours=3))
    with session_scope(quiet) as session:
        # As seen two hours on, the first two deadlines have passed.
        expired = expiry_rows.expire_overdue(session=session,
                                             now=utcnow() + timedelta(hours=2), limit=1000)
    assert [e.id for e in expired] == [overdue.id]
    assert [j.status for j in _rows(quiet, started, overdue, in_time)] == [
        JobStatus.running, JobStatus.expired, JobStatus.queued]
    assert "deadline" in (_rows(quiet, overdue)[0].error_message or "")


def test_an_expired_graph_child_fails_its_parent_with_the_reason(quiet: Database) -> None:
    with session_scope(quiet) as session:
        parent = job_rows.create_job(session=session, job_in=JobCreate(
            tenant="quiet", kind=JobKind.summarise, priority=5, model="m",
            payload={"text": "long"}, queue="lang.m", graph_role=GraphRole.parent.value,
            deadline=utcnow() - timedelta(seconds=1)))
        graph_rows.start_parent(session=session, job_id=parent.id)
        late, sibling = (job_rows.create_job(session=session, job_in=JobCreate(
            tenant="quiet", kind=JobKind.summarise, priority=5, model="m",
            payload={"text": "part"}, queue="lang.m", parent_id=parent.id,
            graph_role=GraphRole.part.value, graph_level=0, graph_index=index,
            deadline=deadline)) for index, deadline in (
                (0, utcnow() - timedelta(seconds=1)), (1, None)))
    expired = deadlines.expire_overdue(Submitter(Settings(), quiet))
    # The parent runs (it is never sent), so only its child expires; the graph fails.
    assert expired == [late.id]
    failed, expired_child, cancelled = _rows(quiet, parent, late, sibling)
    assert expired_child.status == JobStatus.expired
    assert failed.status == JobStatus.failed and failed.error_type == "DeadlineExpired"
    assert late.id in (failed.error_message or "") and "deadline" in (failed.error_message or "")
    assert cancelled.status == JobStatus.cancelled and cancelled.error_type == "GraphFailed"
