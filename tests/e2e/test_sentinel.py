"""A broker behind Redis Sentinel: `sentinel://` URLs and LLMOS_BROKER_SENTINEL_MASTER."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos_jobs.settings import get_settings
from schemas.common import JobStatus
from tests.support.services import redis_sentinel
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S

MASTER = "llmos-test-master"


@pytest.fixture
def sentinel_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with redis_sentinel(MASTER) as url:
        monkeypatch.setenv("LLMOS_BROKER_SENTINEL_MASTER", MASTER)  # this process's app
        get_settings.cache_clear()
        stack = Stack(name="sentinel", broker_url=url,
                      database_url=f"sqlite:///{tmp_path / 'llmos.db'}", data_dir=tmp_path)
        try:
            yield stack
        finally:
            stack.stop()
            monkeypatch.delenv("LLMOS_BROKER_SENTINEL_MASTER")
            get_settings.cache_clear()



def test_a_job_runs_through_a_broker_found_by_its_sentinel(sentinel_stack: Stack) -> None:
    stack = sentinel_stack
    client = stack.client()
    client.register_model("echo", stack.data_dir / "echo", engine="noop")
    stack.start_worker("sentinel@test", "--model", "echo",
                       env={"LLMOS_BROKER_SENTINEL_MASTER": MASTER})
    job = client.generate(model="echo", prompt="through the sentinel", max_tokens=2,
                          priority="interactive")
    [done] = client.wait([job.id], timeout_s=HANG_GUARD_S)
    assert done.status == JobStatus.succeeded and done.worker == "sentinel@test"
