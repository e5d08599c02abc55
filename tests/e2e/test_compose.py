"""compose.yaml, run without Docker (tests/unit/test_compose.py reads it): each llmos
service's command, with that service's environment and a data directory of its own,
runs as its own process against a Redis started with the redis service's options and a fresh
PostgreSQL database, in `depends_on` order, each checked with its own health check. A
job submitted over HTTP succeeds and its webhook, signed by the control process,
verifies. Where a Docker engine answers, the same job runs through `docker compose up`
instead."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.api_server import free_port, tenant, wait_job
from tests.support.compose_file import (
    COMPOSE_FILE,
    ROOT,
    depends_on,
    filled_env,
    healthcheck_argv,
    llmos_services,
    load_compose,
    start_order,
)
from tests.support.services import drop_pg_database, fresh_pg_database, private_redis
from tests.support.stack import WEBHOOK_ALLOWED_HOSTS, WEBHOOK_RETRY_DELAYS
from tests.support.waiting import HANG_GUARD_S, until
from tests.support.webhook_receiver import Receiver

# What the test machine stands in for: the infrastructure services run here already.
INFRASTRUCTURE = ("redis", "postgres")


# --- the services, run ---------------------------------------------------------------

@dataclass
class ComposeProcesses:
    """compose.yaml's llmos services as processes on this machine: the image's `llmos`
    is this checkout's, service hostnames are the local Redis and PostgreSQL, a
    published port is a free local port, and /data is a directory per service."""

    services: dict[str, Any]
    broker_url: str
    database_url: str
    root: Path
    extra_env: dict[str, dict[str, str]]
    ports: dict[str, str] = field(default_factory=dict)
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for service in self.services.values():
            for published in service.get("ports", []):
                container_port = str(published).rsplit(":", 1)[1]
                assert container_port not in self.ports, f"port {container_port} twice"
                self.ports[container_port] = str(free_port())
        (self.root / "models").mkdir()

    def data_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def _path(self, name: str, value: str) -> str:
        for inside, here in (("/data", self.data_dir(name)), ("/models", self.root / "models")):
            if value == inside or value.startswith(inside + "/"):
                return str(here) + value[len(inside):]
        return value

    def _token(self, name: str, token: str) -> str:
        token = self._path(name, token.replace("0.0.0.0", "127.0.0.1"))
        for container_port, port in self.ports.items():
            if token == container_port:
                return port
            if token.endswith(f":{container_port}"):
                return token[: -len(container_port)] + port
        return token

    def argv(self, name: str, command: list[str]) -> list[str]:
        assert command[0] == "llmos", command
        return [sys.executable, "-m", "llmos_jobs.cli.main",
                *(self._token(name, t) for t in command[1:])]

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
        env["PYTHONPATH"] = str(ROOT)
        for key, value in self.services[name].get("environment", {}).items():
            value = str(value)
            if key == "LLMOS_BROKER_URL":
                value = self.broker_url
            elif key == "LLMOS_DATABASE_URL":
                value = self.database_url
            else:
                value = ",".join(self._path(name, part) for part in value.split(","))
            env[key] = value
        return {**env, **self.extra_env.get(name, {})}

    def start(self, name: str) -> None:
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.running[name] = subprocess.Popen(
                self.argv(name, self.services[name]["command"]), env=self.env(name),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def run(self, name: str, *command: str) -> str:
        """A one-off command in the service's environment (`docker compose exec`)."""
        done = subprocess.run(self.argv(name, list(command)), env=self.env(name),
                              capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def healthy(self, name: str) -> bool:
        argv = healthcheck_argv(self.services[name])
        assert argv is not None, f"{name} has no health check"
        done = subprocess.run(self.argv(name, argv), env=self.env(name),
                              capture_output=True, timeout=HANG_GUARD_S)
        return done.returncode == 0

    def wait(self, name: str, condition: str) -> None:
        process = self.running[name]
        if condition == "service_completed_successfully":
            code = process.wait(timeout=HANG_GUARD_S)
            assert code == 0, f"{name} exited {code}:\n{self.log(name)}"
            return
        assert condition in ("service_healthy", "service_started"), condition
        if condition == "service_healthy":
            def healthy() -> bool:
                assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
                return self.healthy(name)

            until(healthy, f"{name} healthy (see {self.root / name}.log)", poll_s=0.5)

    def up(self) -> None:
        """What `docker compose up` does: each service once its dependencies meet
        their conditions, then every long-running one healthy."""
        for name in start_order(self.services):
            if name in INFRASTRUCTURE:
                continue
            for dependency, condition in depends_on(self.services[name]).items():
                if dependency not in INFRASTRUCTURE:
                    self.wait(dependency, condition)
            self.start(name)
        for name, process in self.running.items():
            if healthcheck_argv(self.services[name]) is not None:
                self.wait(name, "service_healthy")
            else:
                assert process.wait(timeout=HANG_GUARD_S) == 0, self.log(name)

    def down(self) -> None:
        for process in reversed(self.running.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _broker_url(services: Mapping[str, Any], redis_url: str) -> str:
    """The llmos services' broker URL, checked against the redis service and pointed at
    the local server (same password, same database)."""
    [url] = {s["environment"]["LLMOS_BROKER_URL"] for s in llmos_services(services).values()}
    parts = urlsplit(url)
    command = services["redis"]["command"]
    assert (parts.hostname, parts.port) == ("redis", 6379)
    assert parts.password == command[command.index("--requirepass") + 1]
    local = urlsplit(redis_url)
    return f"redis://:{parts.password}@{local.hostname}:{local.port}{parts.path}"


def _check_database_url(services: Mapping[str, Any]) -> None:
    """The llmos services' database URL names the postgres service's user, password and
    database (the local test database stands in for it)."""
    urls = {s["environment"].get("LLMOS_DATABASE_URL") for s in llmos_services(services).values()}
    [url] = urls - {None}
    parts = urlsplit(url)
    postgres = services["postgres"]["environment"]
    assert (parts.hostname, parts.port, parts.username, parts.password, parts.path) == (
        "postgres", 5432, postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
        f"/{postgres['POSTGRES_DB']}")


def _docker_answers() -> bool:
    """A Docker engine answers and the compose plugin is installed."""
    if shutil.which("docker") is None:
        return False
    try:
        return all(subprocess.run(command, capture_output=True, timeout=30).returncode == 0
                   for command in (["docker", "info"], ["docker", "compose", "version"]))
    except subprocess.TimeoutExpired:
        return False


def _submit_and_wait(base_url: str, operator: str, owner_key: str, model_path: str,
                     webhook: str | None) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=30,
                      headers={"Authorization": f"Bearer {operator}"}) as ops:
        registered = ops.post("/v1/models", json={"name": "echo", "path": model_path,
                                                  "engine": "noop"})
        assert registered.status_code == 201, registered.text
    with httpx.Client(base_url=base_url, timeout=30,
                      headers={"Authorization": f"Bearer {owner_key}"}) as http:
        body: dict[str, Any] = {"model": "echo", "prompt": "one two", "max_tokens": 2}
        if webhook is not None:
            body["webhook"] = webhook
        response = http.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return wait_job(http, response.json()["id"], timeout_s=HANG_GUARD_S)


@contextmanager
def _local_services(postgres_admin: str, redis_options: list[str]
                    ) -> Iterator[tuple[str, str]]:
    database_url = fresh_pg_database(postgres_admin)
    try:
        with private_redis(*redis_options) as redis_url:
            yield redis_url, database_url
    finally:
        drop_pg_database(postgres_admin, database_url)


@pytest.mark.slow
def test_compose_services_as_separate_processes_run_a_job(
        postgres_admin: str, tmp_path: Path) -> None:
    if _docker_answers():
        _run_with_docker(tmp_path)
        return
    compose = load_compose(filled_env())
    services = {n: s for n, s in compose["services"].items() if not s.get("profiles")}
    _check_database_url(services)
    redis_command = services["redis"]["command"]
    assert redis_command[0] == "redis-server"
    with _local_services(postgres_admin, redis_command[1:]) as (redis_url, database_url):
        stack = ComposeProcesses(
            services=services, broker_url=_broker_url(services, redis_url),
            database_url=database_url, root=tmp_path,
            # The test's webhook receiver listens on 127.0.0.1 (the API checks the
            # address, the control process delivers); retries come quickly.
            extra_env={"api": {"LLMOS_WEBHOOK_ALLOWED_HOSTS": WEBHOOK_ALLOWED_HOSTS},
                       "control": {"LLMOS_WEBHOOK_ALLOWED_HOSTS": WEBHOOK_ALLOWED_HOSTS,
                                   "LLMOS_WEBHOOK_RETRY_DELAYS": WEBHOOK_RETRY_DELAYS}})
        receiver: Receiver | None = None
        try:
            stack.up()
            # The health check does tell: a worker that is not there is unhealthy.
            absent = subprocess.run(
                stack.argv("control", ["llmos", "health", "worker", "absent@compose",
                                       "--timeout", "1"]),
                env=stack.env("control"), capture_output=True, text=True,
                timeout=HANG_GUARD_S)
            assert absent.returncode == 1 and "did not answer" in absent.stderr, absent
            # Keys the way docs/deploy.md makes them: the CLI in the api service.
            operator = json.loads(stack.run("api", "llmos", "key", "create", "--operator",
                                            "--json"))["key"]
            owner = tenant()
            owner_key = json.loads(stack.run("api", "llmos", "key", "create", "--tenant",
                                             owner, "--json"))["key"]
            api = f"http://127.0.0.1:{stack.ports['8000']}"
            # Over HTTP: this process holds no key ring, the services' is theirs alone.
            secret = httpx.get(f"{api}/v1/webhooks/secret", timeout=30, headers={
                "Authorization": f"Bearer {owner_key}"}).raise_for_status().json()["secret"]
            receiver = Receiver(secret=secret).start()
            (tmp_path / "models" / "echo").mkdir()
            done = _submit_and_wait(api, operator,
                                    owner_key, stack._path("api", "/models/echo"),
                                    receiver.url)
            assert done["status"] == "succeeded", done
            assert done["result"]["text"] == "ok ok"
            [event] = receiver.wait_for(1, timeout_s=HANG_GUARD_S)
            assert event.verified
            body = json.loads(event.body)
            assert (body["type"], body["data"]["id"]) == ("job.succeeded", done["id"])
            assert body["data"]["result"]["text"] == "ok ok"
        finally:
            if receiver is not None:
                receiver.stop()
            stack.down()
    # No process minted a key of its own: the shared ring was the only one.
    assert not list(tmp_path.rglob("encryption.keys"))


def _run_with_docker(tmp_path: Path) -> None:
    """`docker compose up` of the real file (not run where no Docker engine answers)."""
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env().items()))
    compose = ["docker", "compose", "--project-directory", str(ROOT), "-f",
               str(COMPOSE_FILE), "--env-file", str(env_file),
               "-p", f"llmos-test-{uuid.uuid4().hex[:6]}"]

    def run(*args: str, timeout: float = 300) -> str:
        done = subprocess.run([*compose, *args], capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    try:
        run("up", "-d", "--build", "--wait", "--wait-timeout", "900", timeout=2400)
        operator = json.loads(run("exec", "-T", "api", "llmos", "key", "create", "--operator",
                                  "--json"))["key"]
        owner_key = json.loads(run("exec", "-T", "api", "llmos", "key", "create",
                                   "--tenant", tenant(), "--json"))["key"]
        run("exec", "-T", "api", "mkdir", "-p", "/data/models/echo")
        done = _submit_and_wait("http://127.0.0.1:8000", operator, owner_key,
                                "/data/models/echo", webhook=None)
        assert done["status"] == "succeeded", done
        assert done["result"]["text"] == "ok ok"
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], capture_output=True,
                       timeout=600)
