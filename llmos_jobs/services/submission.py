"""Submitting work: every request is validated against ``schemas/``, its job rows are
committed, and only then is one message per job published, carrying the job id alone.

A job whose message cannot leave is failed with the reason (`queued → failed`), so that
no one waits for it forever. A turn failed this way releases the next turn of its
mindspace, which cannot leave either and is failed the same way, so that none of them
waits forever behind it.

``Submitter`` holds what every submission needs (the settings, the database, the limits,
the tenants' quotas and a few short-lived caches); the client, the API, batch expansion
and the workers (turns released by a turn that ended) submit through it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

from celery import Celery
from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from broker_config import language_queue, queue_for
from llmos_jobs import broker
from llmos_jobs.db import dispatch as dispatch_rows
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import registry, versions
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job, JobPublic
from llmos_jobs.dispatch_bell import DispatchBell
from llmos_jobs.errors import BrokerUnavailable, InvalidRequest, NoLiveWorkerWarning
from llmos_jobs.job_events import events_url
from llmos_jobs.limits import FieldLimits
from llmos_jobs.services import turns
from llmos_jobs.services.fair_share import queue_bound
from llmos_jobs.services.quotas import Quotas
from llmos_jobs.services.routing import RoutingPolicy
from llmos_jobs.services.webhooks.ssrf import check_destination
from llmos_jobs.settings import Settings
from llmos_jobs.ttl_cache import TTLCache
from schemas.common import JobKind, parse_priority

C = TypeVar("C", bound=BaseModel)


def validate(contract: type[C], data: dict[str, Any]) -> C:
    """``contract`` built from ``data``, or InvalidRequest naming each bad field."""
    try:
        return contract.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "request"
            problems.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
        raise InvalidRequest("; ".join(problems)) from None


def priority_of(value: int | str) -> int:
    """A priority number (0 highest) from a number or a class name, or InvalidRequest."""
    try:
        return parse_priority(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


class Submitter:
    """Validates, commits and publishes work on one database and broker."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.limits = FieldLimits.from_settings(settings)
        self.quotas = Quotas(settings, database)
        # Read on every submission, changed rarely: kept for a few seconds.
        self._contexts: TTLCache[int] = TTLCache(seconds=5.0)
        self._served: TTLCache[bool] = TTLCache(seconds=5.0)
        self._slots: TTLCache[int] = TTLCache(seconds=2.0)
        self._bell: DispatchBell | None = None
        self._bell_read = False

    @property
    def app(self) -> Celery:
        return broker.app_for(self.settings)

    # -- checks ------------------------------------------------------------------------------

    def check_model(self, name: str, max_tokens: int | None) -> None:
        """The model (``NAME``, or ``NAME@N`` pinning a version) is registered and
        ``max_tokens`` fits its context, or InvalidRequest naming the versions there are."""
        context = self._contexts.get(name)
        if context is None:
            with self.database.session() as session:
                context = versions.resolve(session=session, model=name).context_length
            self._contexts.put(name, context)
        if max_tokens is not None and max_tokens >= context:
            raise InvalidRequest(
                f"max_tokens {max_tokens} does not fit the context of model {name!r} "
                f"({context} tokens)"
            )

    def model_registered(self, name: str, context_length: int) -> None:
        """A model was (re-)registered: its context is known without a read."""
        self._contexts.put(name, context_length)

    def check_webhook(self, url: str | None) -> str | None:
        """``url`` once it is a destination webhooks may go to (SSRF rules)."""
        if url is not None:
            check_destination(url, self.settings.webhook_allowed())
        return url

    # -- submitting --------------------------------------------------------------------------

    def job(self, *, tenant: str, kind: JobKind, model: str, payload: BaseModel,
            priority: int, worker: str | None = None, webhook: str | None = None
            ) -> JobPublic:
        """Commit and publish one job."""
        queue = queue_for(broker.task_for_kind(kind), model=model, worker=worker)
        [job] = self.enqueue([job_rows.JobCreate(
            tenant=tenant, kind=kind, priority=priority, model=model,
            payload=payload.model_dump(mode="json"), queue=queue, webhook_url=webhook,
        )])
        return job

    def enqueue(self, jobs_in: Sequence[job_rows.JobCreate]) -> list[JobPublic]:
        """Check the tenants' quotas and commit the rows, in one transaction
        (QuotaExceeded: nothing is committed), then publish one message per job."""
        with self.database.session() as session:
            self.quotas.admit(jobs_in, session=session)
            jobs = [job_rows.create_job(session=session, job_in=j) for j in jobs_in]
            # Which of them wait for the dispatcher is decided, and written, in the
            # transaction that inserts them: one commit per submission, not three.
            now, wake = self._pass_or_hold(session, jobs)
        self._send(now, wake=wake)
        for queue, model in sorted({(j.queue, j.model) for j in jobs}):
            self.warn_without_worker(queue, model)
        return [JobPublic.from_row(j) for j in jobs]

    def publish(self, jobs: Sequence[Job]) -> None:
        """One message per committed job (or, with the dispatcher on, its hold: see
        _pass_or_hold). When the broker cannot be reached, the jobs whose message did
        not leave are failed, and BrokerUnavailable says so."""
        with self.database.session() as session:
            now, wake = self._pass_or_hold(session, jobs)
        self._send(now, wake=wake)

    def _send(self, jobs: Sequence[Job], *, wake: bool) -> None:
        """Once the jobs' transaction committed: wake the dispatcher for those held
        (``wake``), and send the messages of the rest."""
        if wake:
            self.ring_dispatcher()
        if not jobs:
            return
        try:
            broker.send_all(self.app, jobs)
        except broker.Unsent as unsent:
            failed = self.abandon(unsent.jobs, f"broker unreachable: {unsent.cause}")
            raise BrokerUnavailable(
                f"could not enqueue {failed} job(s): the broker is unreachable "
                f"({unsent.cause}); start one with `llmos up` or check LLMOS_BROKER_URL"
            ) from None

    def _pass_or_hold(self, session: Session, jobs: Sequence[Job]) -> tuple[list[Job], bool]:
        """The jobs to publish now, and whether the dispatcher is to be woken for those
        held (in ``session``). With the dispatcher on, a language queue's jobs wait in
        the database for it (llmos_jobs.services.dispatcher), except while the queue
        holds none and has room under its bound: then they leave at once, so an idle
        system pays no dispatcher round trip. A batch's jobs always wait for it. Only a
        queue's first held job wakes the dispatcher: while a queue holds jobs, each job
        of it that ends wakes it (a pass per submission would only contend for the
        database with the submissions)."""
        if self.settings.dispatch != "on":
            return list(jobs), False
        now: list[Job] = []
        by_queue: dict[str, list[Job]] = {}
        held: list[str] = []
        for job in jobs:
            if not dispatch_rows.is_dispatched(job.queue):
                now.append(job)
            elif job.batch_id is not None:
                # A batch's jobs always go through the dispatcher, which paces them by
                # their tenant's tokens per minute (docs/quotas.md).
                held.append(job.id)
            else:
                by_queue.setdefault(job.queue, []).append(job)
        wake = bool(held)
        for queue, queued in by_queue.items():
            load = dispatch_rows.queue_load(session=session, queue=queue)
            # The jobs themselves count in flight already (status queued, not held).
            room = self._bound(session, queue) - (load.in_flight - len(queued))
            fit = max(room, 0) if load.held == 0 else 0
            now.extend(queued[:fit])
            held.extend(job.id for job in queued[fit:])
            wake = wake or (load.held == 0 and fit < len(queued))
        if held:
            dispatch_rows.hold(session=session, job_ids=held)
        return now, wake

    def _bound(self, session: Session, queue: str) -> int:
        slots = self._slots.get(queue)
        if slots is None:
            slots = dispatch_rows.serving_slots(
                session=session, queue=queue, dead_after_s=self.settings.worker_dead_after_s)
            self._slots.put(queue, slots)
        return queue_bound(slots=slots, depth=self.settings.dispatch_depth,
                           idle_bound=self.settings.dispatch_idle_bound)

    def ring_dispatcher(self) -> None:
        """Wake the dispatcher now (a slot freed, or work was held); without a Redis for
        it, its poll finds the work."""
        if self.settings.dispatch != "on":
            return
        if not self._bell_read:
            url = events_url(self.settings)
            self._bell = DispatchBell(url) if url is not None else None
            self._bell_read = True
        if self._bell is not None:
            self._bell.ring()

    def abandon(self, jobs: Sequence[Job], reason: str) -> int:
        """Fail committed jobs whose message never left, and the turns that failing them
        releases (they cannot leave either); how many were failed."""
        unsent = list(jobs)
        failed = 0
        while unsent:
            job = unsent.pop(0)
            with turns.ending(job, publish=unsent.extend,
                              routing=RoutingPolicy.of(self.settings),
                              database=self.database) as session:
                job_rows.fail_unsent(session=session, job_id=job.id, message_id=job.task_id,
                                     error_message=reason)
            failed += 1
        return failed

    def warn_without_worker(self, queue: str, model: str) -> None:
        """NoLiveWorkerWarning when no live worker consumes ``queue`` yet."""
        serves = self._served.get(queue)
        if serves is None:
            with self.database.session() as session:
                live = registry.live_workers(session=session,
                                             dead_after_s=self.settings.worker_dead_after_s)
            serves = any(
                queue in w.queues or (w.models is None and queue == language_queue(model))
                for w in live
            )
            if serves:  # a missing worker is looked for again on the next submission
                self._served.put(queue, serves)
        if not serves:
            warnings.warn(
                f"no live worker consumes {queue} yet; the job waits in the queue until one "
                f"does (start one with `llmos worker --model {model.partition('@')[0]}`)",
                NoLiveWorkerWarning, stacklevel=4,
            )
