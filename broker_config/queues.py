"""Queue names and the route of every task.

    lang.<model>   shared language queue of one model (generate, task presets,
                   mindspace turns, model ops not aimed at a worker)
    lang.<model>@<N>  the queue of one version of a deployed model, consumed by the
                   replicas that hold that version (llmos_jobs.services.rollouts)
    w.<worker>     direct queue of one worker (model ops aimed at it)
    control        the control plane (`llmos control`, no GPU): reaping, reconciling,
                   batch expansion, finalisation and expiry, job deadlines,
                   retention, deployments and their rollouts
    webhooks       callback deliveries (`llmos control`, never an inference worker)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

CONTROL_QUEUE = "control"
WEBHOOKS_QUEUE = "webhooks"


class TaskName(StrEnum):
    generate = "llmos.language.generate"
    preset = "llmos.language.preset"  # summarise, translate, answer, classify, extract
    model_op = "llmos.model.op"
    mindspace_turn = "llmos.mindspace.turn"
    batch_expand = "llmos.batch.expand"
    batch_finalize = "llmos.batch.finalize"
    deliver_webhook = "llmos.webhooks.deliver"
    # Periodic work of the control process (Celery beat).
    reap = "llmos.control.reap"
    reconcile = "llmos.control.reconcile"
    expire_batches = "llmos.control.expire_batches"
    expire_jobs = "llmos.control.expire_jobs"
    prune = "llmos.control.prune"
    rollout = "llmos.control.rollout"  # deployments moved one step (also nudged)


# How each task is routed: to the language queue of the job's model, to the direct
# queue of a worker when the job names one, or to the webhooks queue. Every registered task must
# appear here (a test checks it).
TASK_FAMILIES: dict[TaskName, Literal["model", "model_or_worker", "control", "webhooks"]] = {
    TaskName.generate: "model",
    TaskName.preset: "model",
    TaskName.mindspace_turn: "model_or_worker",  # cache affinity: the worker of its last turn
    TaskName.model_op: "model_or_worker",
    TaskName.batch_expand: "control",
    TaskName.batch_finalize: "control",
    TaskName.deliver_webhook: "webhooks",  # never behind a model's backlog
    TaskName.reap: "control",
    TaskName.reconcile: "control",
    TaskName.expire_batches: "control",
    TaskName.expire_jobs: "control",
    TaskName.prune: "control",
    TaskName.rollout: "control",
}

# The tasks that run a job (their message carries a job id); every other task is
# control-plane work.
JOB_TASKS: frozenset[TaskName] = frozenset(
    {TaskName.generate, TaskName.preset, TaskName.model_op, TaskName.mindspace_turn})


def language_queue(model: str) -> str:
    """One queue per model name: ``NAME@N`` (a pinned version) goes to NAME's queue, and
    the worker loads the version the job records."""
    return f"lang.{model.partition('@')[0]}"


def version_queue(model: str, version: int) -> str:
    """The queue of one version of a deployed model: only replicas holding it consume
    it, so a job is served by the version it records without a load."""
    return f"lang.{model.partition('@')[0]}@{version}"


def is_version_queue(queue: str) -> bool:
    """Whether ``queue`` is one version's queue (``version_queue``)."""
    return queue.startswith("lang.") and "@" in queue


def worker_queue(worker: str) -> str:
    return f"w.{worker}"


def queue_for(task: TaskName, *, model: str = "", worker: str | None = None) -> str:
    """The queue a job of this task goes to."""
    if TASK_FAMILIES[task] == "control":
        return CONTROL_QUEUE
    if TASK_FAMILIES[task] == "webhooks":
        return WEBHOOKS_QUEUE
    if TASK_FAMILIES[task] == "model_or_worker" and worker is not None:
        return worker_queue(worker)
    return language_queue(model)
