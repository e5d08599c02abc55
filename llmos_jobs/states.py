"""The state machines of jobs, batches and workers: each a status enum and the only
transitions it allows. Rows change state by compare-and-set (``llmos_jobs.db.moves``):
an update that names the states the target may be entered from, so that of two
processes racing to move one row, exactly one does.

Jobs::

    waiting ──► queued ──► running ──► succeeded | failed | cancelled | filtered
       │           │  │       │
       │           │  │       └──► queued   (a new attempt, after its worker died)
       │           │  └──► failed           (its message never reached the broker)
       ├───────────┼──► cancelled
       └───────────┴──► expired             (its deadline passed before it started)

A job with a deadline (the latest moment it may start) that no worker could start in
time ends `expired` without running: the claim that finds the deadline passed expires
it instead of running it, and the control process expires the rest in bulk
(llmos_jobs.services.deadlines). A job that started is never expired: it ends as any
other does.

A job ends `filtered` when a content filter of its tenant blocks its input or its
output; the worker decides, so only a running job becomes filtered
(llmos_jobs.services.filters).

Only a mindspace turn waits: it is accepted `waiting` while an earlier turn of its
mindspace is unfinished, and becomes `queued` (its message published) when released
(llmos_jobs.services.turns).

Batches (OpenAI's lifecycle)::

    validating ──► in_progress ──► finalizing ──► completed | expired | cancelled
         │  │           │               ▲
         │  │           └──► cancelling ┘
         │  └──► failed                 (no valid line; its error file is still written)
         └──► cancelling, finalizing    (cancelled, or expired, before it was expanded)

Workers::

    alive ──► stopped (it said so) | dead (its heartbeat stopped)
    dead ──► alive    (it was alive after all, and beats again)

Deployments (llmos_jobs.services.rollouts)::

    ready ──► rolling | blue_green ──► ready        (every replica serves the new version)
                 │           │
                 └───────────┴──► rolling_back ──► ready   (a load, warm-up or health
                                                           check failed, or by hand)

Replicas of a deployment, each on one worker::

    loading ──► serving ──► draining ──► loading   (rolling: the next version, in place)
       │                       └──► retiring        (blue-green: the old side, unloaded)
       └──► failed ──► loading                      (the deployment's version again)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from llmos_jobs.errors import IllegalTransition
from schemas.common import JobStatus

S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True)
class StateMachine(Generic[S]):
    """What a row of kind ``name`` may become from each of its states."""

    name: str
    transitions: Mapping[S, frozenset[S]]

    def sources_of(self, target: S) -> frozenset[S]:
        """Every state from which ``target`` may be entered."""
        return frozenset(s for s, targets in self.transitions.items() if target in targets)

    def is_final(self, state: S) -> bool:
        return not self.transitions[state]

    def check(self, current: S, target: S) -> None:
        """IllegalTransition unless ``current`` may become ``target``."""
        if target not in self.transitions[current]:
            raise IllegalTransition(
                f"a {current.value} {self.name} cannot become {target.value}")


class BatchStatus(StrEnum):
    """OpenAI's batch statuses, in the order of its API reference."""

    validating = "validating"
    failed = "failed"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"


class WorkerState(StrEnum):
    alive = "alive"
    stopped = "stopped"
    dead = "dead"


class DeploymentState(StrEnum):
    ready = "ready"
    rolling = "rolling"
    blue_green = "blue_green"
    rolling_back = "rolling_back"


class ReplicaState(StrEnum):
    loading = "loading"  # its load + warm-up + health check runs (a model op job)
    serving = "serving"  # it consumes its version's queue
    draining = "draining"  # it stopped consuming; its jobs in flight end
    failed = "failed"  # its load, warm-up or health check failed
    retiring = "retiring"  # drained for good: unloaded, then its row removed


JOBS: StateMachine[JobStatus] = StateMachine("job", {
    JobStatus.waiting: frozenset({JobStatus.queued, JobStatus.cancelled, JobStatus.expired}),
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.failed, JobStatus.cancelled,
                                 JobStatus.expired}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.queued,
         JobStatus.filtered}),
    JobStatus.succeeded: frozenset(),
    JobStatus.filtered: frozenset(),
    JobStatus.expired: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
})

BATCHES: StateMachine[BatchStatus] = StateMachine("batch", {
    BatchStatus.validating: frozenset({BatchStatus.in_progress, BatchStatus.failed,
                                       BatchStatus.cancelling, BatchStatus.finalizing}),
    BatchStatus.in_progress: frozenset({BatchStatus.finalizing, BatchStatus.cancelling}),
    BatchStatus.cancelling: frozenset({BatchStatus.finalizing}),
    BatchStatus.finalizing: frozenset({BatchStatus.completed, BatchStatus.expired,
                                       BatchStatus.cancelled}),
    BatchStatus.failed: frozenset(),
    BatchStatus.completed: frozenset(),
    BatchStatus.expired: frozenset(),
    BatchStatus.cancelled: frozenset(),
})

WORKERS: StateMachine[WorkerState] = StateMachine("worker", {
    WorkerState.alive: frozenset({WorkerState.stopped, WorkerState.dead}),
    WorkerState.dead: frozenset({WorkerState.alive}),
    WorkerState.stopped: frozenset(),
})

DEPLOYMENTS: StateMachine[DeploymentState] = StateMachine("deployment", {
    DeploymentState.ready: frozenset({DeploymentState.rolling, DeploymentState.blue_green,
                                      DeploymentState.rolling_back}),
    DeploymentState.rolling: frozenset({DeploymentState.ready, DeploymentState.rolling_back}),
    DeploymentState.blue_green: frozenset({DeploymentState.ready,
                                           DeploymentState.rolling_back}),
    DeploymentState.rolling_back: frozenset({DeploymentState.ready}),
})

REPLICAS: StateMachine[ReplicaState] = StateMachine("replica", {
    ReplicaState.loading: frozenset({ReplicaState.serving, ReplicaState.failed}),
    ReplicaState.serving: frozenset({ReplicaState.draining}),
    ReplicaState.draining: frozenset({ReplicaState.loading, ReplicaState.retiring}),
    ReplicaState.failed: frozenset({ReplicaState.loading, ReplicaState.retiring}),
    ReplicaState.retiring: frozenset(),
})

# The statuses a job may be created in.
INITIAL: frozenset[JobStatus] = frozenset({JobStatus.queued, JobStatus.waiting})
# A batch's requests that may still run.
BATCH_OPEN: frozenset[BatchStatus] = frozenset({BatchStatus.validating,
                                                BatchStatus.in_progress})
