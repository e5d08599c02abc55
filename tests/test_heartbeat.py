"""A worker's heartbeat row: what a beat may change, and a worker declared dead while
alive coming back in one write (made alive first and beating later, a reaper pass in
between found it alive with its old heartbeat and declared it dead again, over and
over, on a loaded machine)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from llmos_jobs.db import registry
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.models import WorkerRecord
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.types import utcnow

NAME = "beating@test"


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'llmos.db'}"
    upgrade(url)
    return url


def _record(url: str, state: str) -> None:
    silent_since = utcnow() - timedelta(hours=1)
    with session_scope(url) as session:
        registry.upsert_worker(session=session, worker=WorkerRecord(
            name=NAME, host="host", pid=1, pool="threads", concurrency=1,
            engine_device="cpu", queues=[], state=state,
            started_at=silent_since, last_heartbeat=silent_since))
        session.commit()


def _beat(url: str, *, rejoin: bool) -> bool:
    with session_scope(url) as session:
        return registry.heartbeat(session=session, name=NAME, queues=["q"], engines={},
                                  resources={}, now=utcnow(), holding=[], rejoin=rejoin)


def _row(url: str) -> WorkerRecord:
    with session_scope(url) as session:
        row = session.get(WorkerRecord, NAME)
        assert row is not None
        session.expunge(row)
        return row


def test_a_beat_of_a_worker_declared_dead_changes_nothing_unless_it_rejoins(
        database: str) -> None:
    _record(database, "dead")
    before = _row(database)
    assert not _beat(database, rejoin=False)
    assert (_row(database).state, _row(database).last_heartbeat) == ("dead",
                                                                      before.last_heartbeat)
    started = utcnow()
    assert _beat(database, rejoin=True)
    after = _row(database)
    # Alive and beating at once: no reaper pass can see it alive and silent.
    assert after.state == "alive" and after.last_heartbeat >= started
    assert after.queues == ["q"]


def test_a_stopped_worker_does_not_rejoin(database: str) -> None:
    _record(database, "stopped")
    assert not _beat(database, rejoin=True)
    assert _row(database).state == "stopped"


def test_reaping_after_a_rejoin_leaves_the_worker_alive(database: str) -> None:
    _record(database, "dead")
    assert _beat(database, rejoin=True)
    with session_scope(database) as session:
        live = registry.live_workers(session=session, dead_after_s=4)
    assert [w.name for w in live] == [NAME]
