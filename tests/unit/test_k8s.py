"""deploy/k8s, checked without a cluster: each manifest loads into the official
`kubernetes` client's typed models with unknown fields refused, the KEDA ScaledObject
matches the fields KEDA documents, the kustomization lists every file, and the names
the manifests use of one another exist (Services and budgets select pods, secret and
config keys exist, probes use declared ports, command variables are defined). The
workloads keep the promises docs/deploy.md makes: one control replica, never two at
once; one GPU per worker pod named after the pod; time to drain a job; non-root."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from broker_config import celery_config
from broker_config.celery_config import JOB_TIME_LIMIT_S
from llmos_jobs.metrics import exported_names
from tests.support.k8s_models import ManifestError, load_manifest

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s"
KEDA_SCHEMA = ROOT / "tests" / "support" / "data" / "keda-scaledobject.schema.json"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Kustomization fields this base may use (kustomize's own names).
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources",
                        "secretGenerator", "configMapGenerator", "generatorOptions", "images"}


@lru_cache(maxsize=1)
def _parsed() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((path.name, document) for path in sorted(BASE.glob("*.yaml"))
                 if path.name != "kustomization.yaml"
                 for document in yaml.safe_load_all(path.read_text()) if document is not None)


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every manifest (parsed once; a test that changes one changes a deep copy)."""
    yield from _parsed()


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return loaded


def workloads() -> dict[str, dict[str, Any]]:
    return {name: d for kind in WORKLOAD_KINDS for name, d in by_kind(kind).items()}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, workload in workloads().items():
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, container, spec


def secret_keys() -> set[str]:
    """The keys of the Secret the kustomization generates (from secrets.env, whose
    committed template is secrets.env.example)."""
    [generator] = kustomization()["secretGenerator"]
    assert generator["name"] == "llmos-secrets" and generator["envs"] == ["secrets.env"]
    lines = (BASE / "secrets.env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


# --- files and schemas -----------------------------------------------------------------

def test_kustomization_lists_every_manifest_and_keeps_the_secrets_file_out_of_git() -> None:
    base = kustomization()
    assert set(base) <= KUSTOMIZATION_FIELDS, set(base) - KUSTOMIZATION_FIELDS
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(base["resources"]) == sorted(files)
    assert len(set(base["resources"])) == len(base["resources"])
    assert "deploy/k8s/secrets.env" in (ROOT / ".gitignore").read_text().splitlines()
    namespaces = by_kind("Namespace")
    assert list(namespaces) == [base["namespace"]]


def test_every_manifest_loads_into_the_typed_models_with_unknown_fields_refused() -> None:
    kinds = []
    for where, document in documents():
        kinds.append(document["kind"])
        if document["apiVersion"].startswith("keda.sh/"):
            continue
        load_manifest(document, where)
    assert {"Deployment", "StatefulSet", "Service", "Job", "PodDisruptionBudget",
            "ConfigMap", "PersistentVolumeClaim", "ScaledObject"} <= set(kinds)


def test_the_strict_loader_refuses_what_kubernetes_would_not_take() -> None:
    api = by_kind("Deployment")["llmos-api"]
    misspelt = copy.deepcopy(api)
    container = pod_spec(misspelt)["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(ManifestError, match="livenesProbe: unknown field of V1Container"):
        load_manifest(misspelt, "api.yaml")
    nameless = copy.deepcopy(api)
    del pod_spec(nameless)["containers"][0]["name"]
    with pytest.raises(ManifestError, match="name"):
        load_manifest(nameless, "api.yaml")
    wrong_type = copy.deepcopy(api)
    pod_spec(wrong_type)["containers"][0]["env"][0]["value"] = 8000
    with pytest.raises(ManifestError, match="str expected"):
        load_manifest(wrong_type, "api.yaml")


def test_the_scaled_object_has_only_fields_keda_documents() -> None:
    validator = Draft7Validator(json.loads(KEDA_SCHEMA.read_text()))
    [scaled] = by_kind("ScaledObject").values()
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(scaled)]
    assert not errors, errors
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["triggers"][0]["metadata"]["listname"] = "x"
    assert list(validator.iter_errors(misspelt))


# --- cross-references ------------------------------------------------------------------

def test_services_and_disruption_budgets_select_pods_that_exist() -> None:
    pods = {name: pod_labels(w) for name, w in workloads().items()}

    def selected(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pods.items() if selector.items() <= labels.items()]

    for name, service in by_kind("Service").items():
        [target] = selected(service["spec"]["selector"])
        ports = {p["name"]: p["containerPort"] for c in pod_spec(workloads()[target])
                 ["containers"] for p in c.get("ports", [])}
        for port in service["spec"].get("ports", []):
            target_port = port["targetPort"]
            assert target_port in ports or target_port in ports.values(), (name, port)
    for name, budget in by_kind("PodDisruptionBudget").items():
        assert selected(budget["spec"]["selector"]["matchLabels"]), name
    for name, workload in workloads().items():
        if workload["kind"] != "Job":
            assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels(
                workload).items(), name
    for name, stateful in by_kind("StatefulSet").items():
        governing = by_kind("Service")[stateful["spec"]["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None", name


def _check_env(name: str, container: dict[str, Any], config: dict[str, Any],
               secrets: set[str]) -> set[str]:
    """The container's env sources exist; the names it defines."""
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == config["metadata"]["name"], name
        else:
            assert source["secretRef"]["name"] == "llmos-secrets", name
    defined = set()
    for variable in container.get("env", []):
        defined.add(variable["name"])
        ref = variable.get("valueFrom", {})
        if "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == "llmos-secrets", name
            assert ref["secretKeyRef"]["key"] in secrets, (name, ref)
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == config["metadata"]["name"], name
            assert ref["configMapKeyRef"]["key"] in config["data"], (name, ref)
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", (name, ref)
    return defined


def test_secrets_config_volumes_and_command_variables_exist() -> None:
    secrets = secret_keys()
    [config] = by_kind("ConfigMap").values()
    claims = set(by_kind("PersistentVolumeClaim"))
    for name, container, spec in containers():
        defined = _check_env(name, container, config, secrets)
        # Kubernetes expands $(VAR) in command and args from the container's env only.
        for word in container.get("command", []) + container.get("args", []):
            for variable in re.findall(r"\$\((\w+)\)", word):
                assert variable in defined, (name, variable)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (name, mount)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name


def probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            yield kind, container[kind]


def test_probes_use_real_health_checks() -> None:
    probed = set()
    for name, container, _ in containers():
        ports = {p["name"] for p in container.get("ports", [])} | {
            p["containerPort"] for p in container.get("ports", [])}
        env = {v["name"] for v in container.get("env", [])}
        for kind, probe in probes(container):
            probed.add(name)
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] in ports, (name, kind)
                assert probe["httpGet"]["path"] in ("/healthz", "/healthcheck"), (name, kind)
            else:
                command = " ".join(probe["exec"]["command"])
                # A Celery ping under the name the container gave its process.
                assert 'llmos health worker "$POD_NAME"' in command, (name, kind)
                assert "POD_NAME" in env and "$(POD_NAME)" in container["command"], name
                assert probe["timeoutSeconds"] > 10, (name, kind)  # the ping's own wait
    assert probed == set(workloads()) - {"llmos-migrate"}


# --- what the workloads promise ----------------------------------------------------------

def test_control_runs_once_and_is_replaced_not_rolled() -> None:
    control = by_kind("Deployment")["llmos-control"]
    assert control["spec"]["replicas"] == 1
    assert control["spec"]["strategy"] == {"type": "Recreate"}
    budgets = [b["spec"]["selector"]["matchLabels"] for b in
               by_kind("PodDisruptionBudget").values()]
    assert not [b for b in budgets if b.items() <= pod_labels(control).items()]


def test_gpu_workers_take_one_gpu_each_and_the_pods_name() -> None:
    [gpu] = by_kind("StatefulSet").values()
    [worker] = pod_spec(gpu)["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"] == "llmos-jobs:gpu"
    command = worker["command"]
    assert command[command.index("--gpu") + 1] == "0"
    assert command[command.index("--name") + 1] == "$(POD_NAME)"
    [pod_name] = [v for v in worker["env"] if v["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    others = [c for n, c, _ in containers() if n != gpu["metadata"]["name"]]
    assert not [c for c in others if "nvidia.com/gpu" in c.get("resources", {}).get(
        "limits", {})]
    assert {c["image"] for c in others} == {"llmos-jobs:cpu"}


def test_workers_have_time_to_finish_a_job_before_they_are_killed() -> None:
    hard_limit = celery_config(broker_url="redis://", time_limit_s=JOB_TIME_LIMIT_S)[
        "task_time_limit"]
    for name, container, spec in containers():
        if "worker" in container["command"]:
            assert spec["terminationGracePeriodSeconds"] > hard_limit, name
            assert "LLMOS_JOB_TIME_LIMIT_S" not in {v["name"] for v in container["env"]}


def test_every_pod_runs_as_the_images_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [uid] = re.findall(r"^USER (\d+)", dockerfile, flags=re.MULTILINE)
    for name, workload in workloads().items():
        context = pod_spec(workload)["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == int(uid), name
    for name, container, _ in containers():
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_the_scaled_object_scales_on_the_gpu_models_workers_needed() -> None:
    [scaled] = by_kind("ScaledObject").values()
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    stateful = by_kind(target["kind"])[target["name"]]
    assert target["envSourceContainerName"] in {c["name"]
                                                for c in pod_spec(stateful)["containers"]}
    [config] = by_kind("ConfigMap").values()
    model = config["data"]["LLMOS_GPU_MODEL"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    # The query names a gauge llmos exports, for the model the GPU workers serve, and
    # reduces it to one value (as KEDA requires) whichever processes export it.
    query = metadata["query"]
    [(function, name, labels)] = re.findall(r"^(\w+)\((\w+)\{(.*)\}\)$", query)
    assert function == "max" and name in exported_names()
    assert name == "llmos_model_workers_needed"
    assert labels == f'model="{model}"'
    # The gauge counts workers: one per replica.
    assert (trigger["metricType"], metadata["threshold"]) == ("AverageValue", "1")
    assert metadata["serverAddress"].startswith("http")
    assert spec["minReplicaCount"] >= 1


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def test_kustomize_builds_the_base_and_what_it_builds_still_loads(tmp_path: Path) -> None:
    """What `kubectl apply -k` would send: the base built by kustomize (where kubectl or
    kustomize is installed), the generated Secret included, every object in the
    namespace and still valid."""
    command = _kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    base = tmp_path / "k8s"
    shutil.copytree(BASE, base)
    shutil.copy(base / "secrets.env.example", base / "secrets.env")
    built = subprocess.run([*command, str(base)], capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr
    objects = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
    assert len(objects) == len(list(documents())) + 1  # the generated Secret
    namespace = kustomization()["namespace"]
    for document in objects:
        metadata = document["metadata"]
        assert metadata["labels"]["app.kubernetes.io/part-of"] == "llmos"
        if document["kind"] != "Namespace":
            assert metadata["namespace"] == namespace, metadata["name"]
        if not document["apiVersion"].startswith("keda.sh/"):
            load_manifest(document, "kustomize build")
    [secret] = [d for d in objects if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "llmos-secrets"
    assert set(secret["data"]) == secret_keys()
