"""compose.yaml, checked without Docker: it is valid Compose (the specification's own
JSON schema), it refuses to run without the secrets `.env.example` names, its layout
keeps the promises docs/deploy.md makes, and its llmos services run: each service's
command, with that service's environment and a data directory of its own, as its own
process against a Redis started with the redis service's options and a fresh
PostgreSQL database, in `depends_on` order, each checked with its own health check. A
job submitted over HTTP succeeds and its webhook, signed by the control process,
verifies. Where a Docker engine answers, the same job runs through `docker compose up`
instead."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet
from jsonschema import Draft7Validator

from tests.api_server import free_port, tenant, wait_job
from tests.compose_file import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ROOT,
    MissingVariable,
    depends_on,
    healthcheck_argv,
    load_compose,
    raw_compose,
    read_env_file,
    required_variables,
    start_order,
)
from tests.conftest import _drop_pg_database, _fresh_pg_database
from tests.services import private_redis
from tests.stack import WEBHOOK_ALLOWED_HOSTS, WEBHOOK_RETRY_DELAYS
from tests.turns import HANG_GUARD_S
from tests.webhook_receiver import Receiver

SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
IMAGE_PREFIX = "llmos-jobs:"
# What the test machine stands in for: the infrastructure services run here already.
INFRASTRUCTURE = ("redis", "postgres")


def filled_env() -> dict[str, str]:
    """.env.example with each empty value filled the way its comments say."""
    fills = {
        "LLMOS_REDIS_PASSWORD": secrets.token_hex(12),
        "LLMOS_POSTGRES_PASSWORD": secrets.token_hex(12),
        "LLMOS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "LLMOS_FLOWER_USER": "ops",
        "LLMOS_FLOWER_PASSWORD": secrets.token_hex(12),
    }
    values = read_env_file(ENV_EXAMPLE)
    for name, value in values.items():
        if not value:
            assert name in fills, f".env.example leaves {name} empty: say how to fill it"
            values[name] = fills[name]
    return values


def llmos_services(services: Mapping[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items()
            if str(s.get("image", "")).startswith(IMAGE_PREFIX)}


# --- the file ------------------------------------------------------------------------

def test_compose_file_follows_the_compose_specification() -> None:
    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    for document in (raw_compose(), load_compose(filled_env())):
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
                  for e in validator.iter_errors(document)]
        assert not errors, errors
    # The schema does refuse what is not Compose: a misspelt key is caught.
    broken = load_compose(filled_env())
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_compose_refuses_to_run_without_each_secret_env_example_names() -> None:
    required = required_variables()
    example = read_env_file(ENV_EXAMPLE)
    assert {"LLMOS_REDIS_PASSWORD", "LLMOS_POSTGRES_PASSWORD", "LLMOS_ENCRYPTION_KEYS",
            "LLMOS_FLOWER_USER", "LLMOS_FLOWER_PASSWORD"} <= required
    assert required <= example.keys(), required - example.keys()
    assert not [name for name in required if example[name]], ".env.example holds a secret"
    for name in sorted(required):
        env = {**filled_env(), name: ""}
        with pytest.raises(MissingVariable) as refused:
            load_compose(env)
        assert refused.value.name == name


def test_compose_layout_shares_one_key_ring_and_starts_in_order() -> None:
    env = filled_env()
    services = load_compose(env)["services"]
    ours = llmos_services(services)
    assert {"migrate", "control", "cpu-worker", "api", "flower", "gpu0-worker"} <= set(ours)
    # One key ring and one data volume for every service that touches stored data.
    stateful = {n: s for n, s in ours.items() if n != "flower"}
    assert {s["environment"]["LLMOS_ENCRYPTION_KEYS"] for s in stateful.values()} == {
        env["LLMOS_ENCRYPTION_KEYS"]}
    assert all("llmos-data:/data" in s["volumes"] for s in stateful.values())
    assert "LLMOS_ENCRYPTION_KEYS" not in services["flower"]["environment"]
    # Migrations once, before anything else uses the database.
    migrate = services["migrate"]
    assert migrate["command"] == ["llmos", "db", "upgrade"] and migrate["restart"] == "no"
    assert depends_on(migrate) == {"postgres": "service_healthy"}
    for name in set(stateful) - {"migrate"}:
        assert depends_on(services[name]) == {
            "redis": "service_healthy", "postgres": "service_healthy",
            "migrate": "service_completed_successfully"}, name
    assert start_order(services).index("migrate") < start_order(services).index("api")
    # Every long-running service has a health check; the one-shot has none.
    assert healthcheck_argv(migrate) is None
    assert all(healthcheck_argv(s) for n, s in services.items() if n != "migrate")
    # Redis persists its messages; Redis and PostgreSQL are not published at all, the
    # API and Flower only on the loopback address.
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert "ports" not in services["redis"] and "ports" not in services["postgres"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published


def test_compose_gpu_workers_reserve_one_device_each_under_the_gpu_profile() -> None:
    services = load_compose(filled_env())["services"]
    gpu = {n: s for n, s in services.items() if "gpu" in s.get("profiles", [])}
    assert len(gpu) >= 2
    devices, names = [], []
    for service in gpu.values():
        [reservation] = service["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"] and reservation["driver"] == "nvidia"
        [device] = reservation["device_ids"]
        devices.append(device)
        command = service["command"]
        # The container sees its one device as index 0.
        assert command[command.index("--gpu") + 1] == "0"
        names.append(command[command.index("--name") + 1])
        # Its health check pings the worker by the name it runs under.
        assert healthcheck_argv(service) == ["llmos", "health", "worker", names[-1]]
        assert service["image"] == "llmos-jobs:gpu"
        assert service["build"]["args"]["FLAVOUR"] == "gpu"
    assert len(set(devices)) == len(devices) and len(set(names)) == len(names)
    assert not [n for n, s in services.items() if "gpu" not in s.get("profiles", [])
                and "deploy" in s]


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
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
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
        deadline = time.monotonic() + HANG_GUARD_S
        while condition == "service_healthy" and not self.healthy(name):
            assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} never healthy:\n{self.log(name)}"
            time.sleep(0.5)

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
    database_url = _fresh_pg_database(postgres_admin)
    try:
        with private_redis(*redis_options) as redis_url:
            yield redis_url, database_url
    finally:
        _drop_pg_database(postgres_admin, database_url)


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
