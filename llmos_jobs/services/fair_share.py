"""Fair share inside a priority level: the Virtual Token Counter (VTC; Sheng et al.,
"Fairness in Serving Large Language Models", OSDI 2024), as the dispatcher applies it
to one language queue.

Each tenant has a counter of the service it received: a job's cost is
``w_in * prompt tokens + w_out * completion tokens``, divided by the tenant's weight. Of
the backlogged tenants, the one with the smallest counter is served next. A tenant that
becomes backlogged again is lifted to the smallest counter among the active ones, so
idle time banks no credit; the service gap between two backlogged tenants stays bounded
by about one job's cost per weight.

Releases are made before a job's usage is known: a released job is charged an estimate
(its tenant's running mean), corrected by the actual cost once the job ends. Inside a
tenant, its batch jobs and its other jobs share the same way, by a second counter.

The full order of held work: priority first (with aging: a held level gains one level
per ``aging_s`` its oldest job waited, so the lowest level is never starved), then the nearest
deadline, then the tenant's counter, then its class's counter. Aging lifts a whole
level (by the wait of its oldest held job), never one tenant's group above another's of
the same priority."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from llmos_jobs.db.dispatch import HeldGroup
from llmos_jobs.db.tenant_tables import DEFAULT_WEIGHT

# The estimate of a job's cost before any job of its tenant has ended (cost units).
FIRST_ESTIMATE = 1.0
# How fast the running mean of a tenant's job cost follows its recent jobs.
ESTIMATE_SMOOTHING = 0.2


def queue_bound(*, slots: int, depth: float, idle_bound: int) -> int:
    """Jobs of a queue that may be in flight: ``depth`` per slot of its live workers (a
    released job waits in the broker for the next free slot), or ``idle_bound`` when no
    live worker serves it."""
    return max(math.ceil(slots * depth), 1) if slots > 0 else idle_bound


def job_cost(prompt_tokens: int, completion_tokens: int, *, input_weight: float,
             output_weight: float) -> float:
    return input_weight * prompt_tokens + output_weight * completion_tokens


def effective_priority(group: HeldGroup, *, now: datetime, aging_s: float) -> int:
    """The group's priority raised (made smaller) by one level per ``aging_s`` waited."""
    waited = max((now - group.oldest).total_seconds(), 0.0)
    return max(group.priority - int(waited // aging_s), 0)


Class = tuple[str, bool]  # (tenant, batch)


K = TypeVar("K", str, Class)


def _lift(counters: dict[K, float], before: set[K], now_active: set[K]) -> None:
    """VTC's rule for a newly active member: its counter rises to the smallest counter
    among the members active already (to the largest known one when none is, so that
    members arriving together on an idle queue start level)."""
    staying = now_active & before
    if staying:
        floor = min(counters.get(k, 0.0) for k in staying)
    else:
        floor = max(counters.values(), default=0.0)
    for key in now_active - before:
        counters[key] = max(counters.get(key, 0.0), floor)


@dataclass
class VirtualTokenCounter:
    """The counters of one queue's tenants (and of each tenant's two classes)."""

    service: dict[str, float] = field(default_factory=dict)  # cost / weight
    classes: dict[Class, float] = field(default_factory=dict)  # cost
    active: set[str] = field(default_factory=set)
    active_classes: set[Class] = field(default_factory=set)
    _mean_cost: dict[Class, float] = field(default_factory=dict)

    def activate(self, tenants: Iterable[str], classes: Iterable[Class]) -> None:
        """The tenants (and classes) with work held or in flight now."""
        now_active, now_classes = set(tenants), set(classes)
        _lift(self.service, self.active, now_active)
        _lift(self.classes, self.active_classes, now_classes)
        self.active, self.active_classes = now_active, now_classes

    def estimate(self, tenant: str, batch: bool) -> float:
        return self._mean_cost.get((tenant, batch), FIRST_ESTIMATE)

    def charge(self, tenant: str, batch: bool, cost: float, weight: float) -> None:
        self.service[tenant] = self.service.get(tenant, 0.0) + cost / weight
        self.classes[(tenant, batch)] = self.classes.get((tenant, batch), 0.0) + cost

    def settle(self, tenant: str, batch: bool, *, actual: float, charged: float,
               weight: float) -> None:
        """A job ended: its actual cost replaces what was charged at its release."""
        self.charge(tenant, batch, actual - charged, weight)
        mean = self._mean_cost.get((tenant, batch))
        self._mean_cost[(tenant, batch)] = (
            actual if mean is None else mean + ESTIMATE_SMOOTHING * (actual - mean))

    def choose(self, groups: Iterable[HeldGroup], *, room: int, now: datetime,
               aging_s: float, weights: Mapping[str, float],
               headroom: Mapping[str, int] | None = None,
               ) -> list[tuple[HeldGroup, int, float]]:
        """Up to ``room`` releases, one at a time: (group, how many, cost charged per
        job). Each is charged as it is chosen, so the next choice sees it. ``headroom``:
        jobs each limited tenant may still start (a tenant at its limit is skipped)."""
        left = {(g.tenant, g.batch, g.priority): g for g in groups if g.count > 0}
        remaining = {key: g.count for key, g in left.items()}
        room_of = dict(headroom or {})
        taken: dict[tuple[str, bool, int], int] = {}
        charged: dict[tuple[str, bool, int], float] = {}
        # Aging lifts a whole priority level, by the wait of its oldest job: groups of
        # one level never part by age (a tenant's old backlog must not outrank another
        # tenant's fresh jobs of the same priority; the counters share that level).
        lifted: dict[int, int] = {}
        for g in left.values():
            aged = effective_priority(g, now=now, aging_s=aging_s)
            lifted[g.priority] = min(lifted.get(g.priority, aged), aged)
        level = {key: lifted[g.priority] for key, g in left.items()}
        for _ in range(max(room, 0)):
            ready = [key for key in left if remaining[key] > 0
                     and room_of.get(key[0], 1) > 0]
            if not ready:
                break
            chosen = min(ready, key=lambda k: self._order(left[k], level[k]))
            group = left[chosen]
            estimate = self.estimate(group.tenant, group.batch)
            self.charge(group.tenant, group.batch, estimate,
                        weights.get(group.tenant, DEFAULT_WEIGHT))
            remaining[chosen] -= 1
            if group.tenant in room_of:
                room_of[group.tenant] -= 1
            taken[chosen] = taken.get(chosen, 0) + 1
            charged[chosen] = estimate
        return [(left[key], n, charged[key]) for key, n in taken.items()]

    def _order(self, group: HeldGroup, level: int) -> tuple[int, bool, float, float, float,
                                                            datetime]:
        deadline = group.deadline.timestamp() if group.deadline is not None else 0.0
        return (level, group.deadline is None, deadline, self.service.get(group.tenant, 0.0),
                self.classes.get((group.tenant, group.batch), 0.0), group.oldest)
