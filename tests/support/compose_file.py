"""compose.yaml read the way Docker Compose reads it: YAML (anchors and merge keys),
variables interpolated from an env file (``${VAR}``, ``${VAR:-default}``,
``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$``), and the order in
which `docker compose up` starts services (``depends_on``)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# The image every llmos service of compose.yaml runs (the infrastructure runs others).
IMAGE_PREFIX = "llmos-jobs:"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) whose variable is missing."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; comments and blank lines skipped, values taken as written."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset_or_empty = not value
        if op in (":-", "-"):
            missing = unset_or_empty if op == ":-" else value is None
            return arg if missing else str(value)
        if op in (":?", "?"):
            missing = unset_or_empty if op == ":?" else value is None
            if missing:
                raise MissingVariable(name, arg)
            return str(value)
        if op in (":+", "+"):
            present = not unset_or_empty if op == ":+" else value is not None
            return arg if present else ""
        return value or ""

    return _VARIABLE.sub(one, text)


def _walk(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    """compose.yaml with every variable interpolated from ``env``."""
    loaded: dict[str, Any] = _walk(raw_compose(), env)
    return loaded


def required_variables() -> set[str]:
    """The variables compose.yaml refuses to run without (``${VAR:?...}``)."""
    return {m["braced"] for m in _VARIABLE.finditer(COMPOSE_FILE.read_text())
            if m["braced"] and m["op"] in (":?", "?")}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Each dependency with its condition (the short list form means service_started)."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def start_order(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Services in an order `docker compose up` may start them: dependencies first."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"depends_on cycle through {name}"
        visiting.add(name)
        for dependency in depends_on(services[name]):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


def healthcheck_argv(service: Mapping[str, Any]) -> list[str] | None:
    """The healthcheck's command as an argv (CMD-SHELL through sh), None without one."""
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0]]
    assert kind == "CMD", f"healthcheck test starts with {kind!r}"
    return list(rest)


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
