"""A worker's engine pool taking a new version's weights in place of the old one's, on
the real transformers engine and the demo models: the texts after the update are
those of a solo greedy run of the new version's directory; a failed update, a version
in use or another tokenizer leave the old version loaded as it was."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from llmos_jobs.db import versions
from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database, session_scope
from llmos_jobs.model_content import content_of
from llmos_jobs.settings import Settings
from workers.engines.base import Engine, EngineRequest, EngineSampling
from workers.engines.pool import EnginePool, WeightUpdateFailed
from workers.engines.transformers import TransformersEngine

NAME = "pooled"
PROMPT = "the worker loads a model for the queue"
MAX_TOKENS = 8


@cache
def reference(path: str) -> str:
    """A solo greedy run of the model at ``path``."""
    engine = TransformersEngine("reference", path)
    try:
        return _text(engine)
    finally:
        engine.unload()


def _text(engine: Engine) -> str:
    [done] = engine.generate([EngineRequest(EngineSampling(MAX_TOKENS), prompt=PROMPT)])
    return done.text


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> dict[str, Path]:
    """The demo model, a checkpoint of it with other weights (same tokenizer), one with
    another tokenizer, and a copy of it whose weights do not read."""
    from llmos_jobs.demo_model import create_demo_model

    root = tmp_path_factory.mktemp("pool-models")
    broken = root / "broken"
    shutil.copytree(demo_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    return {
        "old": demo_model_dir,
        "new": create_demo_model(root / "seed1", dtype="float64", seed=1),
        "other-tokenizer": create_demo_model(root / "tok1", dtype="float64", seed=1,
                                             tokenizer_seed=1),
        "broken": broken,
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'llmos.db'}")


@pytest.fixture
def database(settings: Settings) -> Database:
    db = Database.from_settings(settings)
    upgrade(db)
    return db


@pytest.fixture
def pool(settings: Settings, database: Database) -> Iterator[EnginePool]:
    pool = EnginePool(settings, database)
    yield pool
    pool.unload(NAME)


def _register(database: Database, path: Path) -> int:
    content = content_of(str(path), "transformers")
    with session_scope(database) as session:
        return versions.register_version(
            session=session, name=NAME, path=str(path), engine="transformers",
            context_length=2048, content_hash=content.content_hash,
            size_bytes=content.size_bytes, keep_alive="-1").version.version


def test_the_idle_engine_takes_the_new_weights_in_place(
        pool: EnginePool, database: Database, models: dict[str, Path]) -> None:
    old = _register(database, models["old"])
    new = _register(database, models["new"])
    assert reference(str(models["old"])) != reference(str(models["new"]))
    engine = pool.get(NAME, old)
    assert _text(engine) == reference(str(models["old"]))

    update = pool.update_in_place(NAME, old, new)

    assert update.in_place and update.reload_reason is None
    assert pool.loaded() == [f"{NAME}@{new}"]
    assert pool.get(NAME, new) is engine  # the same engine, not a second one beside it
    assert _text(engine) == reference(str(models["new"]))
    assert pool.warmup(NAME, new).done.completion_tokens > 0
    shown = pool.report()[f"{NAME}@{new}"]
    assert shown["size_bytes"] == content_of(str(models["new"]), "transformers").size_bytes


def test_a_failed_update_leaves_the_old_version_serving(
        pool: EnginePool, database: Database, models: dict[str, Path]) -> None:
    old = _register(database, models["old"])
    broken = _register(database, models["broken"])
    engine = pool.get(NAME, old)

    with pytest.raises(WeightUpdateFailed, match=f"still serves {NAME}@{old}"):
        pool.update_in_place(NAME, old, broken)

    assert pool.loaded() == [f"{NAME}@{old}"]
    assert pool.get(NAME, old) is engine
    assert _text(engine) == reference(str(models["old"]))


def test_another_tokenizer_loads_the_new_version_beside_the_old(
        pool: EnginePool, database: Database, models: dict[str, Path]) -> None:
    old = _register(database, models["old"])
    new = _register(database, models["other-tokenizer"])
    engine = pool.get(NAME, old)

    update = pool.update_in_place(NAME, old, new)

    assert not update.in_place
    assert update.reload_reason == "the tokenizer differs: tokenizer.json"
    assert pool.loaded() == [f"{NAME}@{old}"]  # nothing changed yet: get loads it
    assert pool.get(NAME, new) is not engine
    assert pool.loaded() == [f"{NAME}@{old}", f"{NAME}@{new}"]
    assert _text(pool.get(NAME, new)) == reference(str(models["other-tokenizer"]))
    assert _text(engine) == reference(str(models["old"]))


def test_a_version_in_use_or_not_loaded_is_not_updated_in_place(
        pool: EnginePool, database: Database, models: dict[str, Path]) -> None:
    old = _register(database, models["old"])
    new = _register(database, models["new"])
    assert pool.update_in_place(NAME, old, new).reload_reason == f"{NAME}@{old} is not loaded here"
    engine = pool.get(NAME, old)
    with pool.in_use(NAME, old):
        update = pool.update_in_place(NAME, old, new)
    assert update.reload_reason == f"{NAME}@{old} has 1 job(s) in flight"
    assert pool.loaded() == [f"{NAME}@{old}"]
    assert _text(engine) == reference(str(models["old"]))
