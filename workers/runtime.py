"""One worker's life: its identity, its heartbeat, and following newly registered
models when it serves all of them. Reaping, reconciling and batch expiry are the
control process's work (workers.control), never done here: a heartbeat only beats."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
from celery import Celery

from broker_config import language_queue, worker_queue
from llmos_jobs import broker
from llmos_jobs.db import registry
from llmos_jobs.db.session import Database
from llmos_jobs.db.tables import Job, WorkerRecord
from llmos_jobs.db.types import utcnow
from llmos_jobs.errors import BrokerUnavailable
from llmos_jobs.job_events import JobEventWriter, events_url
from llmos_jobs.services.submission import Submitter
from llmos_jobs.settings import Settings
from llmos_jobs.states import WorkerState
from workers.context import WorkerContext
from workers.engines.pool import EngineChoice, EnginePool
from workers.held import HeldJobs
from workers.reaper import requeue_orphans
from workers.replicas import follow_replicas, left_queue, version_queues
from workers.resources import sample
from workers.streaming import EventPublisher
from workers.watch import JobWatcher

log = logging.getLogger(__name__)


def default_worker_name(gpu: int | None) -> str:
    host = socket.gethostname()
    return f"gpu{gpu}@{host}" if gpu is not None else f"cpu-{os.getpid()}@{host}"


def initial_queues(name: str, models: list[str]) -> list[str]:
    """An inference worker's queues: its direct queue and its models' queues (the
    control and webhooks queues only when it is told to, with --queues)."""
    return [worker_queue(name)] + [language_queue(m) for m in models]


@dataclass
class WorkerRuntime:
    app: Celery
    submitter: Submitter  # the settings and database of this process
    name: str
    pool_kind: str
    concurrency: int
    queues: list[str]
    models: list[str] | None  # None: every registered model, including later ones
    device: str = "cpu"
    engine_choice: EngineChoice | None = None
    host: str = field(default_factory=socket.gethostname)
    pool: EnginePool = field(init=False)
    watcher: JobWatcher = field(init=False)
    events: EventPublisher | None = field(init=False)
    held: HeldJobs = field(default_factory=HeldJobs)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.pool = EnginePool(self.settings, self.database, on_change=self._report_loaded,
                               choice=self.engine_choice)
        self.watcher = JobWatcher(self.database)
        url = events_url(self.settings)
        self.events = EventPublisher(JobEventWriter(url)) if url is not None else None

    @property
    def settings(self) -> Settings:
        return self.submitter.settings

    @property
    def database(self) -> Database:
        return self.submitter.database

    # -- claims ------------------------------------------------------------------------------

    def claimant_dead(self, job: Job) -> bool:
        """Whether the attempt that claimed ``job`` is gone: its process, or, when it
        was this process, the attempt itself (its outcome never reached the database and
        its message came back: the asking delivery is the only one holding it)."""
        if job.worker is None:
            return True
        if job.worker == self.name and job.worker_pid == os.getpid():
            return self.held.count(job.id, job.task_id) <= 1
        with self.database.session() as session:
            row = session.get(WorkerRecord, job.worker)
        if row is None or row.state != WorkerState.alive:
            return True
        if row.host == self.host and job.worker_pid is not None:
            return not psutil.pid_exists(job.worker_pid)
        return False

    def left_queue(self, delivery_info: Mapping[str, Any] | None) -> str | None:
        """The version queue a delivery came from, when this worker no longer consumes
        it (workers.replicas.left_queue). A prefork pool's child holds the copy of
        ``queues`` made when it was forked, so it cannot tell: it runs what it gets."""
        if self.pool_kind == "prefork":
            return None
        return left_queue(delivery_info, self.queues)

    def context(self) -> WorkerContext:
        return WorkerContext(name=self.name, submitter=self.submitter, pool=self.pool,
                             claimant_dead=self.claimant_dead, watcher=self.watcher,
                             publish=self.publish, held=self.held,
                             finalize_batch=self.finalize_batch, events=self.events)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        record = WorkerRecord(
            name=self.name, host=self.host, pid=os.getpid(), state=WorkerState.alive,
            pool=self.pool_kind, concurrency=self.concurrency, engine_device=self.device,
            models=self.models, queues=self.queues, loaded=[],
        )
        with self.database.session() as session:
            previous = session.get(WorkerRecord, self.name)
            previous_pid = previous.pid if previous is not None else None
            registry.upsert_worker(session=session, worker=record)
        if previous_pid is not None and previous_pid != os.getpid():
            # A restart under the same name: the previous process is gone, and so are
            # the jobs it was running.
            requeue_orphans(database=self.database, worker=self.name, enqueue=self.enqueue,
                            only=lambda j: j.worker_pid != os.getpid())
        self._thread = threading.Thread(target=self._loop, name="llmos-heartbeat", daemon=True)
        self._thread.start()
        threading.Thread(target=self._preload, name="llmos-preload", daemon=True).start()

    def _preload(self) -> None:
        """The versions of the replicas placed here (a restart under the same name) are
        loaded at start, before their first job."""
        try:
            _, held = version_queues(self.database, self.name)
            for ref in held:
                name, _, version = ref.partition("@")
                self.pool.get(name, int(version))
        except Exception:  # best effort: the replica's own load op follows anyway
            log.exception("preloading this worker's replicas failed")

    def stop(self) -> None:
        self._stop.set()
        with self.database.session() as session:
            registry.set_worker_state(session=session, name=self.name,
                                      state=WorkerState.stopped, expect=WorkerState.alive)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.tick()
            except Exception:  # a database blip must not kill the heartbeat
                log.exception("heartbeat failed; retrying")

    def tick(self) -> None:
        if self.models is None:
            self._follow_new_models()
        follow_replicas(self.app, self.database, self.name, self.queues)
        beat_at = utcnow()  # before the snapshot: see WorkerRecord.holding
        # A prefork pool runs jobs in child processes, whose attempts this one cannot
        # see: it names its live processes instead (WorkerRecord.pool_pids).
        prefork = self.pool_kind == "prefork"
        holding = None if prefork else self.held.job_ids()
        pool_pids = _live_pool_pids() if prefork else None
        self.pool.expire_idle()  # keep_alive: before the report, which then omits them
        engines = self.pool.report()
        resources = sample(self.device)

        def beat(rejoin: bool) -> bool:
            with self.database.session() as session:
                return registry.heartbeat(
                    session=session, name=self.name, queues=self.queues, engines=engines,
                    resources=resources, now=beat_at, holding=holding, pool_pids=pool_pids,
                    rejoin=rejoin)

        if not beat(rejoin=False):
            log.warning("worker %s was declared dead while alive; rejoining", self.name)
            # Alive again and beating in one write: made alive first, a reaper pass in
            # between found it alive with the old heartbeat and declared it dead again,
            # over and over on a loaded machine.
            beat(rejoin=True)

    def _follow_new_models(self) -> None:
        with self.database.session() as session:
            names = registry.list_model_names(session=session)
        for name in names:
            queue = language_queue(name)
            if queue not in self.queues:
                self.app.control.add_consumer(queue, destination=[self.name], reply=False)
                self.queues.append(queue)
                log.info("now consuming %s", queue)

    def enqueue(self, job: Job, task_id: str) -> None:
        """A new attempt of a job the reaper took back (committed under ``task_id``)."""
        job.task_id = task_id
        broker.send(self.app, job)

    def finalize_batch(self, batch_id: str) -> None:
        """The batch's last job ended here: its files are the control process's work."""
        broker.send_batch_finalization(self.app, batch_id)

    def publish(self, jobs: Sequence[Job]) -> None:
        """The turns released by a turn this worker ended (committed already)."""
        try:
            self.submitter.publish(jobs)
        except BrokerUnavailable as exc:  # they were failed with the reason
            log.error("released turns not enqueued: %s", exc)

    def _report_loaded(self, loaded: list[str]) -> None:
        with self.database.session() as session:
            registry.set_loaded(session=session, name=self.name, loaded=loaded)


def _live_pool_pids() -> list[int]:
    """This process and its children that are alive (a killed child is a zombie until
    the pool reaps it)."""
    pids = [os.getpid()]
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(pids)


_runtime: WorkerRuntime | None = None


def set_runtime(runtime: WorkerRuntime) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime: tasks run only inside `llmos worker`")
    return _runtime
