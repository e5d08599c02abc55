"""Two copies of one delivery's message at once (the reconciler sends a copy while the
first is between the broker's queue and its unacknowledged set): the receiver is POSTed
once, and the attempt is recorded once."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlmodel import select

from llmos_jobs.db.migrate import upgrade
from llmos_jobs.db.session import Database
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookAttempt, WebhookDelivery
from llmos_jobs.services.webhooks import delivery
from llmos_jobs.services.webhooks.signing import tenant_secret
from llmos_jobs.settings import Settings
from tests.support.stack import WEBHOOK_ALLOWED_HOSTS
from tests.support.waiting import HANG_GUARD_S
from tests.support.webhook_receiver import Receiver

COPIES = 4


def _pending(database: Database, url: str) -> str:
    with database.session() as session:
        row = WebhookDelivery(tenant="t", event_type="test.copies", url=url,
                              payload={"type": "test.copies", "data": {}})
        session.add(row)
        session.flush()
        return row.id


def test_copies_of_a_delivery_running_at_once_post_once(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'llmos.db'}", data_dir=tmp_path,
                        webhook_allowed_hosts=WEBHOOK_ALLOWED_HOSTS)
    database = Database.from_settings(settings)
    upgrade(database)
    with database.session() as session:
        secret = tenant_secret(session=session, tenant="t").secret
    receiver = Receiver(secret=secret).start()
    try:
        delivery_id = _pending(database, receiver.url)
        start = threading.Barrier(COPIES)
        outcomes: list[float | None] = []

        def copy() -> None:
            start.wait()
            outcomes.append(delivery.attempt_delivery(delivery_id=delivery_id,
                                                      settings=settings, database=database))

        threads = [threading.Thread(target=copy) for _ in range(COPIES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG_GUARD_S)
        assert len(outcomes) == COPIES and outcomes == [None] * COPIES
        assert len(receiver.received) == 1 and receiver.received[0].verified
        with database.session() as session:
            row = session.get(WebhookDelivery, delivery_id)
            attempts = len(session.exec(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id == delivery_id)).all())
        assert row is not None and (row.status, row.attempts) == (DeliveryStatus.delivered, 1)
        assert attempts == 1
    finally:
        receiver.stop()


def test_an_attempt_leases_the_delivery_from_a_copy_that_read_it_too(tmp_path: Path) -> None:
    """The step that decides it, without threads: two copies read the same row; the
    first takes the attempt, the second, holding what it read, cannot."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'llmos.db'}", data_dir=tmp_path)
    database = Database.from_settings(settings)
    upgrade(database)
    delivery_id = _pending(database, "http://127.0.0.1:9/hook")
    with database.session() as first, database.session() as second:
        seen_first = first.get(WebhookDelivery, delivery_id)
        seen_second = second.get(WebhookDelivery, delivery_id)
        assert seen_first is not None and seen_second is not None
        assert delivery._lease(first, seen_first, 20.0)
        first.commit()
        assert not delivery._lease(second, seen_second, 20.0)
    # A copy that reads the row only now finds it held, and leaves it.
    with database.session() as third:
        seen_third = third.get(WebhookDelivery, delivery_id)
        assert seen_third is not None
        assert not delivery._lease(third, seen_third, 20.0)
    with database.session() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.next_attempt_at is not None
        assert (row.status, row.attempts) == (DeliveryStatus.pending, 0)
