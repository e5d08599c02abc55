"""What a model directory contains, as one hash and one size.

The hash covers the config, the tokenizer files, the weight index, and each weight
file's name, size and three samples of its bytes (its first, middle and last MiB).
Reading every byte of a 140 GB model on each registration is not affordable; any
training step or different seed changes bytes in every sample, so two versions that
differ in weights differ in hash. The size is the weight files' bytes: what a worker's
model pool counts for the model (estimated on disk, not measured in memory).

``same_architecture`` says whether one version can take another's place by loading its
weights into the same network, keeping the tokenizer (an in-place update)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

# Files hashed whole: small, and any change in them changes the model's behaviour.
_WHOLE = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "tokenizer.model", "special_tokens_map.json", "vocab.json", "merges.txt",
          "chat_template.jinja", "model.safetensors.index.json",
          "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SAMPLE = 1 << 20


@dataclass(frozen=True)
class ModelContent:
    content_hash: str
    size_bytes: int


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _sample(digest: hashlib._Hash, path: Path, size: int) -> None:
    with path.open("rb") as handle:
        for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE))


def content_of(path: str, engine: str) -> ModelContent:
    """The hash and weight bytes of the model at ``path`` served by ``engine``. A path
    that is no directory here (a remote server's model) is known by its name alone."""
    digest = hashlib.sha256(f"engine={engine}\n".encode())
    directory = Path(path)
    if not directory.is_dir():
        digest.update(f"path={path}\n".encode())
        return ModelContent(digest.hexdigest(), 0)
    for name in _WHOLE:
        file = directory / name
        if file.is_file():
            digest.update(f"file={name}\n".encode())
            digest.update(file.read_bytes())
    total = 0
    for weights in _weight_files(directory):
        size = weights.stat().st_size
        total += size
        digest.update(f"weights={weights.name}:{size}\n".encode())
        _sample(digest, weights, size)
    return ModelContent(digest.hexdigest(), total)


# Fields of config.json and generation_config.json that name, date or seed a
# checkpoint without shaping its network or its decoding.
_NOT_SHAPE = frozenset({"_name_or_path", "_commit_hash", "_from_model_config",
                        "transformers_version", "initializer_range", "use_cache"})
# Files an in-place weight update keeps from the loaded version: the engine goes on
# tokenizing, rendering chat and stopping with them.
_KEPT = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
         "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
         "chat_template.jinja")


def _shape(file: Path) -> dict[str, object]:
    """The fields of a config file that shape the model (none when it is absent)."""
    if not file.is_file():
        return {}
    config = json.loads(file.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{file} is not a JSON object")
    return {key: value for key, value in config.items() if key not in _NOT_SHAPE}


def _value(shape: dict[str, object], key: str) -> str:
    return repr(shape[key]) if key in shape else "absent"


def _config_change(old: Path, new: Path, name: str) -> str | None:
    try:
        old_shape, new_shape = _shape(old / name), _shape(new / name)
    except ValueError as exc:  # json.JSONDecodeError included
        return f"{name} does not read: {exc}"
    changed = sorted(key for key in old_shape.keys() | new_shape.keys()
                     if (key in old_shape) != (key in new_shape)
                     or old_shape.get(key) != new_shape.get(key))
    if not changed:
        return None
    shown = ", ".join(f"{key} {_value(old_shape, key)} -> {_value(new_shape, key)}"
                      for key in changed[:3])
    more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
    return f"{name} differs: {shown}{more}"


def same_architecture(old_path: str, new_path: str) -> str | None:
    """None when the model at ``new_path`` can take the place of the one at ``old_path``
    by loading its weights into the same network (an engine's ``update_weights``);
    else why not. Their config.json and generation_config.json must agree but for
    fields that shape nothing, and their tokenizer files must be byte for byte the
    same: the update keeps the loaded version's."""
    old, new = Path(old_path), Path(new_path)
    for directory in (old, new):
        if not (directory / "config.json").is_file():
            return f"{directory} has no config.json here"
    for name in ("config.json", "generation_config.json"):
        change = _config_change(old, new, name)
        if change is not None:
            return change
    for name in _KEPT:
        before, after = old / name, new / name
        if before.is_file() != after.is_file():
            return f"{name} is only in {old if before.is_file() else new}"
        if before.is_file() and before.read_bytes() != after.read_bytes():
            return f"the tokenizer differs: {name}"
    return None
