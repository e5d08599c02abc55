"""A replica leaving a version gives back the messages of it that reach it after its
consumer is cancelled: which deliveries those are."""

from __future__ import annotations

from broker_config import is_version_queue, language_queue, version_queue, worker_queue
from workers.replicas import left_queue


def test_version_queues_are_told_from_the_others() -> None:
    assert is_version_queue(version_queue("demo", 3))
    assert is_version_queue(version_queue("demo@2", 3))
    assert not is_version_queue(language_queue("demo@2"))
    assert not is_version_queue(worker_queue("w1@host"))  # a worker name holds '@' too


def test_only_a_version_queue_this_worker_stopped_consuming_is_left() -> None:
    v1, v2 = version_queue("demo", 1), version_queue("demo", 2)
    consumed = [worker_queue("w1@host"), language_queue("demo"), v2]
    assert left_queue({"routing_key": v1}, consumed) == v1
    assert left_queue({"routing_key": v2}, consumed) is None
    # The model's queue and the direct queue are never given back, consumed or not.
    assert left_queue({"routing_key": language_queue("other")}, consumed) is None
    assert left_queue({"routing_key": worker_queue("w2@host")}, consumed) is None
    assert left_queue(None, consumed) is None
    assert left_queue({}, consumed) is None
