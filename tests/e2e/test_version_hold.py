"""On PostgreSQL, a job resolved to a model's current version holds the name's row
until it commits: a rollout's switch of the current version waits for it, so the
switch's transaction, and every later one, counts that job among the old version's.
Told by the lock itself (a switch with a 1 ms lock timeout fails while such a job is
uncommitted), not by how long anything takes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, func, select

from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import versions
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job
from llmos_jobs.settings import Settings
from schemas.common import JobKind
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.support.versions import register_fake

MODEL = "switched"


@pytest.fixture
def database(postgres_admin: str, tmp_path: Path) -> Iterator[Database]:
    url = fresh_pg_database(postgres_admin)
    db = Database.from_settings(Settings(database_url=url, data_dir=tmp_path))
    upgrade(db)
    with db.session() as session:
        for number in (1, 2):
            register_fake(session, MODEL, number, make_current=number == 1)
        session.commit()
    yield db
    drop_pg_database(postgres_admin, url)


def _create(session: Session, model: str = MODEL) -> Job:
    return job_rows.create_job(session=session, job_in=job_rows.JobCreate(
        tenant="t", kind=JobKind.generate, priority=5, model=model, payload={},
        queue=f"lang.{MODEL}"))


def _switch(database: Database, *, lock_timeout_ms: int | None) -> int:
    """Switch to version 2; then the jobs recorded for version 1, read in the same
    transaction."""
    with database.session() as session:
        if lock_timeout_ms is not None:
            session.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout_ms}ms'"))
        assert versions.set_current_version(session=session, name=MODEL, version=2, expect=1)
        old = session.exec(select(func.count()).select_from(Job).where(
            col(Job.model_version) == 1)).one()
        session.commit()
        return int(old)


def test_a_switch_waits_for_the_jobs_resolved_to_the_old_version(database: Database) -> None:
    with database.session() as submission:
        jobs = [_create(submission) for _ in range(3)]  # one batch: one lock
        assert {j.model_version for j in jobs} == {1}
        with pytest.raises(OperationalError, match="lock timeout"):
            _switch(database, lock_timeout_ms=1)
        pinned = _create(submission, f"{MODEL}@2")  # a pinned version holds nothing
        assert pinned.model_version == 2
        submission.commit()
    assert _switch(database, lock_timeout_ms=1) == 3
    with database.session() as later:
        assert _create(later).model_version == 2
        later.commit()


def test_a_pinned_job_does_not_hold_the_name(database: Database) -> None:
    with database.session() as submission:
        assert _create(submission, f"{MODEL}@1").model_version == 1
        assert _switch(database, lock_timeout_ms=1) == 0  # not yet committed: not seen
        submission.commit()
