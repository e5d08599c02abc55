"""Where a new mindspace is placed to have its persona warmed: the choice a first turn's
routing makes, among the live workers that hold the model's version."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from broker_config import worker_queue
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import registry
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.db.tables import Mindspace, WorkerRecord
from llmos_jobs.db.types import utcnow
from llmos_jobs.services.routing import RoutingPolicy, place_new, route_turn
from schemas.common import JobKind
from tests.support.stack import database_at

AFFINITY = RoutingPolicy(dead_after_s=60)


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = database_at(f"sqlite:///{tmp_path / 'llmos.db'}")
    upgrade(db)
    return db


def _worker(database: Database, name: str, loaded: list[str], *, silent_s: float = 0,
            models: list[str] | None = None) -> None:
    beat = utcnow() - timedelta(seconds=silent_s)
    with session_scope(database) as session:
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=name, host="host", pid=1, pool="threads", concurrency=2,
            engine_device="cpu", queues=[], models=models, loaded=loaded,
            started_at=beat, last_heartbeat=beat))


def _queue_job(database: Database, worker: str) -> None:
    with session_scope(database) as session:
        job_rows.create_job(session=session, job_in=job_rows.JobCreate(
            tenant="t", kind=JobKind.generate, priority=5, model="demo", payload={},
            queue=worker_queue(worker)))


def _place(database: Database, policy: RoutingPolicy = AFFINITY) -> str | None:
    with session_scope(database) as session:
        return place_new(session=session, model="demo", version="demo@2", policy=policy)


def test_only_a_live_worker_holding_the_version_is_chosen(database: Database) -> None:
    _worker(database, "a-serves-only", [])
    _worker(database, "b-older-version", ["demo@1"])
    _worker(database, "c-silent", ["demo@2"], silent_s=600)
    _worker(database, "d-other-models", ["demo@2"], models=["other"])
    assert _place(database) is None
    _worker(database, "e-holds", ["demo@1", "demo@2"])
    assert _place(database) == "e-holds"
    assert _place(database, RoutingPolicy(dead_after_s=60, round_robin=True)) is None


def test_the_least_loaded_holder_is_chosen_and_the_first_turn_goes_there(
        database: Database) -> None:
    _worker(database, "a", ["demo@2"])
    _worker(database, "b", ["demo@2"])
    _worker(database, "a-idle-but-cold", [])
    _queue_job(database, "a")
    home = _place(database)
    assert home == "b"
    with session_scope(database) as session:
        route = route_turn(session=session, seq=0, policy=AFFINITY,
                           mindspace=Mindspace(tenant="t", model="demo", worker=home))
    assert route.worker == "b" and route.queue == worker_queue("b")
