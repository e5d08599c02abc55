"""The Dockerfile, checked without a Docker engine (none runs here; docs/deploy.md says
what that leaves untested): parsed with dockerfile-parse, both flavours resolve to a
stage, everything COPY names exists and survives .dockerignore, the extras it installs
are pyproject's, it ends as a non-root user, and its health check and command are
commands the CLI has."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from dockerfile_parse import DockerfileParser

from tests.support.api_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile").read_bytes()))
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def stages() -> dict[str, list[dict[str, Any]]]:
    """Each stage's instructions, by the stage's name (global ARGs under "")."""
    found: dict[str, list[dict[str, Any]]] = {"": []}
    current = ""
    for instruction in instructions():
        if instruction["instruction"] == "FROM":
            name = instruction["value"].partition(" AS ")[2]
            current = name.strip()
            found[current] = [instruction]
        else:
            found[current].append(instruction)
    return found


def values(stage: list[dict[str, Any]], kind: str) -> list[str]:
    return [str(i["value"]) for i in stage if i["instruction"] == kind]


def base_of(stage: list[dict[str, Any]]) -> str:
    return str(stage[0]["value"]).partition(" AS ")[0].strip()


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: patterns in order, the last that matches the path or one of its
    parent directories decides; ``!`` re-includes; ``*`` stays inside one segment."""
    excluded = False
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


def test_one_dockerfile_builds_a_cpu_and_a_gpu_image() -> None:
    found = stages()
    [flavour] = [v for v in values(found[""], "ARG") if v.startswith("FLAVOUR=")]
    assert flavour == "FLAVOUR=cpu"
    final = list(found)[-1]
    assert base_of(found[final]) == "base-${FLAVOUR}"
    for choice in ("cpu", "gpu"):
        assert f"base-{choice}" in found, choice
    assert base_of(found["base-gpu"]).startswith("nvidia/cuda:")
    assert base_of(found["base-cpu"]).startswith("python:3.11")
    # What each flavour installs: the project, with pyproject's gpu extra on CUDA.
    extras = {name: values(found[name], "ENV") for name in ("base-cpu", "base-gpu")}
    assert extras == {"base-cpu": ['LLMOS_IMAGE_EXTRAS=""'],
                      "base-gpu": ['LLMOS_IMAGE_EXTRAS="[gpu]"']}
    assert any('pip install --no-cache-dir ".${LLMOS_IMAGE_EXTRAS}"' in run
               for run in values(found[final], "RUN"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = " ".join(project["optional-dependencies"]["gpu"])
    assert "sglang" in gpu and "nvidia-ml-py" in gpu  # NVML's bindings
    # The CPU flavour takes torch's CPU build (PyPI's default wheel carries CUDA).
    assert any("download.pytorch.org/whl/cpu" in a for a in values(found["base-cpu"], "ARG"))


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    found = stages()
    final = list(found)[-1]
    copied: list[str] = []
    for value in values(found[final], "COPY"):
        *sources, _destination = value.split()
        copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), source
        for path in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
            if "__pycache__" not in path.parts:
                assert not dockerignore_excludes(str(path.relative_to(ROOT))), path
    # Everything `pip install .` builds from is copied: the packages and the readme.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= set(copied)
    # And what must never reach an image stays out of the context.
    for private in (".env", ".venv/bin/python", "tests/test_compose.py", ".git/config",
                    "llmos_jobs/__pycache__/x.cpython-311.pyc", "models/big.safetensors"):
        assert dockerignore_excludes(private), private


def test_the_image_runs_as_a_non_root_user_with_a_health_check() -> None:
    found = stages()
    final = found[list(found)[-1]]
    [user] = values(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    assert any(f"useradd --system --uid {uid}" in run for run in values(final, "RUN"))
    # USER comes after every RUN that installs (they need root) and before CMD.
    kinds = [i["instruction"] for i in final]
    assert kinds.index("USER") > max(n for n, k in enumerate(kinds) if k == "RUN")
    assert any("LLMOS_DATA_DIR=/data" in env for env in values(final, "ENV"))
    [healthcheck] = values(final, "HEALTHCHECK")
    assert "CMD" in healthcheck and "--start-period" in healthcheck
    assert healthcheck.split("CMD", 1)[1].strip() == '["llmos", "health", "api"]'
    [command] = values(final, "CMD")
    assert command.startswith('["llmos", "api"')


def test_the_health_check_command_is_the_clis_and_fails_when_nothing_answers() -> None:
    """`llmos health api` parses and reports unhealthy (exit 1, not a usage error's 2)
    when no API listens; tests/test_compose.py sees it report healthy."""
    done = subprocess.run(
        [sys.executable, "-m", "llmos_jobs.cli.main", "health", "api", "--url",
         f"http://127.0.0.1:{free_port()}", "--timeout", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "unhealthy" in done.stderr
