"""Cache-affinity routing of mindspace turns: a turn goes to the direct queue of the
worker that served the mindspace's previous turn, whose prefix cache holds its
prompt; when that worker is gone or overloaded, to the least-loaded healthy worker
serving the model, and the mindspace moves there (one cold prefill, no lost state).

A mindspace created with a persona is placed before its first turn when a worker holds
its model's version (``place_new``), so that its persona can be warmed where that turn
will run."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from broker_config import language_queue, worker_queue
from llmos_jobs.db import registry
from llmos_jobs.db.tables import Job, Mindspace, WorkerRecord
from llmos_jobs.settings import Settings
from schemas.common import JobStatus

# A worker with this many jobs per slot waiting or running is overloaded.
OVERLOAD_PER_SLOT = 2.0


@dataclass(frozen=True)
class RoutingPolicy:
    """How turns are placed: on live workers only (silent for less than
    ``dead_after_s``), by cache affinity, or ``round_robin`` (the baseline the affinity
    is measured against: LLMOS_TURN_ROUTING)."""

    dead_after_s: float
    round_robin: bool = False

    @classmethod
    def of(cls, settings: Settings) -> RoutingPolicy:
        return cls(dead_after_s=settings.worker_dead_after_s,
                   round_robin=settings.turn_routing == "round_robin")


@dataclass(frozen=True)
class Route:
    queue: str
    worker: str | None  # the placement the turn goes to, None: any worker of the model


def _serves(worker: WorkerRecord, model: str) -> bool:
    """Workers serve model names; a mindspace pinned to ``NAME@N`` goes to NAME's."""
    return worker.models is None or model.partition("@")[0] in worker.models


def _loads(session: Session, names: list[str]) -> dict[str, int]:
    """Jobs per worker that are running on it or queued on its direct queue."""
    running = registry.running_counts(session=session, names=names)
    queued = dict(session.exec(
        select(Job.queue, func.count()).where(
            col(Job.queue).in_([worker_queue(n) for n in names]),
            Job.status == JobStatus.queued).group_by(Job.queue)
    ).all())
    return {n: int(running.get(n, 0)) + int(queued.get(worker_queue(n), 0)) for n in names}


def route_turn(*, session: Session, mindspace: Mindspace, seq: int, policy: RoutingPolicy
               ) -> Route:
    """Where turn number ``seq`` of ``mindspace`` goes, decided when it is released."""
    live = [w for w in registry.live_workers(session=session, dead_after_s=policy.dead_after_s)
            if _serves(w, mindspace.model)]
    if not live:
        return Route(language_queue(mindspace.model), None)
    if policy.round_robin:
        chosen = live[seq % len(live)]
        return Route(worker_queue(chosen.name), chosen.name)
    loads = _loads(session, [w.name for w in live])
    home = next((w for w in live if w.name == mindspace.worker), None)
    if home is not None and loads[home.name] < OVERLOAD_PER_SLOT * home.concurrency:
        return Route(worker_queue(home.name), home.name)
    best = _least_loaded(live, loads)
    return Route(worker_queue(best.name), best.name)


def _least_loaded(live: list[WorkerRecord], loads: dict[str, int]) -> WorkerRecord:
    """Where a mindspace without a usable home goes: the fewest jobs per slot."""
    return min(live, key=lambda w: (loads[w.name] / w.concurrency, w.name))


def place_new(*, session: Session, model: str, version: str, policy: RoutingPolicy
              ) -> str | None:
    """Where a new mindspace of ``model`` goes, to have its persona warmed there: the
    worker its first turn would go to, chosen among the live workers serving the model
    that hold ``version`` (``NAME@N``) loaded. None when none holds it, or when turns
    are spread round robin (no turn would stay where the persona was warmed)."""
    if policy.round_robin:
        return None
    holding = [w for w in registry.live_workers(session=session,
                                                dead_after_s=policy.dead_after_s)
               if _serves(w, model) and version in w.loaded]
    if not holding:
        return None
    return _least_loaded(holding, _loads(session, [w.name for w in holding])).name
