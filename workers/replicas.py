"""The worker side of deployments: a worker consumes the version queue of each replica
the controller placed on it while that replica serves, and stops when it drains
(llmos_jobs.services.rollouts). Its heartbeat then reports the queues it consumes,
which is what the controller waits for and the dispatcher sizes its bound from."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from celery import Celery

from broker_config import is_version_queue, version_queue
from llmos_jobs.db import deployments
from llmos_jobs.db.session import Database
from llmos_jobs.states import ReplicaState

log = logging.getLogger(__name__)


def version_queues(database: Database, worker: str) -> tuple[set[str], list[str]]:
    """The version queues this worker should consume now, and the versions
    (``NAME@N``) its replicas hold (to preload at start)."""
    with database.session() as session:
        replicas = deployments.replicas_on(session=session, worker=worker)
    serving = {version_queue(r.model, r.version) for r in replicas
               if r.state == ReplicaState.serving}
    held = [f"{r.model}@{r.version}" for r in replicas
            if r.state in (ReplicaState.serving, ReplicaState.loading)]
    return serving, held


def follow_replicas(app: Celery, database: Database, worker: str, queues: list[str]
                    ) -> None:
    """Add and cancel this worker's consumers of version queues to match its replicas;
    ``queues`` (what the heartbeat reports, and what ``left_queue`` reads) changes first."""
    wanted, _ = version_queues(database, worker)
    for queue in sorted(wanted - set(queues)):
        queues.append(queue)
        app.control.add_consumer(queue, destination=[worker], reply=False)
        log.info("replica serving: now consuming %s", queue)
    for queue in [q for q in queues if is_version_queue(q) and q not in wanted]:
        queues.remove(queue)
        # Not waited for, as add_consumer is not: this runs on the heartbeat's thread, and
        # waiting for the consumer's reply (up to a timeout, after which it went on
        # anyway) held up the next beat long enough, on a loaded machine, for the worker
        # to be declared dead while alive. A message the consumer takes before the cancel
        # lands is given back (left_queue).
        app.control.cancel_consumer(queue, destination=[worker], reply=False)
        log.info("replica draining: no longer consuming %s", queue)


def left_queue(delivery_info: Mapping[str, Any] | None, consumed: Collection[str]
               ) -> str | None:
    """The version queue a message came from, when this worker no longer consumes it.

    A replica that leaves a version still holds the messages of it the broker handed
    it before its consumer was cancelled (up to its prefetch). Run here, each would wait
    behind the load of the next version and keep the replica from draining; given back
    instead (rejected, requeued), it goes to a replica still serving that version."""
    queue = (delivery_info or {}).get("routing_key")
    if isinstance(queue, str) and is_version_queue(queue) and queue not in consumed:
        return queue
    return None
