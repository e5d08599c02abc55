"""RabbitMQ loses a queue's messages: the jobs still run, each exactly once.

A queue's message ids cannot be listed on AMQP, only its depth, so the reconciler
compares the depth with the jobs the database holds queued there
(llmos_jobs.services.reconcile._unheld, docs/reliability.md): a queue that holds fewer messages
than queued jobs has all its waiting jobs sent again under new message ids, and a
queue that holds them all is left alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, update

from broker_config import language_queue
from llmos_jobs.broker import create_app
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.tables import Job
from llmos_jobs.errors import NoLiveWorkerWarning
from schemas.common import JobStatus
from tests.support.services import rabbitmq_vhost
from tests.support.stack import Stack
from tests.support.waiting import HANG_GUARD_S, until

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture
def rabbit_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of this test alone: its own virtual host and SQLite database."""
    with rabbitmq_vhost() as url:
        stack = Stack(name="rabbitmq", broker_url=url,
                      database_url=f"sqlite:///{tmp_path / 'llmos.db'}", data_dir=tmp_path)
        try:
            yield stack
        finally:
            stack.stop()


def _purge(stack: Stack, queue: str) -> int:
    with create_app(stack.broker_url).connection_for_write() as connection:
        return int(connection.default_channel.queue_purge(queue))


def _queued_together(stack: Stack, ids: list[str]) -> None:
    with session_scope(stack.database) as session:
        since = min(row.queued_at or row.created_at
                    for row in (session.get_one(Job, job_id) for job_id in ids))
        session.execute(update(Job).where(col(Job.id).in_(ids)).values(queued_at=since))
        session.commit()


def test_a_job_whose_message_was_purged_is_sent_again_and_runs_once(
        rabbit_stack: Stack) -> None:
    stack = rabbit_stack
    client = stack.client()
    lossy, intact = (f"{kind}-{uuid.uuid4().hex[:6]}" for kind in ("lossy", "intact"))
    for model in (lossy, intact):
        client.register_model(model, stack.data_dir / model, engine="noop")
    with pytest.warns(NoLiveWorkerWarning):
        untouched = [client.generate(model=intact, prompt=f"kept {i}") for i in range(2)]
        purged = [client.generate(model=lossy, prompt=f"lost {i}") for i in range(3)]
        assert _purge(stack, language_queue(lossy)) == 3
        survivor = client.generate(model=lossy, prompt="sent after the purge")
    assert stack.waiting(language_queue(lossy)) == 1
    assert stack.waiting(language_queue(intact)) == 2
    assert stack.waiting(language_queue("never-declared")) == 0  # no queue holds nothing
    # The reconciler counts a queue's jobs once they have waited a few graces. The four
    # are made to have waited equally long, so that no pass can count the purged three
    # without the survivor (3 jobs, 1 message) and, once they are sent again, find the
    # queue whole (4 and 4), leaving the survivor's first message in place.
    _queued_together(stack, [j.id for j in [*purged, survivor]])

    stack.start_control(env={"LLMOS_RECONCILE_GRACE_S": "1"})
    until(lambda: all(client.job(j.id).task_id != j.task_id for j in [*purged, survivor]),
          "the purged jobs and the survivor were sent again", poll_s=0.2)
    renewed = {j.id: client.job(j.id).task_id for j in [*purged, survivor]}
    # Which message of the queue was lost cannot be told: the one that was not is sent
    # again too, and its first message is now stale.
    assert renewed[survivor.id] != survivor.task_id
    # A queue whose messages are all there is left alone (its jobs are older than the
    # purged ones, so the passes that renewed those looked at them too).
    assert [client.job(j.id).task_id for j in untouched] == [j.task_id for j in untouched]

    stack.start_worker("rabbit-survivor@test", "--model", lossy, "--model", intact,
                       "--concurrency", "2")
    everyone = [*untouched, *purged, survivor]
    done = client.wait([j.id for j in everyone], timeout_s=HANG_GUARD_S)
    assert [j.status for j in done] == [JobStatus.succeeded] * len(everyone)
    assert [j.attempts for j in done] == [1] * len(everyone)  # each claimed, so run, once
    # The survivor's stale first message was delivered and dropped, not run.
    until(lambda: stack.waiting(language_queue(lossy)) == 0, "the stale message was consumed",
          poll_s=0.2)
    assert client.job(survivor.id).attempts == 1
