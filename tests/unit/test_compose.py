"""compose.yaml, read without running it: it is valid Compose (the specification's own
JSON schema), it refuses to run without the secrets `.env.example` names, and its
layout keeps the promises docs/deploy.md makes (tests/e2e/test_compose.py runs it)."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft7Validator

from tests.support.compose_file import (
    ENV_EXAMPLE,
    ROOT,
    MissingVariable,
    depends_on,
    filled_env,
    healthcheck_argv,
    llmos_services,
    load_compose,
    raw_compose,
    read_env_file,
    required_variables,
    start_order,
)

SCHEMA = ROOT / "tests" / "support" / "data" / "compose-spec.json"


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
