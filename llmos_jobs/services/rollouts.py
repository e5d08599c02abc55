"""The deployment controller: one pass (`step`) moves every deployment one step
towards its desired state. It runs in the control process (a beat task and a nudge
after `deploy`/`update`); every step is a compare-and-set on the deployment or replica
row, so two control processes never do one twice, and a pass that dies half-way is
finished by the next.

A replica holds one version and consumes that version's queue (``lang.NAME@N``): the
worker follows its replica rows (workers.replicas) and reports the queues it consumes
in its heartbeat. Loading a replica is a warm-up model op on the worker's direct queue:
the load, a real short generation (the warm-up) and its success (the health check).

Rolling: one replica at a time stops consuming the old version's queue, finishes the
jobs of it in flight, loads and warms the new version, then consumes the new queue.
``NAME`` switches to the new version (one compare-and-set) once the first new replica
serves; the last old replica leaves only once its version's queue is empty.
Blue-green: new replicas load beside the old ones; once all serve, ``NAME`` switches;
the old replicas keep serving until their queue is empty, then drain and unload.
A failed load, warm-up or health check rolls the deployment back to the version it
left (the same moves, towards the old version), recording why.

A version can lose its last replica with jobs still queued for it (the worker of that
replica died mid-update, or was declared dead while too slow to beat and had its
replica placed again). The jobs that named the model (``NAME``) then move to the
version the deployment serves or moves to; those pinned to the lost version
(``NAME@N``) fail with the reason once no update can bring it back."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlmodel import Session

from broker_config import version_queue, worker_queue
from llmos_jobs import broker
from llmos_jobs.db import deployments, registry, versions
from llmos_jobs.db import jobs as job_rows
from llmos_jobs.db.deployment_tables import Deployment, Replica
from llmos_jobs.db.model_tables import RegisteredModel
from llmos_jobs.db.tables import Job, JobHeader, WorkerRecord
from llmos_jobs.db.types import utcnow
from llmos_jobs.services import jobs
from llmos_jobs.services.routing import RoutingPolicy
from llmos_jobs.services.submission import Submitter
from llmos_jobs.services.webhooks.events import emit_job_event
from llmos_jobs.settings import Settings
from llmos_jobs.states import DeploymentState, ReplicaState, WorkerState
from schemas.common import JobKind, JobStatus
from schemas.model import ModelOp, ModelOpRequest

log = logging.getLogger(__name__)

# The tenant the controller's model ops are recorded under (an operator's act).
CONTROL_TENANT = "default"
OPERATOR_PRIORITY = 0

Publish = Callable[[list[Job]], None]


def step(submitter: Submitter) -> int:
    """One pass over every deployment; how many moves it made."""
    with submitter.database.session() as session:
        models = [d.model for d in deployments.list_deployments(session=session)]
    return sum(step_one(submitter, model) for model in models)


def step_one(submitter: Submitter, model: str) -> int:
    published: list[Job] = []
    with submitter.database.session() as session:
        # The pass writes first: it holds the deployment's row (PostgreSQL) or the
        # database (SQLite) until it commits, so two passes over one deployment (two
        # control processes, or a nudge meeting a beat) run one after the other.
        if not deployments.lock_deployment(session=session, model=model):
            return 0
        deployment = deployments.get_deployment(session=session, model=model)
        live = {w.name: w for w in registry.live_workers(
            session=session, dead_after_s=submitter.settings.worker_dead_after_s)}
        ended: list[JobHeader] = []
        followed: list[Job] = []
        moves = _Pass(session, deployment, live, published, ended, followed,
                      submitter.settings).run()
    if published:
        submitter.publish(published)
    if followed:
        _send_followed(submitter, followed)
    routing = RoutingPolicy.of(submitter.settings)
    for job in ended:
        jobs.after_ending(submitter, job, routing=routing)
    return moves


def _send_followed(submitter: Submitter, followed: list[Job]) -> None:
    """Jobs moved to another version's queue: the dispatcher's (woken) or, without it,
    their messages. Unlike a submission's, they are not failed when the broker cannot be
    reached: they stay queued, and the reconciler sends them once their grace passed."""
    if submitter.settings.dispatch == "on":
        submitter.ring_dispatcher()
        return
    try:
        broker.resend(submitter.app, [j for j in followed if j.held_since is None])
    except broker.PUBLISH_ERRORS as exc:
        log.warning("%d job(s) moved to another version wait for the reconciler: %s",
                    len(followed), exc)


class _Pass:
    """One step of one deployment, inside one transaction."""

    def __init__(self, session: Session, deployment: Deployment,
                 live: dict[str, WorkerRecord], published: list[Job], ended: list[JobHeader],
                 followed: list[Job], settings: Settings) -> None:
        self.session, self.deployment, self.live = session, deployment, live
        self.published, self.ended, self.settings = published, ended, settings
        self.followed = followed  # jobs moved to another version's queue
        self.model = deployment.model
        self.moves = 0

    @property
    def replicas(self) -> list[Replica]:
        return deployments.replicas_of(session=self.session, model=self.model)

    def run(self) -> int:
        self._forget_dead_workers()
        self._follow_loads()
        state = DeploymentState(self.deployment.state)
        if state == DeploymentState.blue_green:
            self._blue_green()
        else:
            self._rolling()
        self._orphaned_jobs()
        return self.moves

    # -- replicas ----------------------------------------------------------------------

    def _forget_dead_workers(self) -> None:
        """A replica whose worker died (the reaper declared it dead) or stopped is placed
        again elsewhere (its row goes; the placement below makes a new one)."""
        for replica in self.replicas:
            # The reaper's verdict, not one late heartbeat: a worker slow to beat on a
            # loaded machine keeps its replicas.
            worker = self.session.get(WorkerRecord, replica.worker)
            if worker is None or worker.state != WorkerState.alive:
                log.warning("replica of %s@%d on %s lost its worker; placing it again",
                            self.model, replica.version, replica.worker)
                deployments.remove_replica(session=self.session, replica_id=replica.id)
                self.moves += 1

    def _follow_loads(self) -> None:
        """Loading replicas whose warm-up ended serve, or failed (the deployment rolls
        back when it was the version an update brings)."""
        for replica in self.replicas:
            if replica.state != ReplicaState.loading or replica.op_job is None:
                continue
            op = self.session.get(Job, replica.op_job)
            if op is None or op.status not in (JobStatus.succeeded, JobStatus.failed,
                                               JobStatus.cancelled, JobStatus.expired):
                continue
            if op.status == JobStatus.succeeded:
                self._move(replica, ReplicaState.serving)
                continue
            reason = (f"{self.model}@{replica.version} failed to load, warm up or pass its "
                      f"health check on {replica.worker}: {op.error_message or op.status}")
            self._move(replica, ReplicaState.failed)
            self._roll_back(reason)

    def _roll_back(self, reason: str) -> None:
        deployment = self.deployment
        if (deployment.state not in (DeploymentState.rolling, DeploymentState.blue_green)
                or deployment.from_version is None):
            log.error("%s", reason)
            return
        back_to = deployment.from_version
        if deployments.move_deployment(session=self.session, model=self.model,
                                       target=DeploymentState.rolling_back,
                                       version=back_to, from_version=deployment.version,
                                       reason=reason):
            log.error("rolling %s back to version %d: %s", self.model, back_to, reason)
            self.session.refresh(deployment)
            self.moves += 1

    def _move(self, replica: Replica, target: ReplicaState, **values: object) -> bool:
        moved = deployments.move_replica(session=self.session, replica_id=replica.id,
                                         target=target, **values)
        self.moves += moved
        return moved

    def _load(self, replica: Replica, version: int) -> None:
        """Move ``replica`` to loading ``version``: a warm-up op on its worker, which
        takes the new weights in place of the version the replica leaves if it can."""
        replaces = replica.version if replica.version != version else None
        op = self._warmup(replica.worker, version, replaces=replaces)
        if self._move(replica, ReplicaState.loading, version=version, op_job=op.id):
            self.published.append(op)

    def _warmup(self, worker: str, version: int, *, replaces: int | None = None) -> Job:
        ref = f"{self.model}@{version}"
        request = ModelOpRequest(model=ref, op=ModelOp.warmup, worker=worker,
                                 replaces=replaces)
        return job_rows.create_job(session=self.session, job_in=job_rows.JobCreate(
            tenant=CONTROL_TENANT, kind=JobKind.model_op, priority=OPERATOR_PRIORITY,
            model=ref, payload=request.model_dump(mode="json"), queue=worker_queue(worker)))

    def _unload(self, worker: str, version: int) -> None:
        ref = f"{self.model}@{version}"
        request = ModelOpRequest(model=ref, op=ModelOp.unload, worker=worker)
        self.published.append(job_rows.create_job(
            session=self.session, job_in=job_rows.JobCreate(
                tenant=CONTROL_TENANT, kind=JobKind.model_op, priority=OPERATOR_PRIORITY,
                model=ref, payload=request.model_dump(mode="json"),
                queue=worker_queue(worker))))

    def _place(self, version: int, count: int, *, green: bool) -> None:
        """Up to ``count`` new replicas of ``version`` on live workers that can hold
        the model and have room, those without a replica of it first."""
        if count <= 0:
            return
        holding = {r.worker for r in self.replicas}
        need_mb = (self.deployment.gpu_memory_gb or 0.0) * 1024
        candidates = [w for w in self.live.values()
                      if _can_hold(w, self.model, need_mb)
                      and not (green and any(r.worker == w.name and r.green
                                             for r in self.replicas))]
        candidates.sort(key=lambda w: (w.name in holding, w.name))
        if not green:
            candidates = [w for w in candidates if w.name not in holding]
        for worker in candidates[:count]:
            op = self._warmup(worker.name, version)
            self.session.add(Replica(model=self.model, worker=worker.name, version=version,
                                     op_job=op.id, green=green))
            self.published.append(op)
            self.moves += 1

    def _drained(self, replica: Replica) -> bool:
        """It stopped consuming its version's queue (its heartbeat says so) and none of
        its jobs of that version is still running."""
        worker = self.live.get(replica.worker)
        queue = version_queue(self.model, replica.version)
        if worker is None or queue in worker.queues:
            return False
        return deployments.running_on(session=self.session, model=self.model,
                                      version=replica.version, worker=replica.worker) == 0

    def _consuming(self, replica: Replica) -> bool:
        """It serves and its worker's heartbeat says it consumes its version's queue."""
        worker = self.live.get(replica.worker)
        return (replica.state == ReplicaState.serving and worker is not None
                and version_queue(self.model, replica.version) in worker.queues)

    def _queue_empty(self, version: int) -> bool:
        return deployments.queued_for_version(session=self.session, model=self.model,
                                              version=version) == 0

    def _current(self) -> int | None:
        model = self.session.get(RegisteredModel, self.model)
        return None if model is None else model.current_version

    def _switch_current(self) -> None:
        """``NAME`` serves the deployment's version from now on (one compare-and-set)."""
        model = self.session.get(RegisteredModel, self.model)
        target = self.deployment.version
        if model is not None and model.current_version != target and versions.set_current_version(
                session=self.session, name=self.model, version=target,
                expect=model.current_version):
            log.info("%s now serves version %d", self.model, target)
            self.session.refresh(model)
            self.moves += 1

    def _finish_if_done(self) -> None:
        target = self.deployment.version
        replicas = self.replicas
        serving = [r for r in replicas if r.version == target and self._consuming(r)]
        if len(serving) < self.deployment.replicas or len(replicas) != len(serving):
            return
        self._switch_current()
        if self.deployment.state != DeploymentState.ready and deployments.move_deployment(
                session=self.session, model=self.model, target=DeploymentState.ready,
                from_version=None, update_finished_at=utcnow()):
            for replica in replicas:
                replica.green = False
                self.session.add(replica)
            self.moves += 1

    # -- strategies --------------------------------------------------------------------

    def _rolling(self) -> None:
        """Placement, rolling updates and rollbacks: replicas move to the deployment's
        version one at a time."""
        target = self.deployment.version
        replicas = self.replicas
        for replica in replicas:  # extra replicas of a version rolled back
            if replica.green and replica.version != target:
                self._retire(replica)
        replicas = [r for r in self.replicas if r.state != ReplicaState.retiring]
        if any(r.version == target and self._consuming(r) for r in replicas):
            self._switch_current()
        for replica in replicas:
            drained = replica.state == ReplicaState.draining and self._drained(replica)
            if drained and len(replicas) > self.deployment.replicas:
                self._retire(replica)  # the surge replica took its place
            elif replica.state == ReplicaState.failed or drained:
                self._load(replica, target)
        # A replica is busy until its worker reports consuming its version's queue.
        busy = any(r.state != ReplicaState.serving or not self._consuming(r)
                   for r in self.replicas)
        stale = [r for r in self.replicas
                 if r.state == ReplicaState.serving and r.version != target]
        if not busy and stale:
            replica = stale[0]
            # The last replica of the old version leaves once NAME serves the new one
            # and the old version's queue is empty: the jobs submitted for it before
            # the switch are served by it.
            if len(stale) > 1 or (self._current() == target
                                  and self._queue_empty(replica.version)):
                self._move(replica, ReplicaState.draining)
            elif not any(r.version == target for r in self.replicas):
                # The only replica left holds the old version (a deployment of one):
                # one extra replica of the new version loads beside it first, so that
                # something serves each version until the old one's queue is empty.
                self._place(target, 1, green=True)
        # A replica lost with its worker (or a larger count) is placed at the version
        # the deployment moves to.
        self._place(target, self.deployment.replicas - len(self.replicas), green=False)
        self._finish_if_done()

    def _blue_green(self) -> None:
        target = self.deployment.version
        green = [r for r in self.replicas if r.green]
        self._place(target, self.deployment.replicas - len(green), green=True)
        green = [r for r in self.replicas if r.green]
        if len(green) < self.deployment.replicas or not all(
                self._consuming(r) for r in green):
            return
        self._switch_current()
        for replica in self.replicas:
            if replica.green:
                continue
            if replica.state == ReplicaState.serving and self._queue_empty(replica.version):
                self._move(replica, ReplicaState.draining)
            elif replica.state == ReplicaState.draining and self._drained(replica):
                self._retire(replica)
        self._finish_if_done()

    def _retire(self, replica: Replica) -> None:
        if replica.state == ReplicaState.serving:
            self._move(replica, ReplicaState.draining)
            return
        if replica.state == ReplicaState.loading:
            return  # its load ends first
        if replica.state == ReplicaState.draining and not self._drained(replica):
            return
        if self._move(replica, ReplicaState.retiring):
            self._unload(replica.worker, replica.version)
            deployments.remove_replica(session=self.session, replica_id=replica.id)

    def _orphaned_jobs(self) -> None:
        """Jobs queued for a version no replica holds any more (its last replica's
        worker died, or was declared dead while slow to beat, or a job it ran was given
        back after it left). Those that named the model, not the version, move to the
        version the deployment serves or moves to: held for the dispatcher, or (without
        one) sent once the pass commits (step_one). Those pinned to the version fail
        with the reason once the deployment is ready (no update can bring the version
        back); what follows any ending follows (step_one)."""
        held = {r.version for r in self.replicas}
        target = self.deployment.version
        queued = deployments.queued_versions(session=self.session, model=self.model)
        for version in sorted(queued - held - {target}):
            moved = deployments.follow_name(
                session=self.session, model=self.model, version=version, to_version=target,
                hold=self.settings.dispatch == "on")
            if moved:
                log.warning("%d job(s) queued for %s@%d, which no replica holds any more, "
                            "now go to %s@%d", len(moved), self.model, version, self.model,
                            target)
            self.followed.extend(moved)
            self.moves += len(moved)
            if self.deployment.state == DeploymentState.ready:
                self._fail_pinned(version)

    def _fail_pinned(self, version: int) -> None:
        failed = deployments.fail_unserved(session=self.session, model=self.model,
                                           version=version)
        for job in failed:
            if job.webhook_url:  # enqueued once the pass commits
                emit_job_event(session=self.session, job_id=job.id, settings=self.settings)
        self.ended.extend(failed)
        self.moves += len(failed)


def _can_hold(worker: WorkerRecord, model: str, need_mb: float) -> bool:
    """The worker serves ``model`` and has ``need_mb`` of accelerator memory free (by
    its last heartbeat; a worker that reports none is not limited)."""
    if worker.models is not None and model not in worker.models:
        return False
    total = worker.resources.get("gpu_memory_total_mb")
    used = worker.resources.get("gpu_memory_used_mb")
    if need_mb <= 0 or total is None or used is None:
        return True
    return total - used >= need_mb
