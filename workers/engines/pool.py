"""The engines of one worker process, loaded on first use (never in a parent before fork)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from llmos_jobs.db import registry
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import RegisteredModel
from llmos_jobs.settings import Settings
from schemas.model import EngineKind
from workers.engines.base import Engine, EngineStats
from workers.engines.noop import NoopEngine


@dataclass(frozen=True)
class EngineChoice:
    """A worker's override of the registered engine (``llmos worker --engine``)."""

    kind: EngineKind | None = None
    sglang_url: str | None = None
    mem_fraction_static: float = 0.85


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_engine(model: RegisteredModel, settings: Settings,
                 choice: EngineChoice | None = None) -> Engine:
    choice = choice or EngineChoice()
    kind = choice.kind or EngineKind(model.engine)
    if kind == EngineKind.sglang:
        from workers.engines.sglang import SGLangEngine

        # The worker is pinned with CUDA_VISIBLE_DEVICES: its one GPU is device 0.
        return SGLangEngine(model.name, model.path, gpu=0,
                            mem_fraction_static=choice.mem_fraction_static,
                            enable_priority=True)
    if kind == EngineKind.sglang_http:
        from workers.engines.sglang_http import SGLangServerEngine

        if choice.sglang_url is None:
            raise ValueError(f"model {model.name!r}: the sglang-http engine needs "
                             "`llmos worker --sglang-url URL`")
        return SGLangServerEngine(model.name, choice.sglang_url,
                                  api_key=_secret(settings.sglang_api_key),
                                  admin_api_key=_secret(settings.sglang_admin_api_key))
    if kind == EngineKind.noop:
        return NoopEngine(model.name, delay_s=settings.noop_delay_ms / 1000,
                          echo=settings.noop_echo, log=settings.noop_log,
                          gate=settings.noop_gate)
    if kind == EngineKind.transformers:
        # Imported here like the SGLang engines: torch and transformers take seconds to
        # import, which a worker of another engine (and every restart of it) never pays.
        from workers.engines.transformers import BatchingOptions, TransformersEngine

        return TransformersEngine(model.name, model.path, BatchingOptions(
            max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000,
            cache_budget_bytes=settings.prefix_cache_mb << 20,
        ))
    raise ValueError(f"model {model.name!r} names unknown engine {kind!r}")


class EnginePool:
    """Model name → engine. ``on_change`` hears the names of the loaded models."""

    def __init__(self, settings: Settings, database: Database,
                 on_change: Callable[[list[str]], None] | None = None,
                 choice: EngineChoice | None = None) -> None:
        self._settings = settings
        self._database = database
        self._choice = choice
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._on_change = on_change

    def _engine(self, model: RegisteredModel) -> Engine:
        with self._lock:
            engine = self._engines.get(model.name)
            if engine is None:
                engine = build_engine(model, self._settings, self._choice)
                self._engines[model.name] = engine
            return engine

    def get(self, name: str) -> Engine:
        """The loaded engine of model ``name``, loading it now if needed. The registry is
        read only when the model is not loaded yet."""
        with self._lock:
            engine = self._engines.get(name)
        if engine is None or not engine.loaded:
            with self._database.session() as session:
                model = registry.get_model(session=session, name=name)
            engine = self._engine(model)
            if not engine.loaded:
                engine.load()
                self._changed()
        return engine

    def warmup(self, name: str) -> Engine:
        engine = self.get(name)
        engine.warmup()
        return engine

    def unload(self, name: str) -> bool:
        with self._lock:
            engine = self._engines.pop(name, None)
        if engine is None:
            return False
        engine.unload()
        self._changed()
        return True

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(n for n, e in self._engines.items() if e.loaded)

    def stats(self) -> dict[str, EngineStats]:
        with self._lock:
            engines = dict(self._engines)
        return {name: e.stats() for name, e in engines.items() if e.loaded}

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.loaded())
