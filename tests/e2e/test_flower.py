"""`llmos flower`: Flower on the configured broker, never without basic auth."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from tests.support.api_server import free_port, wait_until_up
from tests.support.cli import llmos
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S, until


def test_flower_refuses_to_start_without_basic_auth(stack: Stack) -> None:
    out = llmos("flower", "--port", str(free_port()), env=stack.env)
    assert out.returncode == 1
    assert "LLMOS_FLOWER_USER and LLMOS_FLOWER_PASSWORD" in out.stderr
    assert "Traceback" not in out.stderr
    half = llmos("flower", env={**stack.env, "LLMOS_FLOWER_USER": "ops"})
    assert half.returncode == 1 and "LLMOS_FLOWER_PASSWORD" in half.stderr


@pytest.mark.brokers
def test_flower_serves_the_broker_behind_basic_auth(stack: Stack) -> None:
    """Behind basic auth, Flower sees the workers (remote control over the broker) and
    their tasks (task events), on Redis and on RabbitMQ."""
    port = free_port()
    log = stack.data_dir / "flower.log"
    env = {**stack.env, "LLMOS_FLOWER_USER": "ops", "LLMOS_FLOWER_PASSWORD": "s3cret-pw"}
    with open(log, "ab") as output:  # the child keeps its own copy open
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos_jobs.cli.main", "flower", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/healthcheck", process, str(log))
        assert httpx.get(f"{url}/").status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "s3cret-pw")).status_code == 200
        # The password reached Flower in-process, not on a command line `ps` shows.
        assert "s3cret-pw" not in " ".join(psutil.Process(process.pid).cmdline())
        # The configured broker, database number or virtual host included.
        assert f"@{stack.broker_url.rsplit('@', 1)[-1].split('://', 1)[-1]}" in log.read_text()
        worker = f"noop-{stack.name}@test"
        with httpx.Client(base_url=url, auth=("ops", "s3cret-pw"), timeout=30) as flower:
            until(lambda: worker in flower.get("/api/workers", params={"refresh": "1"}).json(),
                  f"Flower saw {worker} (see {log})", poll_s=0.5)
            job = stack.client().generate(model="echo", prompt="seen by flower", max_tokens=1)
            stack.client().wait([job.id], timeout_s=HANG_GUARD_S)
            # The job's row ends inside the task, before the worker sends task-succeeded:
            # Flower may still say STARTED when the job has finished, so wait for the event.
            until(lambda: flower.get("/api/tasks").json().get(job.task_id, {}).get("state")
                  in {"SUCCESS", "FAILURE"}, f"Flower saw the task end (see {log})", poll_s=0.5)
            seen = flower.get(f"/api/task/info/{job.task_id}").json()
            assert seen["state"] == "SUCCESS" and seen["worker"] == worker
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


