"""Pure unit tests: schemas, priorities, the state machine, the broker topology, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from broker_config import JOB_TASKS, TASK_FAMILIES, TaskName, celery_config, queue_for
from llmos_jobs.celery_app import create_app
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import get_engine
from llmos_jobs.errors import IllegalTransition
from llmos_jobs.states import TRANSITIONS, check_transition
from schemas.common import PRIORITY_CLASSES, JobStatus, parse_priority
from schemas.export import JSON_DIR, rendered
from workers.engine import apply_stop
from workers.tasks import registered_llmos_tasks


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
    check_transition(JobStatus.queued, JobStatus.running)
    check_transition(JobStatus.running, JobStatus.queued)  # a new attempt after a worker died
    for final in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled):
        assert not TRANSITIONS[final]
        for target in JobStatus:
            with pytest.raises(IllegalTransition):
                check_transition(final, target)
    with pytest.raises(IllegalTransition):
        check_transition(JobStatus.queued, JobStatus.succeeded)
    # A waiting turn is released (queued) or cancelled; it never runs straight away.
    assert TRANSITIONS[JobStatus.waiting] == {JobStatus.queued, JobStatus.cancelled}
    assert not JobStatus.waiting.is_final


def test_every_registered_task_has_a_route() -> None:
    app = create_app("redis://127.0.0.1:6379/15", with_tasks=True)
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
                                      batch_expiry_check_s=10))
    assert {entry["task"]: (entry["schedule"], entry["options"]["queue"])
            for entry in schedule.values()} == {
        TaskName.reap.value: (2, "control"), TaskName.reconcile.value: (15, "control"),
        TaskName.expire_batches.value: (10, "control")}


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
    upgrade(url)
    with get_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


def test_stop_strings_cut_at_the_first_match() -> None:
    assert apply_stop("abc.def;g", [";", "."]) == ("abc", True)
    assert apply_stop("abc", ["x"]) == ("abc", False)
