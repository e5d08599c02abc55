"""Model references, keep_alive durations and content hashes, against values worked
out by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from broker_config import language_queue
from llmos_jobs.model_content import content_of, same_architecture
from schemas.model import keep_alive_seconds, split_model_ref


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("90", 90.0), ("0", 0.0), ("-1", -1.0),
    ("1.5m", 90.0), ("-5m", -300.0)])
def test_keep_alive_reads_ollama_durations(text: str, seconds: float) -> None:
    assert keep_alive_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "5d", "forever"])
def test_keep_alive_refuses_what_is_no_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        keep_alive_seconds(text)


def test_a_model_reference_is_a_name_and_an_optional_version() -> None:
    assert split_model_ref("demo") == ("demo", None)
    assert split_model_ref("llama-3.1-8b@12") == ("llama-3.1-8b", 12)
    for bad in ("demo@", "demo@x", "@1", "a@1@2"):
        with pytest.raises(ValueError, match="NAME or NAME@VERSION"):
            split_model_ref(bad)
    assert language_queue("demo@3") == language_queue("demo") == "lang.demo"


def test_the_content_hash_follows_the_weights_and_the_engine(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 64}')
    weights = bytearray(3 * 2**20 + 5)
    (model / "model.safetensors").write_bytes(bytes(weights))
    first = content_of(str(model), "transformers")
    assert first.size_bytes == len(weights)
    assert content_of(str(model), "transformers") == first
    assert content_of(str(model), "noop").content_hash != first.content_hash
    weights[-1] = 1  # the last MiB is sampled
    (model / "model.safetensors").write_bytes(bytes(weights))
    assert content_of(str(model), "transformers").content_hash != first.content_hash
    remote = content_of("http://sglang:30000", "sglang-http")
    assert remote.size_bytes == 0
    assert remote == content_of("http://sglang:30000", "sglang-http")


def _copy(source: Path, target: Path, **config: object) -> Path:
    """A copy of the model at ``source`` with ``config`` written into its config.json."""
    shutil.copytree(source, target)
    values = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**values, **config}))
    return target


def test_checkpoints_of_one_model_share_an_architecture(
        demo_model_dir: Path, tmp_path: Path) -> None:
    from llmos_jobs.demo_model import create_demo_model

    other = create_demo_model(tmp_path / "seed1", dtype="float64", seed=1)
    assert content_of(str(other), "transformers") != content_of(str(demo_model_dir),
                                                                "transformers")
    assert same_architecture(str(demo_model_dir), str(other)) is None
    # Fields that name, date or seed a checkpoint shape nothing.
    renamed = _copy(other, tmp_path / "renamed", _name_or_path="org/demo-v2",
                    transformers_version="9.9.9", initializer_range=0.02)
    assert same_architecture(str(demo_model_dir), str(renamed)) is None


def test_a_changed_shape_or_tokenizer_is_named(demo_model_dir: Path, tmp_path: Path) -> None:
    old = str(demo_model_dir)
    wider = _copy(demo_model_dir, tmp_path / "wider", hidden_size=128)
    assert same_architecture(old, str(wider)) == "config.json differs: hidden_size 64 -> 128"
    vocab = json.loads((demo_model_dir / "config.json").read_text())["vocab_size"]
    larger = _copy(demo_model_dir, tmp_path / "vocab", vocab_size=vocab + 1)
    assert same_architecture(old, str(larger)) == (
        f"config.json differs: vocab_size {vocab} -> {vocab + 1}")
    retrained = _copy(demo_model_dir, tmp_path / "tokenizer")
    (retrained / "tokenizer.json").write_text("{}")
    assert same_architecture(old, str(retrained)) == "the tokenizer differs: tokenizer.json"
    templated = _copy(demo_model_dir, tmp_path / "template")
    (templated / "chat_template.jinja").unlink()
    assert same_architecture(old, str(templated)) == f"chat_template.jinja is only in {old}"
    assert same_architecture(old, str(tmp_path / "nowhere")) == (
        f"{tmp_path / 'nowhere'} has no config.json here")
