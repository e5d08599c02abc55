"""The benchmark models, built once into a local directory (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

from llmos_jobs.demo_model import create_demo_model

CACHE = Path(os.environ.get("LLMOS_BENCH_MODELS", Path.home() / ".cache" / "llmos-bench"))


def model_dir(size: str) -> Path:
    """``tiny`` (the demo model) or ``base`` (~100M parameters)."""
    # The recipe's version is in the name: a changed recipe builds a new model.
    path = CACHE / f"llama-{size}-v2"
    if not (path / "model.safetensors").exists():
        print(f"building the {size} model in {path} ...", flush=True)
        create_demo_model(path, size=size)
    return path


def use_data_dir(path: str) -> None:
    """This process uses ``path`` as its data directory, as the workers it starts do: they
    share its embedded encryption key."""
    from llmos_jobs.settings import get_settings

    os.environ["LLMOS_DATA_DIR"] = path
    get_settings.cache_clear()
