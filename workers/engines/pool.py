"""The engines of one worker process, loaded on first use (never in a parent before fork),
one per model version, within a bounded pool.

LLMOS_MODEL_POOL_GB bounds the sum of the loaded versions' sizes (their weight files'
bytes, llmos_jobs.model_content): loading one more first unloads the least recently
used idle one, never one with a job in flight (a job holds its version with
``in_use`` from before the load to its end). ``keep_alive`` (Ollama's semantics, per
model) unloads a version idle that long: 0 after each job, negative never.

A version that replaces another (a rolling update's replica) is loaded in place when
it can be: the idle engine of the old version takes the new weights
(``update_weights``) and its slot becomes the new version's."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import SecretStr

from llmos_jobs.db import versions
from llmos_jobs.db.model_tables import ModelVersion
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import RegisteredModel
from llmos_jobs.db.versions import ModelRef
from llmos_jobs.model_content import same_architecture
from llmos_jobs.settings import Settings
from schemas.model import EngineKind, keep_alive_seconds
from workers.engines.base import Completion, Engine, EngineRequest, EngineSampling, EngineStats
from workers.engines.noop import NoopEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    """A worker's override of the registered engine (``llmos worker --engine``)."""

    kind: EngineKind | None = None
    sglang_url: str | None = None
    mem_fraction_static: float = 0.85


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_engine(model: ModelVersion | RegisteredModel, settings: Settings,
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


class ModelTooLarge(Exception):
    """A model version larger than the whole pool: no eviction can make room for it."""


class PoolBusy(Exception):
    """The pool stayed full of versions with jobs in flight for a whole job time limit."""


class WeightUpdateFailed(Exception):
    """An engine could not take a new version's weights; it still serves the old ones."""


@dataclass(frozen=True)
class WeightUpdate:
    """How a version that replaces another came to be loaded."""

    in_place: bool
    reload_reason: str | None = None  # why not in place: the new version loads beside


@dataclass
class _Slot:
    engine: Engine
    size_bytes: int
    keep_alive_s: float  # negative: forever
    last_used: float = field(default_factory=time.monotonic)
    warmups: int = 0


@dataclass(frozen=True)
class Warmup:
    done: Completion
    seconds: float


WARMUP_PROMPT = "warm up"
WARMUP_TOKENS = 4


class EnginePool:
    """Model version → engine. ``on_change`` hears the loaded versions (``NAME@N``)."""

    def __init__(self, settings: Settings, database: Database,
                 on_change: Callable[[list[str]], None] | None = None,
                 choice: EngineChoice | None = None) -> None:
        self._settings = settings
        self._database = database
        self._choice = choice
        self._slots: dict[ModelRef, _Slot] = {}
        self._in_use: Counter[ModelRef] = Counter()
        # Guards the slots and counts; waited on for a version to become idle.
        self._lock = threading.Condition()
        # One load at a time: the room a load makes is not taken by another meanwhile.
        self._loading = threading.Lock()
        self._on_change = on_change

    @property
    def capacity_bytes(self) -> int | None:
        gb = self._settings.model_pool_gb
        return None if gb is None else int(gb * 2**30)

    def resolve(self, name: str, version: int | None = None) -> ModelRef:
        """``name``'s version ``version``, or its current one (read from the registry)."""
        if version is not None:
            return ModelRef(name, version)
        with self._database.session() as session:
            row = versions.resolve(session=session, model=name)
        return ModelRef(row.name, row.version)

    @contextmanager
    def in_use(self, name: str, version: int | None = None) -> Iterator[ModelRef]:
        """Hold a version for a job, from before its load to the job's end: no eviction
        or keep_alive unloads it meanwhile. On release, a keep_alive of 0 unloads it."""
        ref = self.resolve(name, version)
        # Besides the heartbeat's: a prefork pool's child processes run no heartbeat.
        self.expire_idle()
        with self._lock:
            self._in_use[ref] += 1
        try:
            yield ref
        finally:
            with self._lock:
                self._in_use[ref] -= 1
                if self._in_use[ref] <= 0:
                    del self._in_use[ref]
                slot = self._slots.get(ref)
                if slot is not None:
                    slot.last_used = time.monotonic()
                self._lock.notify_all()
            if slot is not None and slot.keep_alive_s == 0:
                self.expire_idle()

    def get(self, name: str, version: int | None = None) -> Engine:
        """The loaded engine of a model version (the current one when ``version`` is
        None), loading it now if needed; the registry is read only to load it."""
        ref = self.resolve(name, version)
        with self._lock:
            slot = self._slots.get(ref)
            if slot is not None and slot.engine.loaded:
                slot.last_used = time.monotonic()
                return slot.engine
        with self._loading:
            with self._lock:
                slot = self._slots.get(ref)
            if slot is not None and slot.engine.loaded:
                return slot.engine
            with self._database.session() as session:
                row = versions.get_version(session=session, ref=ref)
                model = session.get(RegisteredModel, ref.name)
                keep_alive = model.keep_alive if model is not None else None
            self._make_room(ref, row.size_bytes)
            engine = build_engine(row, self._settings, self._choice)
            engine.load()
            with self._lock:
                self._slots[ref] = _Slot(engine, row.size_bytes, keep_alive_seconds(
                    keep_alive or self._settings.model_keep_alive))
        self._changed()
        return engine

    def update_in_place(self, name: str, old: int, new: int) -> WeightUpdate:
        """Load version ``new`` of ``name`` into the engine of version ``old``, when
        ``old`` is loaded here, has no job in flight, and ``new`` has its architecture,
        engine and tokenizer (llmos_jobs.model_content.same_architecture); the slot is
        then ``new``'s. Otherwise nothing changes and the answer says why (``get``
        then loads ``new`` beside it). A failed update leaves ``old`` loaded as it was
        and raises WeightUpdateFailed."""
        old_ref, new_ref = ModelRef(name, old), ModelRef(name, new)
        with self._loading:
            with self._database.session() as session:
                old_row = versions.get_version(session=session, ref=old_ref)
                new_row = versions.get_version(session=session, ref=new_ref)
            # Read from disk before taking the lock that jobs wait on.
            reason = _incompatible(old_row, new_row)
            with self._lock:
                slot = self._slots.get(old_ref)
                reason = self._reload_reason(old_ref, new_ref, slot) or reason
                if reason is None:
                    # Out of the pool while its weights change: a job for ``old`` that
                    # comes meanwhile waits for the load lock and loads it afresh, and
                    # neither eviction nor keep_alive unloads the engine.
                    del self._slots[old_ref]
            if reason is not None or slot is None:
                log.info("%s loads beside %s, not in place: %s", new_ref, old_ref, reason)
                return WeightUpdate(in_place=False, reload_reason=reason)
            started = time.monotonic()
            try:
                self._make_room(new_ref, new_row.size_bytes)
                slot.engine.update_weights(new_row.path)
            except Exception as exc:
                with self._lock:
                    self._slots[old_ref] = slot
                    self._lock.notify_all()
                log.warning("%s could not take the weights of %s in place: %s",
                            old_ref, new_ref, exc)
                raise WeightUpdateFailed(
                    f"{old_ref} could not take the weights of {new_ref} ({new_row.path}) "
                    f"in place; it still serves {old_ref}: {type(exc).__name__}: {exc}"
                ) from exc
            with self._lock:
                self._slots[new_ref] = _Slot(slot.engine, new_row.size_bytes,
                                             slot.keep_alive_s)
                self._lock.notify_all()
        log.info("%s took the weights of %s in place in %.2f s", old_ref, new_ref,
                 time.monotonic() - started)
        self._changed()
        return WeightUpdate(in_place=True)

    def _reload_reason(self, old: ModelRef, new: ModelRef, slot: _Slot | None) -> str | None:
        """Why the pool's state rules out an in-place update (None: it allows one).
        Called holding the lock."""
        held = self._slots.get(new)
        if held is not None and held.engine.loaded:
            return f"{new} is loaded here already"
        if slot is None or not slot.engine.loaded:
            return f"{old} is not loaded here"
        if self._in_use[old] > 0:
            return f"{old} has {self._in_use[old]} job(s) in flight"
        return None

    def _make_room(self, ref: ModelRef, size: int) -> None:
        """Unload least recently used idle versions until ``size`` more bytes fit."""
        capacity = self.capacity_bytes
        if capacity is None:
            return
        if size > capacity:
            raise ModelTooLarge(
                f"model {ref} needs {size / 2**30:.3g} GB of weights, more than the whole "
                f"model pool (LLMOS_MODEL_POOL_GB={self._settings.model_pool_gb:g})")
        deadline = time.monotonic() + self._settings.job_time_limit_s
        evicted = False
        with self._lock:
            while sum(s.size_bytes for s in self._slots.values()) + size > capacity:
                idle = [(slot.last_used, r) for r, slot in self._slots.items()
                        if self._in_use[r] <= 0]
                if idle:
                    _, victim = min(idle)
                    self._slots.pop(victim).engine.unload()
                    evicted = True
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolBusy(f"model {ref} waited {self._settings.job_time_limit_s:g} s "
                                   "for room in the model pool: every loaded model has jobs "
                                   "in flight (raise LLMOS_MODEL_POOL_GB)")
                self._lock.wait(timeout=min(left, 1.0))
        if evicted:
            self._changed()

    def expire_idle(self) -> list[ModelRef]:
        """Unload the versions idle longer than their keep_alive; the ones unloaded."""
        now = time.monotonic()
        with self._lock:
            expired = [r for r, slot in self._slots.items()
                       if self._in_use[r] <= 0 and slot.keep_alive_s >= 0
                       and now - slot.last_used >= slot.keep_alive_s]
            for ref in expired:
                self._slots.pop(ref).engine.unload()
        if expired:
            self._changed()
        return expired

    def warmup(self, name: str, version: int | None = None) -> Warmup:
        """Load a version and run a real short generation through it."""
        ref = self.resolve(name, version)
        engine = self.get(ref.name, ref.version)
        started = time.monotonic()
        [done] = engine.generate([EngineRequest(EngineSampling(max_tokens=WARMUP_TOKENS),
                                                prompt=WARMUP_PROMPT)])
        with self._lock:
            slot = self._slots.get(ref)
            if slot is not None:
                slot.warmups += 1
        return Warmup(done, time.monotonic() - started)

    def unload(self, name: str, version: int | None = None) -> list[ModelRef]:
        """Unload version ``version`` of ``name``, or every loaded version of it."""
        with self._lock:
            refs = [r for r in self._slots
                    if r.name == name and (version is None or r.version == version)]
            slots = [self._slots.pop(r) for r in refs]
        for slot in slots:
            slot.engine.unload()
        if refs:
            self._changed()
        return refs

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(str(r) for r, slot in self._slots.items() if slot.engine.loaded)

    def stats(self) -> dict[str, EngineStats]:
        with self._lock:
            slots = dict(self._slots)
        return {str(r): slot.engine.stats() for r, slot in slots.items() if slot.engine.loaded}

    def report(self) -> dict[str, dict[str, float]]:
        """What a heartbeat says of each loaded version: its engine's statistics, and
        the pool's view of it (size, idle time, jobs in flight, warm-ups)."""
        now = time.monotonic()
        with self._lock:
            slots = dict(self._slots)
            in_use = dict(self._in_use)
        return {
            str(r): {**slot.engine.stats().summary(), "version": r.version,
                     "size_bytes": slot.size_bytes, "idle_s": round(now - slot.last_used, 3),
                     "in_use": in_use.get(r, 0), "warmups": slot.warmups,
                     "keep_alive_s": slot.keep_alive_s}
            for r, slot in slots.items() if slot.engine.loaded
        }

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.loaded())


def _incompatible(old: ModelVersion, new: ModelVersion) -> str | None:
    """Why ``new`` cannot take ``old``'s engine in place (None: it can)."""
    if old.engine != new.engine:
        return f"the engine changes ({old.engine} -> {new.engine})"
    return same_architecture(old.path, new.path)
