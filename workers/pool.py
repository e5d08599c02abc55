"""The engines of one worker process, loaded on first use (never in a parent before fork)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from llmos_jobs.db import registry
from llmos_jobs.db.models import RegisteredModel
from llmos_jobs.db.session import session_scope
from llmos_jobs.settings import get_settings
from schemas.model import EngineKind
from workers.engine import Engine
from workers.noop import NoopEngine
from workers.transformers_engine import TransformersEngine


def build_engine(model: RegisteredModel) -> Engine:
    if model.engine == EngineKind.noop:
        return NoopEngine(model.name, delay_s=get_settings().noop_delay_ms / 1000)
    if model.engine == EngineKind.transformers:
        return TransformersEngine(model.name, model.path)
    raise ValueError(f"model {model.name!r} names unknown engine {model.engine!r}")


class EnginePool:
    """Model name → engine. ``on_change`` hears the names of the loaded models."""

    def __init__(self, on_change: Callable[[list[str]], None] | None = None) -> None:
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._on_change = on_change

    def _engine(self, model: RegisteredModel) -> Engine:
        with self._lock:
            engine = self._engines.get(model.name)
            if engine is None:
                engine = self._engines[model.name] = build_engine(model)
            return engine

    def get(self, name: str) -> Engine:
        """The loaded engine of model ``name``, loading it now if needed. The registry is
        read only when the model is not loaded yet."""
        with self._lock:
            engine = self._engines.get(name)
        if engine is None or not engine.loaded:
            with session_scope() as session:
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

    def device_of(self, name: str) -> str:
        with self._lock:
            engine = self._engines.get(name)
        return engine.device if engine is not None else "cpu"

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.loaded())
