"""max_queued at submission on a real SQLite database: what counts against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import tenant_policy as policy_rows
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.tenant_tables import TenantPolicy
from llmos_jobs.errors import QuotaExceeded
from llmos_jobs.services.quotas import Quotas
from llmos_jobs.settings import Settings
from schemas.common import JobKind

TENANT = "t"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", data_dir=tmp_path)


@pytest.fixture
def database(settings: Settings) -> Database:
    db = Database.from_settings(settings)
    upgrade(db)
    with db.session() as session:
        policy_rows.put_policy(session=session, policy=TenantPolicy(tenant=TENANT,
                                                                    max_queued=1))
    return db


def _job(kind: JobKind, **extra: str) -> job_rows.JobCreate:
    return job_rows.JobCreate(tenant=TENANT, kind=kind, priority=5, model="m", payload={},
                              queue="lang.m", **extra)


def _admit(settings: Settings, database: Database, job: job_rows.JobCreate) -> None:
    """Check the job against the quotas and insert it, as a submission does."""
    with database.session() as session:
        Quotas(settings, database).admit([job], session=session)
        job_rows.create_job(session=session, job_in=job)


def test_a_model_operation_queued_under_the_tenant_does_not_count(
        settings: Settings, database: Database) -> None:
    # The prefill a mindspace's creation queues under its tenant: never refused itself.
    _admit(settings, database, _job(JobKind.model_op))
    _admit(settings, database, _job(JobKind.model_op))
    with database.session() as session:
        assert policy_rows.unstarted_jobs(session=session, tenant=TENANT) == 0
    _admit(settings, database, _job(JobKind.generate))  # the one job max_queued allows
    with pytest.raises(QuotaExceeded, match="max_queued of 1") as refused:
        _admit(settings, database, _job(JobKind.generate))
    assert refused.value.limit == "max_queued"
    with database.session() as session:
        assert policy_rows.unstarted_jobs(session=session, tenant=TENANT) == 1
