"""The README's container and Kubernetes commands name what exists: compose services
and profiles, files to copy, the kustomize base, its namespace, Deployments and
Services, the Dockerfile's flavours, and `llmos` commands the CLI accepts. (They
cannot run here: no Docker engine, no cluster.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.compose_file import raw_compose

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### In containers: compose and Kubernetes"


def commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split(HEADING, 1)[1].split("\n#", 1)[0]
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split(" # ", 1)[0].strip()
            if line:
                found.append(shlex.split(line.strip("()").replace("&&", ";")))
    return found


def k8s_objects() -> dict[tuple[str, str], dict[str, object]]:
    base = ROOT / "deploy" / "k8s"
    return {(d["kind"], d["metadata"]["name"]): d for path in base.glob("*.yaml")
            if path.name != "kustomization.yaml"
            for d in yaml.safe_load_all(path.read_text()) if d}


def _check_kubectl(words: list[str], namespace: str,
                   objects: dict[tuple[str, str], dict[str, object]]) -> None:
    assert words[words.index("-n") + 1] == namespace, words
    for word in words:
        kind = {"deploy": "Deployment", "svc": "Service"}.get(word.split("/")[0])
        if kind is not None:
            assert (kind, word.split("/")[1]) in objects, words


def test_the_deploy_section_names_what_exists() -> None:
    services = raw_compose()["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    namespace = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())["namespace"]
    objects = k8s_objects()
    llmos_commands = []
    for words in commands():
        if words[:2] == ["docker", "compose"]:
            if "--profile" in words:
                assert words[words.index("--profile") + 1] in profiles, words
            if "exec" in words:
                service = words[words.index("exec") + 1]
                assert service in services, words
                llmos_commands.append(words[words.index(service) + 1:])
        elif words[:2] == ["docker", "build"]:
            flavour = words[words.index("--build-arg") + 1].split("=")[1]
            assert f"AS base-{flavour}" in (ROOT / "Dockerfile").read_text(), words
        elif words[0] == "cp":
            assert (ROOT / words[1]).is_file(), words
        elif words[:3] == ["kubectl", "apply", "-k"]:
            assert (ROOT / words[3] / "kustomization.yaml").is_file(), words
        elif words[0] == "kubectl":
            _check_kubectl(words, namespace, objects)
            if "--" in words:
                llmos_commands.append(words[words.index("--") + 1:])
    assert llmos_commands
    for command in llmos_commands:
        assert command[0] == "llmos"
        # --help after the arguments: Click still refuses an unknown command or option.
        done = subprocess.run([sys.executable, "-m", "llmos_jobs.cli.main", *command[1:],
                               "--help"], capture_output=True, text=True, timeout=120,
                              cwd=ROOT)
        assert done.returncode == 0, (command, done.stderr)
