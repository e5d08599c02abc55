"""A strict loader of Kubernetes manifests into the official client's typed models:
every key must be a field of the model it lands in (the models' ``attribute_map``),
every value of the type the model declares (``openapi_types``), and the models' own
validation refuses what they refuse (missing required fields, values outside an enum).
The API server is more lenient in one way (it drops unknown fields with a warning);
this is kubeconform's strict mode, without a schema download."""

from __future__ import annotations

import re
from typing import Any

from kubernetes import client


class ManifestError(ValueError):
    pass


_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "datetime": (str,), "date": (str,),
}


def model_class(api_version: str, kind: str) -> type:
    """V1Deployment for apps/v1 Deployment, V1Service for v1 Service, ..."""
    version = api_version.rsplit("/", 1)[-1]
    name = version[0].upper() + version[1:] + kind
    cls = getattr(client.models, name, None)
    if cls is None:
        raise ManifestError(f"no model {name} for {api_version} {kind}")
    return cls  # type: ignore[no-any-return]


def _convert(value: Any, type_name: str, path: str) -> Any:
    if value is None:
        return None
    if (listed := re.fullmatch(r"list\[(.+)\]", type_name)) is not None:
        if not isinstance(value, list):
            raise ManifestError(f"{path}: a list expected, got {value!r}")
        return [_convert(v, listed[1], f"{path}[{n}]") for n, v in enumerate(value)]
    # "dict(str, str)" in older clients, "dict[str, str]" in newer ones.
    if (mapped := re.fullmatch(r"dict[(\[](\w+), (.+)[)\]]", type_name)) is not None:
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: a mapping expected, got {value!r}")
        return {k: _convert(v, mapped[2], f"{path}.{k}") for k, v in value.items()}
    if type_name == "object":  # IntOrString, free-form
        return value
    if type_name in _PRIMITIVES:
        # bool is an int in Python, never in Kubernetes.
        if not isinstance(value, _PRIMITIVES[type_name]) or (
                type_name != "bool" and isinstance(value, bool)):
            raise ManifestError(f"{path}: {type_name} expected, got {value!r}")
        return value
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: an object ({type_name}) expected, got {value!r}")
    return load_model(value, getattr(client.models, type_name), path)


def load_model(data: dict[str, Any], cls: type, path: str) -> Any:
    by_json_name = {json_name: attr for attr, json_name in cls.attribute_map.items()}  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in by_json_name:
            raise ManifestError(f"{path}.{key}: unknown field of {cls.__name__}")
        attr = by_json_name[key]
        kwargs[attr] = _convert(value, cls.openapi_types[attr], f"{path}.{key}")  # type: ignore[attr-defined]
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the model's own validation
        raise ManifestError(f"{path}: {exc}") from None


def load_manifest(document: dict[str, Any], where: str) -> Any:
    cls = model_class(document["apiVersion"], document["kind"])
    return load_model(document, cls, f"{where}:{document['kind']}")
