"""The fair-share dispatcher: language jobs wait in the database (``Job.held_since``)
and the control process releases to the broker, per queue, only as many as keep the
live workers' slots full (``fair_share.queue_bound``), choosing by priority (with
aging), then deadline, then the Virtual Token Counter of each tenant
(llmos_jobs.services.fair_share). The broker's queue stays shallow, so a tenant that
submits ten jobs behind another's ten thousand starts within about one round of the
workers' slots.

A pass reads everything it decides on from the database, and a release is a
compare-and-set on the job rows: two control processes never send one job twice (each
keeps its own counters; both converge on the usage the rows record). A job whose
deadline has passed is never released (the expiry sweep ends it). A pass runs when the
bell rings (a job ended, a submission was held) and every ``LLMOS_DISPATCH_POLL_S``
otherwise; a dead control process strands nothing: held jobs stay queued in the
database and are released by the next one that runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from celery import Celery
from sqlmodel import Session

from llmos_jobs import broker
from llmos_jobs.db import dispatch as rows
from llmos_jobs.db.session import Database
from llmos_jobs.db.tenant_policy import list_policies
from llmos_jobs.db.tenant_tables import DEFAULT_WEIGHT
from llmos_jobs.db.types import utcnow
from llmos_jobs.dispatch_bell import DispatchBell
from llmos_jobs.services.fair_share import VirtualTokenCounter, job_cost, queue_bound
from llmos_jobs.services.quotas import job_cost as submission_cost
from llmos_jobs.settings import Settings

log = logging.getLogger(__name__)

# Ended jobs are read back this far behind the newest one seen: a row that committed
# late with an earlier finished_at is still settled (ids already settled are skipped).
SETTLE_OVERLAP_S = 5.0
# Released jobs whose end this process waits to settle; beyond this the oldest charges
# are forgotten (their end then counts in full, as a job released elsewhere does).
MAX_TRACKED = 100_000


class Pacer(Protocol):
    """A say on each batch job's release by its tokens (a tokens-per-minute limiter):
    False leaves the job held until a later pass. ``paces``: whether the tenant's jobs
    are paced at all (if not, their payloads are not read to cost them)."""

    def paces(self, tenant: str) -> bool: ...

    def admit(self, tenant: str, tokens: int) -> bool: ...


class AdmitAll:
    def paces(self, tenant: str) -> bool:
        return False

    def admit(self, tenant: str, tokens: int) -> bool:
        return True


@dataclass(frozen=True)
class _Charge:
    queue: str
    tenant: str
    batch: bool
    cost: float


@dataclass(frozen=True)
class PassResult:
    released: int
    held: int  # left held on the queues looked at


class Dispatcher:
    def __init__(self, settings: Settings, database: Database, app: Celery, *,
                 pacer: Pacer | None = None, bell: DispatchBell | None = None) -> None:
        self.settings, self.database, self.app = settings, database, app
        self.pacer: Pacer = pacer or AdmitAll()
        self.bell = bell
        self.counters: dict[str, VirtualTokenCounter] = {}
        self._charges: dict[str, _Charge] = {}
        self._settled: dict[str, datetime] = {}
        self._since = utcnow() - timedelta(seconds=SETTLE_OVERLAP_S)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ------------------------------------------------------------------------------

    def run_pass(self) -> PassResult:
        """Settle the jobs that ended, then release what each held queue has room for."""
        weights = self._weights_and_limits()
        self._settle(weights[0])
        with self.database.session() as session:
            queues = rows.held_queues(session=session)
        released = held = 0
        for queue in queues:
            done, left = self._release_on(queue, *weights)
            released += done
            held += left
        return PassResult(released=released, held=held)

    def _weights_and_limits(self) -> tuple[dict[str, float], dict[str, int]]:
        with self.database.session() as session:
            policies = list_policies(session=session)
        return ({p.tenant: float(p.weight) for p in policies},
                {p.tenant: p.max_running for p in policies if p.max_running is not None})

    def _release_on(self, queue: str, weights: dict[str, float], limits: dict[str, int]
                    ) -> tuple[int, int]:
        now = utcnow()
        with self.database.session() as session:
            groups = rows.held_groups(session=session, queue=queue, now=now)
            in_flight = rows.in_flight_by_tenant(session=session, queue=queue)
            slots = rows.serving_slots(session=session, queue=queue,
                                       dead_after_s=self.settings.worker_dead_after_s)
            everywhere = (rows.in_flight_by_tenant(session=session)
                          if any(g.tenant in limits for g in groups) else {})
        vtc = self.counters.setdefault(queue, VirtualTokenCounter())
        vtc.activate({g.tenant for g in groups} | set(in_flight),
                     {(g.tenant, g.batch) for g in groups})
        waiting = sum(g.count for g in groups)
        if self.settings.dispatch == "on":
            room = queue_bound(slots=slots, depth=self.settings.dispatch_depth,
                               idle_bound=self.settings.dispatch_idle_bound
                               ) - sum(in_flight.values())
        else:  # jobs held before the dispatcher was turned off all go now
            room = waiting
        if room <= 0 or not groups:
            return 0, waiting
        headroom = {tenant: limit - everywhere.get(tenant, 0) for tenant, limit in limits.items()}
        picks = vtc.choose(
            groups, room=room, now=now, aging_s=self.settings.dispatch_aging_s,
            weights=weights, headroom=headroom)
        with self.database.session() as session:
            chosen: list[str] = []
            for group, n, cost in picks:
                ids = rows.pick(session=session, queue=queue, group=group, count=n, now=now)
                if group.batch and self.pacer.paces(group.tenant):
                    paced = self._paced(session, group.tenant, ids)
                    # What the pacer kept back was not released: its charge is returned.
                    vtc.charge(group.tenant, True, -cost * (len(ids) - len(paced)),
                               weights.get(group.tenant, DEFAULT_WEIGHT))
                    ids = paced
                chosen.extend(ids)
            released = rows.release(session=session, job_ids=chosen)
            session.commit()
        # Sent in the order chosen: an idle worker takes the first message that arrives,
        # whatever the priority of the next.
        rank = {job_id: i for i, job_id in enumerate(chosen)}
        released.sort(key=lambda job: rank[job.id])
        self._send(released)
        cost_of = {(g.tenant, g.batch): cost for g, _, cost in picks}
        for job in released:
            self._track(job.id, _Charge(queue, job.tenant, job.batch,
                                        cost_of.get((job.tenant, job.batch), 0.0)))
        return len(released), waiting - len(released)

    def _paced(self, session: Session, tenant: str, job_ids: list[str]) -> list[str]:
        """The first of ``job_ids`` (in the order picked) that the pacer admits, each
        charged its tokens as a submission is (bytes / 4 + max_tokens); the rest stay
        held until the tenant's window has room."""
        payloads = rows.payloads(session=session, job_ids=job_ids)
        admitted: list[str] = []
        for job_id in job_ids:
            if not self.pacer.admit(tenant, submission_cost(payloads[job_id])):
                break
            admitted.append(job_id)
        return admitted

    def _send(self, released: Sequence[rows.Released]) -> None:
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for job in released:
                    broker.send_message(self.app, kind=job.kind, job_id=job.id,
                                        task_id=job.task_id, queue=job.queue,
                                        priority=job.priority, producer=producer)
                    sent += 1
        except broker.PUBLISH_ERRORS as exc:
            unsent = released[sent:]
            with self.database.session() as session:
                rows.hold_again(session=session, released=unsent)
                session.commit()
            log.warning("broker unreachable (%s): %d released job(s) held again",
                        exc, len(unsent))

    def _track(self, job_id: str, charge: _Charge) -> None:
        self._charges[job_id] = charge
        if len(self._charges) > MAX_TRACKED:
            self._charges.pop(next(iter(self._charges)))

    def _settle(self, weights: dict[str, float]) -> None:
        """The actual cost of each language job that ended since the last pass replaces
        its estimate (a job released by another process, or at once by its submitter,
        is charged in full)."""
        with self.database.session() as session:
            ended = rows.ended_since(session=session, since=self._since)
        for job in ended:
            if job.id in self._settled:
                continue
            self._settled[job.id] = job.finished_at
            charge = self._charges.pop(job.id, None)
            cost = job_cost(job.prompt_tokens, job.completion_tokens,
                            input_weight=self.settings.dispatch_input_weight,
                            output_weight=self.settings.dispatch_output_weight)
            self.counters.setdefault(job.queue, VirtualTokenCounter()).settle(
                job.tenant, job.batch, actual=cost,
                charged=charge.cost if charge is not None else 0.0,
                weight=weights.get(job.tenant, DEFAULT_WEIGHT))
        if ended:
            self._since = max(j.finished_at for j in ended) - timedelta(seconds=SETTLE_OVERLAP_S)
            self._settled = {i: at for i, at in self._settled.items() if at >= self._since}

    # -- the loop of the control process -------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmos-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        poll_s = self.settings.dispatch_poll_s
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception:  # a database or broker blip must not end the dispatcher
                log.exception("dispatch pass failed; retrying")
                self._stop.wait(poll_s)
                continue
            if self.bell is not None:
                self.bell.wait(poll_s)
            else:
                self._stop.wait(poll_s)
