"""Pure unit tests: schemas, priorities, the state machine, the broker topology, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel import SQLModel

from broker_config import JOB_TASKS, TASK_FAMILIES, TaskName, celery_config, queue_for
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database, get_engine
from llmos_jobs.db.tables import Job, JobPublic
from llmos_jobs.errors import IllegalTransition, ResultUnavailable
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings
from llmos_jobs.states import (
    BATCH_OPEN,
    BATCHES,
    JOBS,
    WORKERS,
    BatchStatus,
    WorkerState,
)
from schemas.common import PRIORITY_CLASSES, JobKind, JobStatus, Usage, parse_priority
from schemas.export import JSON_DIR, rendered
from schemas.language import GenerateResult
from schemas.mindspace import MindspaceTurnResult
from schemas.model import ModelOp, ModelOpRequest, ModelOpResult
from tests.support.stack import database_at
from workers.engines.base import apply_stop
from workers.tasks import registered_llmos_tasks, worker_app


def test_json_schema_files_match_the_models() -> None:
    expected = rendered()
    on_disk = {p.name: p.read_text() for p in JSON_DIR.glob("*.json")}
    assert on_disk == expected, "run `python -m schemas.export` and commit schemas/json"


@pytest.mark.parametrize(("given", "number"), [
    ("interactive", 1), ("default", 5), ("batch", 8), ("BATCH", 8), (0, 0), ("9", 9)])
def test_priority_classes_map_to_numbers(given: str | int, number: int) -> None:
    assert parse_priority(given) == number


@pytest.mark.parametrize("given", [-1, 10, "10", "urgent", ""])
def test_bad_priorities_are_refused(given: str | int) -> None:
    with pytest.raises(ValueError, match="priority"):
        parse_priority(given)


def test_classes_leave_the_extremes_to_operators() -> None:
    assert 0 not in PRIORITY_CLASSES.values() and 9 not in PRIORITY_CLASSES.values()


def test_state_machine_refuses_illegal_transitions() -> None:
    JOBS.check(JobStatus.queued, JobStatus.running)
    JOBS.check(JobStatus.running, JobStatus.queued)  # a new attempt after a worker died
    JOBS.check(JobStatus.queued, JobStatus.failed)  # its message never reached the broker
    for final in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled,
                  JobStatus.expired):
        assert JOBS.is_final(final) and final.is_final
        for target in JobStatus:
            with pytest.raises(IllegalTransition, match=f"a {final.value} job cannot"):
                JOBS.check(final, target)
    with pytest.raises(IllegalTransition):
        JOBS.check(JobStatus.queued, JobStatus.succeeded)
    # A waiting turn is released (queued), cancelled or expired; it never runs straight
    # away.
    assert JOBS.transitions[JobStatus.waiting] == {JobStatus.queued, JobStatus.cancelled,
                                                   JobStatus.expired}
    # Only a job that has not started expires.
    assert JOBS.sources_of(JobStatus.expired) == {JobStatus.queued, JobStatus.waiting}
    assert not JOBS.is_final(JobStatus.waiting) and not JobStatus.waiting.is_final
    # The contract's own notion of final agrees with the machine's, status by status.
    assert {s for s in JobStatus if s.is_final} == {s for s in JobStatus if JOBS.is_final(s)}


def test_batch_and_worker_machines_follow_their_lifecycles() -> None:
    # Only a batch whose requests may still run can be cancelled, and from there it
    # only finalises.
    assert BATCHES.sources_of(BatchStatus.cancelling) == BATCH_OPEN
    assert BATCHES.transitions[BatchStatus.cancelling] == {BatchStatus.finalizing}
    # Files are written while finalizing, and only a finalizing batch ends so.
    for end in (BatchStatus.completed, BatchStatus.expired, BatchStatus.cancelled):
        assert BATCHES.sources_of(end) == {BatchStatus.finalizing} and BATCHES.is_final(end)
    assert BATCHES.is_final(BatchStatus.failed)
    with pytest.raises(IllegalTransition, match="a completed batch cannot become cancelling"):
        BATCHES.check(BatchStatus.completed, BatchStatus.cancelling)
    # A worker declared dead may come back; one that stopped never does.
    WORKERS.check(WorkerState.dead, WorkerState.alive)
    assert WORKERS.is_final(WorkerState.stopped)
    with pytest.raises(IllegalTransition):
        WORKERS.check(WorkerState.stopped, WorkerState.alive)


def test_every_registered_task_has_a_route() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/15")
    app = worker_app(Submitter(settings, Database.from_settings(settings)))
    assert registered_llmos_tasks(app) == sorted(t.value for t in TaskName)
    assert set(TASK_FAMILIES) == set(TaskName)
    assert queue_for(TaskName.generate, model="m") == "lang.m"
    assert queue_for(TaskName.model_op, model="m", worker="gpu0@h") == "w.gpu0@h"
    assert queue_for(TaskName.model_op, model="m") == "lang.m"


def test_control_work_is_the_control_process_s_and_inference_workers_serve_inference() -> None:
    from llmos_jobs.settings import Settings
    from workers.control import beat_schedule
    from workers.runtime import initial_queues

    # An inference worker: its direct queue and its models' queues, nothing else.
    assert initial_queues("gpu0@h", ["m", "n"]) == ["w.gpu0@h", "lang.m", "lang.n"]
    control = {t for t, family in TASK_FAMILIES.items() if family in ("control", "webhooks")}
    assert control == set(TaskName) - JOB_TASKS
    schedule = beat_schedule(Settings(heartbeat_interval_s=2, reconcile_grace_s=30,
                                      batch_expiry_check_s=10, retention_check_s=600,
                                      expire_check_s=3))
    assert {entry["task"]: (entry["schedule"], entry["options"]["queue"])
            for entry in schedule.values()} == {
        TaskName.reap.value: (2, "control"), TaskName.reconcile.value: (15, "control"),
        TaskName.expire_batches.value: (10, "control"),
        TaskName.expire_jobs.value: (3, "control"),
        TaskName.prune.value: (600, "control"),
        TaskName.rollout.value: (2, "control")}


def test_celery_settings_do_not_trust_transport_defaults() -> None:
    conf = celery_config(broker_url="redis://x", time_limit_s=600)
    options = conf["broker_transport_options"]
    assert options["priority_steps"] == list(range(10))
    assert options["sep"] == ":" and options["queue_order_strategy"] == "priority"
    assert options["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_default_priority"] == 5
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["worker_send_task_events"]


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(database_at(url))
    with get_engine(database_at(url)).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


def test_stop_strings_cut_at_the_first_match() -> None:
    assert apply_stop("abc.def;g", [";", "."]) == ("abc", True)
    assert apply_stop("abc", ["x"]) == ("abc", False)


def _job(kind: JobKind, result: dict[str, object] | None,
         status: JobStatus = JobStatus.succeeded) -> JobPublic:
    return JobPublic.from_row(Job(id="j1", tenant="t", kind=kind, priority=5, model="m",
                                  status=status, payload={}, result=result, queue="q"))


def test_a_stored_result_reads_back_as_the_contract_the_worker_wrote() -> None:
    usage = Usage(prompt_tokens=4, completion_tokens=2, cached_tokens=1)
    written: list[tuple[JobKind, GenerateResult | MindspaceTurnResult | ModelOpResult]] = [
        (JobKind.generate, GenerateResult(text="ok ok", finish_reason="length", usage=usage)),
        (JobKind.mindspace_turn, MindspaceTurnResult(mindspace_id="m1", reply="hi",
                                                     usage=usage)),
        (JobKind.model_op, ModelOpResult(model="m", op=ModelOp.unload, worker="w1",
                                         loaded=False, seconds=0.5)),
    ]
    for kind, result in written:
        # As workers/execution.py stores it: the contract's JSON.
        job = _job(kind, result.model_dump(mode="json"))
        read = {JobKind.generate: job.generate_result, JobKind.mindspace_turn: job.turn_result,
                JobKind.model_op: job.model_op_result}[kind]()
        assert read == result and type(read) is type(result)


def test_a_prefill_op_names_its_mindspace_and_no_other_op_does() -> None:
    op = ModelOpRequest(model="m@1", op=ModelOp.prefill, worker="w1", mindspace_id="ms1")
    assert ModelOpRequest.model_validate(op.model_dump(mode="json")) == op
    with pytest.raises(ValidationError, match="mindspace_id"):
        ModelOpRequest(model="m", op=ModelOp.prefill)
    with pytest.raises(ValidationError, match="mindspace_id"):
        ModelOpRequest(model="m", op=ModelOp.warmup, mindspace_id="ms1")


def test_reading_a_result_a_job_does_not_have_is_a_clear_error() -> None:
    generated = GenerateResult(text="ok", finish_reason="stop",
                               usage=Usage(prompt_tokens=1, completion_tokens=1))
    with pytest.raises(ResultUnavailable, match="job j1 is a generate job, not mindspace_turn"):
        _job(JobKind.generate, generated.model_dump(mode="json")).turn_result()
    with pytest.raises(ResultUnavailable, match="job j1 is failed and has no result"):
        _job(JobKind.generate, None, JobStatus.failed).generate_result()
    # A stored result that is not its contract fails where it is read, naming the field.
    with pytest.raises(ValidationError, match="finish_reason"):
        _job(JobKind.generate, {"version": 1, "text": "ok",
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
             ).generate_result()
