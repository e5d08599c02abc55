"""How many workers a model needs now: the scaling signal (`llmos_model_workers_needed`,
`llmos scale recommend`).

Pure arithmetic over counts read from the database (llmos_jobs.db.observe.scale_demand),
so that the exported gauge, the CLI and the tests all apply one function.

The model of a worker. A worker of concurrency ``c`` holds up to ``c`` jobs at once and,
while busy, finishes ``mu`` jobs per second (its measured throughput: jobs finished per
busy worker-second, a job of duration d on a worker of concurrency c keeping 1/c of it
busy for d seconds). Within ``t`` seconds one worker can therefore *start*

    capacity(t) = c + mu * t

jobs: its ``c`` slots now, and one more each time a job it holds finishes. ``n`` workers
with ``R`` jobs already running on them can start ``n * capacity(t) - R`` new jobs within
``t`` seconds (the running jobs hold slots until they finish, which the ``mu * t`` term
already counts).

What has to start, and by when:

- every queued job within the drain target ``target_s`` (a backlog that takes longer to
  start than that is a queue a user notices): the *backlog* term,
  ``ceil((R + Q) / capacity(target_s))``;
- each queued job whose ``deadline`` (the latest moment it may start) falls within the
  target, by its deadline. Taken in deadline order (the k-th earliest deadline d_k needs
  k jobs started by then), the *deadline* term is ``max_k ceil((R + k) / capacity(d_k))``.
  A deadline already past counts as "now" (d = 0): it needs a free slot at once;
- the jobs running now keep their workers: ``ceil(R / c)``, the *running* term, so that
  a scaler never takes away a worker mid-job because the queue is empty.

The answer is the largest of the three, and the term that gave it is "why". It is zero
exactly when nothing is queued or running; it never falls when the queue grows, and a
faster measured throughput never raises it. Before any job of the model finished within
the measuring window, ``default_jobs_per_worker_s`` stands in for ``mu`` (and says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# Floating error must not turn 2.0000000001 workers into 3.
_EPSILON = 1e-9


class Dominant(StrEnum):
    """Which term decided the number of workers."""

    idle = "idle"          # nothing queued or running
    running = "running"    # the jobs running now need their workers kept
    backlog = "backlog"    # the queue must start within the drain target
    deadline = "deadline"  # a queued job's deadline comes before the drain target


@dataclass(frozen=True)
class ScalePolicy:
    """The operator's targets (LLMOS_SCALE_* settings)."""

    target_s: float = 60.0
    window_s: float = 300.0
    default_jobs_per_worker_s: float = 0.1

    def __post_init__(self) -> None:
        if self.target_s < 0 or self.window_s <= 0 or self.default_jobs_per_worker_s <= 0:
            raise ValueError("scale policy: target_s >= 0, window_s > 0 and "
                             "default_jobs_per_worker_s > 0")


@dataclass(frozen=True)
class ModelDemand:
    """What one model has waiting and running now, and how fast its workers were."""

    model: str
    queued: int
    running: int
    # Seconds from now to the deadline of each queued job whose deadline falls within
    # the drain target (negative: already past), in any order.
    deadlines_s: tuple[float, ...] = ()
    live_workers: int = 0
    # Slots per worker (the mean concurrency of the workers serving the model).
    concurrency: float = 1.0
    # Jobs finished per busy worker-second over the window; None: nothing measured.
    jobs_per_worker_s: float | None = None


@dataclass(frozen=True)
class Need:
    """The answer for one model, with the figures that produced it."""

    workers: int
    dominant: Dominant
    jobs_per_worker_s: float
    measured: bool
    running_term: int
    backlog_term: int
    deadline_term: int

    def why(self, demand: ModelDemand, policy: ScalePolicy) -> str:
        rate = (f"{self.jobs_per_worker_s:.3g} jobs/s per worker"
                + ("" if self.measured else " (default: nothing measured yet)"))
        if self.dominant is Dominant.idle:
            return "nothing queued or running"
        if self.dominant is Dominant.running:
            return (f"{demand.running} running jobs hold {self.running_term} worker(s) "
                    f"of concurrency {demand.concurrency:g}")
        if self.dominant is Dominant.backlog:
            return (f"{demand.queued} queued jobs must start within {policy.target_s:g} s "
                    f"at {rate}")
        soonest = max(0.0, min(demand.deadlines_s))
        return (f"{len(demand.deadlines_s)} queued job(s) with deadlines within "
                f"{policy.target_s:g} s (soonest in {soonest:.1f} s) at {rate}")


def workers_needed(demand: ModelDemand, policy: ScalePolicy) -> Need:
    """The workers ``demand``'s model needs now (see the module's docstring)."""
    if demand.queued < 0 or demand.running < 0 or demand.concurrency < 1:
        raise ValueError("queued and running >= 0, concurrency >= 1")
    measured = demand.jobs_per_worker_s is not None and demand.jobs_per_worker_s > 0
    mu = demand.jobs_per_worker_s if measured and demand.jobs_per_worker_s is not None \
        else policy.default_jobs_per_worker_s
    slots = demand.concurrency
    running_term = _ceil(demand.running / slots)
    backlog_term = 0
    if demand.queued:
        backlog_term = _ceil((demand.running + demand.queued)
                             / (slots + mu * policy.target_s))
    deadline_term = 0
    for k, until in enumerate(sorted(min(max(0.0, d), policy.target_s)
                                     for d in demand.deadlines_s), start=1):
        deadline_term = max(deadline_term, _ceil((demand.running + k) / (slots + mu * until)))
    workers = max(running_term, backlog_term, deadline_term)
    # Ties go to the term that explains the most: a deadline over the backlog over the
    # running jobs.
    if workers == 0:
        dominant = Dominant.idle
    elif deadline_term == workers:
        dominant = Dominant.deadline
    elif backlog_term == workers:
        dominant = Dominant.backlog
    else:
        dominant = Dominant.running
    return Need(workers=workers, dominant=dominant, jobs_per_worker_s=mu, measured=measured,
                running_term=running_term, backlog_term=backlog_term,
                deadline_term=deadline_term)


def _ceil(value: float) -> int:
    # Any positive need is at least one worker, however fast the measured rate.
    return max(1, math.ceil(value - _EPSILON)) if value > 0 else 0
