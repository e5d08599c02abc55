"""The HTTP API as it runs for real: `llmos api` in a subprocess on a free port, on
the session stack's Redis, database and worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from llmos_jobs.db.session import session_scope
from llmos_jobs.services.api_keys import issue_key, parse_scopes
from tests.support.cli import llmos
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S, until

# How long a waiting call waits: generous on the server most tests use, so a slow
# machine never turns a result into a time-out; short on the server of the tests that
# watch a wait time out (they wait on a model no worker serves, so the outcome is the
# same however fast the machine is).
API_WAIT_TIMEOUT_S = 3
API_WAIT_GENEROUS_S = 300
# A hang guard per request, not a speed limit: the first knowledge upload loads the
# embedding model in the API process, which took over 30 s on a loaded machine.
REQUEST_HANG_GUARD_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: str,
                  timeout_s: float = HANG_GUARD_S) -> None:
    def answers() -> bool:
        assert process.poll() is None, f"server exited: see {log}"
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    until(answers, f"{url} answered (see {log})", timeout_s, poll_s=0.2)


@dataclass
class ApiServer:
    url: str
    stack: Stack
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, stack: Stack, wait_timeout_s: float = API_WAIT_GENEROUS_S,
              env: dict[str, str] | None = None) -> ApiServer:
        port = free_port()
        log = stack.data_dir / f"api-{port}.log"
        with open(log, "ab") as output:  # the child keeps its own copy open
            process = subprocess.Popen(
                [sys.executable, "-m", "llmos_jobs.cli.main", "api", "--port", str(port),
                 "--log-level", "warning"],
                env={**stack.env, "LLMOS_API_WAIT_TIMEOUT_S": str(wait_timeout_s),
                     "LLMOS_MODEL_ROOTS": str(stack.data_dir),
                     # Every test calls from 127.0.0.1; test_api_gate.py tests the budget.
                     "LLMOS_AUDIT_DENIED_PER_MINUTE": "1000000", **(env or {})},
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/healthz", process, str(log))
        return cls(url=url, stack=stack, process=process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def issue(self, tenant: str | None, scopes: str | None = None) -> tuple[str, str]:
        """A new key of ``tenant`` (None: an operator's; all scopes when none named):
        (key id, key)."""
        with session_scope(self.stack.database) as session:
            issued = issue_key(session=session, tenant=tenant, scopes=parse_scopes(scopes))
        return issued.id, issued.key

    def key(self, tenant: str, scopes: str | None = None) -> str:
        return self.issue(tenant, scopes)[1]

    def operator_key(self, scopes: str | None = None) -> str:
        return self.issue(None, scopes)[1]

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=REQUEST_HANG_GUARD_S)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def wait_job(http: httpx.Client, job_id: str, timeout_s: float = HANG_GUARD_S) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        return job if job["status"] in ("succeeded", "failed", "cancelled", "filtered",
                                                "expired") else None

    return until(finished, f"job {job_id} finished", timeout_s)


def idle_model(api: ApiServer) -> str:
    """A registered model that no worker serves: its jobs stay queued."""
    name = f"idle-{uuid.uuid4().hex[:6]}"
    with api.http(api.operator_key("models:admin")) as ops:
        ops.post("/v1/models", json={"name": name, "path": str(api.stack.data_dir / name),
                                     "engine": "noop"}).raise_for_status()
    return name


def audit(api: ApiServer, who: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The audit rows of ``api``'s stack (of ``who`` alone when named),
    as `llmos audit list` shows them."""
    args = ["audit", "list", "--limit", str(limit), "--json"]
    out = llmos(*args, *(["--tenant", who] if who else []), env=api.stack.env)
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows
