"""The job state machine: one status enum, and the only transitions it allows.

    waiting ──► queued ──► running ──► succeeded | failed | cancelled
       │           │          │
       │           │          └──► queued   (a new attempt, after its worker died)
       └───────────┴──► cancelled

Only a mindspace turn waits: it is accepted `waiting` while an earlier turn of its
mindspace is unfinished, and becomes `queued` (its message published) when released
(llmos_jobs.services.turns).
"""

from __future__ import annotations

from llmos_jobs.errors import IllegalTransition
from schemas.common import JobStatus

# The statuses a job may be created in.
INITIAL: frozenset[JobStatus] = frozenset({JobStatus.queued, JobStatus.waiting})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.waiting: frozenset({JobStatus.queued, JobStatus.cancelled}),
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled}),
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.queued}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which ``target`` may be entered."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"a {current.value} job cannot become {target.value}")
