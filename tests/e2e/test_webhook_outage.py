"""A webhook receiver down for a while, then up: every event delivered, signed, once.

The issue's figure is a receiver down for 2 minutes under the default retry schedule
(1, 2, 4, ... 512 s). In CI the outage is shorter and the schedule shrunk by the same
factor (LLMOS_WEBHOOK_RETRY_DELAYS), so that the same code runs the same way: the
first attempts fail, the control process retries each delivery with growing delays,
and the attempt after the receiver is back delivers it. Set
LLMOS_TEST_WEBHOOK_OUTAGE_S=120 to run the full outage with the default schedule:

    LLMOS_TEST_WEBHOOK_OUTAGE_S=120 python -m pytest tests/test_webhook_outage.py -s

Outcomes of two kinds raise events here: jobs that succeed on a worker, and jobs that
are cancelled before any worker could take them."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import col, select

from llmos_jobs.client import LlmosClient
from llmos_jobs.db.session import session_scope
from llmos_jobs.db.webhook_tables import DeliveryStatus, WebhookAttempt, WebhookDelivery
from llmos_jobs.errors import NoLiveWorkerWarning
from llmos_jobs.services.webhooks.signing import tenant_secret
from llmos_jobs.settings import Settings
from schemas.common import JobStatus
from tests.support.faults import private_pg_stack
from tests.support.stack import WEBHOOK_ALLOWED_HOSTS, database_at
from tests.support.waiting import HANG_GUARD_S, until
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.faults]
FULL_OUTAGE_S = 120.0
OUTAGE_S = float(os.environ.get("LLMOS_TEST_WEBHOOK_OUTAGE_S", "8"))
SUCCEEDING, CANCELLED = 40, 10


def retry_delays(outage_s: float) -> str:
    """The default schedule, shrunk as the outage is: its first seven delays add up to
    127 s, just over a 120 s outage, whatever the factor."""
    factor = outage_s / FULL_OUTAGE_S
    default = Settings.model_fields["webhook_retry_delays"].default
    return ",".join(f"{float(d) * factor:.4g}" for d in default.split(","))


def _deliveries(database_url: str) -> list[WebhookDelivery]:
    with session_scope(database_at(database_url)) as session:
        return list(session.exec(select(WebhookDelivery)))


def _failed_attempts(database_url: str) -> Counter[str]:
    with session_scope(database_at(database_url)) as session:
        return Counter(session.exec(select(WebhookAttempt.delivery_id).where(
            col(WebhookAttempt.status_code).is_(None))).all())


def _wait(what: str, check: Callable[[], bool]) -> None:
    until(check, what, HANG_GUARD_S + 10 * OUTAGE_S)


def test_a_receiver_down_then_up_gets_every_event_signed_once(
        postgres_admin: str, tmp_path: Path) -> None:
    with private_pg_stack(postgres_admin, tmp_path) as stack:
        client = LlmosClient(settings=stack.settings().model_copy(
            update={"webhook_allowed_hosts": WEBHOOK_ALLOWED_HOSTS}))
        served, idle = (f"{kind}-{uuid.uuid4().hex[:6]}" for kind in ("served", "idle"))
        for model in (served, idle):
            client.register_model(model, stack.data_dir / model, engine="noop")
        with session_scope(stack.database) as session:
            secret = tenant_secret(session=session, tenant=client.tenant).secret
        receiver = Receiver(secret=secret).start()
        try:
            stack.start_control(env={"LLMOS_WEBHOOK_RETRY_DELAYS": retry_delays(OUTAGE_S)},
                                wait=True)
            stack.start_worker("steady@test", "--model", served, "--concurrency", "2",
                               env={"LLMOS_NOOP_DELAY_MS": "50", "LLMOS_NOOP_ECHO": "1"})
            receiver.stop()  # down: every connection refused
            down_at = time.monotonic()
            ran = client.generate_many(
                [{"model": served, "prompt": f"job {i}", "max_tokens": 2}
                 for i in range(SUCCEEDING)], webhook=receiver.url).jobs
            with pytest.warns(NoLiveWorkerWarning):  # nobody serves it: they are cancelled
                waiting = client.generate_many(
                    [{"model": idle, "prompt": f"never {i}", "max_tokens": 2}
                     for i in range(CANCELLED)], webhook=receiver.url).jobs
            for job in waiting:
                client.cancel(job.id)
            ids = [job.id for job in ran + waiting]
            done = client.wait(ids, timeout_s=HANG_GUARD_S)
            # Every event has been tried, and refused, before the receiver comes back.
            _wait("every event was tried", lambda: len(
                _failed_attempts(stack.database_url)) == len(ids))
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage
            receiver.start(receiver.port)
            up_at = time.monotonic()
            outage_s = up_at - down_at
            receiver.wait_for_events(len(ids), timeout_s=HANG_GUARD_S + 10 * OUTAGE_S)
            delivered_s = time.monotonic() - up_at
            _wait("every delivery was marked delivered", lambda: all(
                d.status == DeliveryStatus.delivered for d in _deliveries(stack.database_url)))
        finally:
            receiver.stop()

        assert [j.status for j in done] == (
            [JobStatus.succeeded] * SUCCEEDING + [JobStatus.cancelled] * CANCELLED)
        events = list(receiver.received)
        assert events and all(e.verified for e in events)
        bodies = {e.headers["webhook-id"]: json.loads(e.body) for e in events}
        deliveries = {d.id: d for d in _deliveries(stack.database_url)}
        assert set(bodies) == set(deliveries)  # every event, and no other
        # One event per outcome, of the outcome's kind.
        assert Counter(b["data"]["id"] for b in bodies.values()) == dict.fromkeys(ids, 1)
        kinds = {b["data"]["id"]: b["type"] for b in bodies.values()}
        assert kinds == {j.id: f"job.{j.status.value}" for j in done}
        failed = _failed_attempts(stack.database_url)
        assert all(failed[d] >= 1 for d in deliveries)
        print(f"\nreceiver down {outage_s:.1f} s; events {len(ids)} ({SUCCEEDING} succeeded, "
              f"{CANCELLED} cancelled), delivered {len(bodies)} (100%), signatures valid, "
              f"received twice {len(events) - len(bodies)}; refused attempts per event "
              f"{min(failed.values())}-{max(failed.values())}; all delivered "
              f"{delivered_s:.1f} s after the receiver came back")
