"""Submitting work: every request is validated against ``schemas/``, its job rows are
committed, and only then is one message per job published, carrying the job id alone.

A job whose message cannot leave is failed with the reason (`queued → failed`), so that
no one waits for it forever. A turn failed this way releases the next turn of its
mindspace, which cannot leave either and is failed the same way, so that none of them
waits forever behind it.

``Submitter`` holds what every submission needs (the settings, the database, the limits
and a few short-lived caches); the client, the API, batch expansion and the workers
(turns released by a turn that ended) submit through it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

from celery import Celery
from pydantic import BaseModel, ValidationError

from broker_config import language_queue, queue_for
from llmos_jobs import broker
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db import registry
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job, JobPublic
from llmos_jobs.errors import BrokerUnavailable, InvalidRequest, NoLiveWorkerWarning, NotFound
from llmos_jobs.limits import FieldLimits
from llmos_jobs.services import turns
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
            problems.append(f"{where}: {error['msg']}")
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
        # Read on every submission, changed rarely: kept for a few seconds.
        self._contexts: TTLCache[int] = TTLCache(seconds=5.0)
        self._served: TTLCache[bool] = TTLCache(seconds=5.0)

    @property
    def app(self) -> Celery:
        return broker.app_for(self.settings)

    # -- checks ------------------------------------------------------------------------------

    def check_model(self, name: str, max_tokens: int | None) -> None:
        """The model is registered and ``max_tokens`` fits its context, or InvalidRequest."""
        context = self._contexts.get(name)
        if context is None:
            with self.database.session() as session:
                try:
                    context = registry.get_model(session=session, name=name).context_length
                except NotFound as exc:
                    raise InvalidRequest(str(exc)) from None
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
        """Commit the rows in one transaction, then publish one message per job."""
        with self.database.session() as session:
            jobs = [job_rows.create_job(session=session, job_in=j) for j in jobs_in]
        self.publish(jobs)
        for queue, model in sorted({(j.queue, j.model) for j in jobs}):
            self.warn_without_worker(queue, model)
        return [JobPublic.from_row(j) for j in jobs]

    def publish(self, jobs: Sequence[Job]) -> None:
        """One message per committed job. When the broker cannot be reached, the jobs
        whose message did not leave are failed, and BrokerUnavailable says so."""
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
                f"does (start one with `llmos worker --model {model}`)",
                NoLiveWorkerWarning, stacklevel=4,
            )
