"""`llmos flower`: Flower on the configured broker, never without basic auth."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import psutil

from tests.api_server import free_port, wait_until_up
from tests.stack import Stack
from tests.test_cli import llmos


def test_flower_refuses_to_start_without_basic_auth(stack: Stack) -> None:
    out = llmos("flower", "--port", str(free_port()), env=stack.env)
    assert out.returncode == 1
    assert "LLMOS_FLOWER_USER and LLMOS_FLOWER_PASSWORD" in out.stderr
    assert "Traceback" not in out.stderr
    half = llmos("flower", env={**stack.env, "LLMOS_FLOWER_USER": "ops"})
    assert half.returncode == 1 and "LLMOS_FLOWER_PASSWORD" in half.stderr


def test_flower_serves_the_broker_behind_basic_auth(stack: Stack) -> None:
    port = free_port()
    log = stack.data_dir / "flower.log"
    env = {**stack.env, "LLMOS_FLOWER_USER": "ops", "LLMOS_FLOWER_PASSWORD": "s3cret-pw"}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmos_jobs.cli.main", "flower", "--port", str(port)],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/healthcheck", process, str(log))
        assert httpx.get(f"{url}/").status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "s3cret-pw")).status_code == 200
        # The password reached Flower in-process, not on a command line `ps` shows.
        assert "s3cret-pw" not in " ".join(psutil.Process(process.pid).cmdline())
        # The configured broker, database number included.
        assert f"@{stack.broker_url.split('://', 1)[1]}" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)

